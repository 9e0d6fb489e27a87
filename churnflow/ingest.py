"""Bring your own data: map foreign exports onto the canonical tables, check, quarantine, load.

A mapping file (YAML, read with ``yaml.safe_load`` and validated with pydantic) says where
each canonical table's rows come from -- a warehouse ``table:``, a ``query:`` in the
warehouse's own dialect, or ``file:`` CSV/Parquet path(s) -- and how source columns map to
canonical ones. See ``examples/foreign_export/sources.yaml`` and the README section
"Bring your own data".

A run, for :func:`ingest` and :func:`validate` alike:

1. every file source is read and checked structurally (empty file, encoding, delimiter,
   missing columns): any problem fails fast with the file named, before anything is written;
2. files are staged raw (text columns, original header names, plus ``_source_file`` and
   ``_source_row``) into ``staging_<name>`` tables, so ``query:`` sources can join them;
3. each canonical table (accounts first) is read, mapped, coerced to the canonical kinds
   (values that do not parse are rejected, not guessed) and checked against its contract
   (:mod:`churnflow.contracts`);
4. if any table's bad share exceeds ``max_bad_share`` the run fails (:class:`ContractError`)
   and *no* canonical table is loaded; otherwise each mapped table's content is replaced by
   its good rows (a full load: re-running never duplicates) and its rejects replace that
   table's rows in ``quarantine``.

:func:`validate` stops after step 3 (it writes only the staging tables).
"""

from __future__ import annotations

import glob
import io
import logging
import re
import uuid
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnflow import contracts
from churnflow.contracts import CONTRACTS, DEFAULT_MAX_BAD_SHARE, QUARANTINE_TABLE
from churnflow.schema import CANONICAL, Column, TableSpec, coerce
from churnflow.warehouse import drop_tables, read_sql, replace_rows, table_exists
from features.rollups import replace_usage_by_day

log = logging.getLogger(__name__)

STAGING_PREFIX = "staging_"
SOURCE_FILE_COL = "_source_file"
SOURCE_ROW_COL = "_source_row"
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
DEFAULT_NULLS = ["", "NULL", "null", "None", "NaN", "nan", "N/A", "n/a", "#N/A"]
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0"})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUN_DATE_PARAM = re.compile(r"(?<![:\w]):run_date\b")


# ============================================================================ errors


class IngestError(Exception):
    """Base class of ingest failures."""


class MappingError(IngestError):
    """The mapping file is invalid (the message names the file and the key)."""


class SourceError(IngestError):
    """A structural problem with a source: fails fast, naming the file/table and what was expected."""


class ContractError(IngestError):
    """Too many rows of a table broke its contract; nothing was loaded. ``report`` has the details."""

    def __init__(self, message: str, report: "IngestReport") -> None:
        super().__init__(message)
        self.report = report


# ============================================================================ mapping model


class Options(BaseModel):
    """File-reading and value-parsing options (top level: defaults for every source)."""

    model_config = ConfigDict(extra="forbid")

    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field delimiter.")
    encoding: str = Field("utf-8", description="Text encoding of CSV files (a UTF-8 BOM is accepted).")
    quotechar: str = Field('"', min_length=1, max_length=1)
    dayfirst: bool = Field(False, description="Slash dates are DD/MM/YYYY (default MM/DD/YYYY).")
    date_format: str | None = Field(None, description="Explicit strptime format for every date/timestamp column, e.g. '%d.%m.%Y %H:%M'.")
    epoch_unit: Literal["s", "ms"] = Field("s", description="Unit of all-digit (epoch) timestamps.")
    decimal_comma: bool = Field(False, description="Numbers use a decimal comma ('1.234,50').")
    thousands: str | None = Field(None, max_length=1, description="Thousands separator; default ',' ('.' with decimal_comma). Spaces are always accepted.")
    null_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NULLS), description="Cell texts read as empty.")
    true_values: list[str] = Field(default_factory=list, description="Extra words read as true.")
    false_values: list[str] = Field(default_factory=list, description="Extra words read as false.")


class _SourceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str | list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def files(self) -> list[str]:
        return [] if self.file is None else [self.file] if isinstance(self.file, str) else list(self.file)


class StagingSource(_SourceBase):
    """A file staged raw into ``staging_<name>`` for queries to join (no canonical mapping)."""

    @model_validator(mode="after")
    def _needs_file(self) -> "StagingSource":
        if not self.files():
            raise ValueError("a staging entry needs 'file:'")
        return self


class TableSource(_SourceBase):
    """Where one canonical table's rows come from."""

    table: str | None = None
    query: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="canonical column <- source column")
    constants: dict[str, Any] = Field(default_factory=dict, description="canonical column = this value for every row")
    defaults: dict[str, Any] = Field(default_factory=dict, description="canonical column: value used where the source is empty")
    max_bad_share: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_source(self) -> "TableSource":
        given = [k for k in ("table", "query", "file") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of 'table', 'query' or 'file' (got {given or 'none'})")
        if self.table is not None and not all(_IDENT.match(p) for p in self.table.split(".")):
            raise ValueError(f"'table' must be a table name, optionally schema-qualified (letters, digits, _): {self.table!r}")
        return self

    @property
    def kind(self) -> str:
        return "file" if self.file else "query" if self.query else "table"


class MappingFile(BaseModel):
    """The whole mapping file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    options: dict[str, Any] = Field(default_factory=dict)
    max_bad_share: float | None = Field(None, ge=0, le=1)
    staging: dict[str, StagingSource] = Field(default_factory=dict)
    tables: dict[str, TableSource]

    @model_validator(mode="after")
    def _names(self) -> "MappingFile":
        for name in self.tables:
            if name not in CANONICAL:
                raise ValueError(f"tables.{name}: not a canonical table; expected one of {list(CANONICAL)}")
        for name in self.staging:
            if not _IDENT.match(name) or len(STAGING_PREFIX + name) > 63:
                raise ValueError(f"staging.{name}: staging names are identifiers (letters, digits, _), at most {63 - len(STAGING_PREFIX)} characters")
            if name in self.tables and self.tables[name].file:
                raise ValueError(f"staging.{name}: clashes with the staging table of tables.{name} (a file source)")
        for name, src in self.tables.items():
            known = set(CANONICAL[name].column_names)
            for section in ("columns", "constants", "defaults"):
                for col in getattr(src, section):
                    if col not in known:
                        raise ValueError(f"tables.{name}.{section}.{col}: not a column of '{name}'; expected one of {sorted(known)}")
            both = set(src.constants) & (set(src.columns) | set(src.defaults))
            if both:
                raise ValueError(f"tables.{name}.constants: {sorted(both)} also mapped under columns/defaults; a constant replaces the source")
        return self


@dataclass
class Mapping:
    """A parsed mapping: the model plus where it came from (relative paths resolve against ``base_dir``)."""

    model: MappingFile
    path: Path | None
    base_dir: Path

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "<mapping>"

    def options_for(self, src: _SourceBase, where: str) -> Options:
        merged = {**self.model.options, **src.options}
        try:
            return Options.model_validate(merged)
        except ValidationError as exc:
            raise MappingError(_format_validation(self.label, exc, prefix=where)) from None


def _format_validation(label: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{label}: {loc or '(top level)'}: {msg}")
    return "invalid mapping\n" + "\n".join(lines)


def load_mapping(source: str | Path | MappingABC[str, Any] | Mapping, base_dir: Path | None = None) -> Mapping:
    """Read and validate a mapping file (or an already-parsed dict). Errors name the file and key."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, MappingABC):
        data, path = dict(source), None
        base = base_dir or Path.cwd()
    else:
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise MappingError(f"{path}: mapping file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise MappingError(f"{path}: not valid YAML: {exc}") from None
        base = base_dir or path.parent
    label = str(path) if path else "<mapping>"
    if not isinstance(data, dict):
        raise MappingError(f"{label}: expected a mapping with a 'tables:' key, got {type(data).__name__}")
    try:
        model = MappingFile.model_validate(data)
    except ValidationError as exc:
        raise MappingError(_format_validation(label, exc)) from None
    mapping = Mapping(model, path, base)
    try:
        Options.model_validate(model.options)
    except ValidationError as exc:
        raise MappingError(_format_validation(label, exc, prefix="options")) from None
    for name, src in model.tables.items():  # options errors surface at load time too
        mapping.options_for(src, f"tables.{name}.options")
    for name, stg in model.staging.items():
        mapping.options_for(stg, f"staging.{name}.options")
    return mapping


# ============================================================================ coercion


def parse_numbers(raw: pd.Series, opts: Options | None = None) -> tuple[pd.Series, np.ndarray]:
    """Parse numbers: '1,234.50', '1 234,50' (decimal_comma), '$12', numeric dtypes.

    Returns float64 values and a mask of non-empty inputs that did not parse. A separator
    is only treated as a thousands separator in proper 3-digit groups, so '1,5' without
    ``decimal_comma`` is rejected rather than read as 15.
    """
    opts = opts or Options()
    if pd.api.types.is_bool_dtype(raw.dtype):
        raw = raw.astype("Int64")
    if pd.api.types.is_numeric_dtype(raw.dtype):
        vals = pd.to_numeric(raw, errors="coerce").astype("float64")
        return vals, np.zeros(len(raw), dtype=bool)
    inferred = pd.api.types.infer_dtype(raw, skipna=True)
    if inferred in ("integer", "floating", "decimal", "mixed-integer-float"):
        vals = pd.to_numeric(raw.astype(object).map(lambda v: float(v) if v is not None and not pd.isna(v) else np.nan), errors="coerce")
        return vals.astype("float64"), np.zeros(len(raw), dtype=bool)
    s = _clean_text(raw)
    present = s.notna().to_numpy()
    # fast path: plain numbers parse in C; only the rest gets the separator handling
    if opts.decimal_comma:  # '1.234' means 1234 here: no shortcut
        vals = pd.Series(np.nan, index=s.index, dtype="float64")
    else:
        vals = pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce").astype("float64")
    todo = present & vals.isna().to_numpy()
    if todo.any():
        t = s[todo]
        dec = "," if opts.decimal_comma else "."
        thousands = opts.thousands or ("." if opts.decimal_comma else ",")
        odd = t.str.contains("[$€£¥\\s\u00a0\u202f']", regex=True).fillna(False).astype(bool)
        if odd.any():  # spaces/apostrophes as group separators, a leading/trailing currency sign
            u = t[odd].astype(object).str.replace("[\\s\u00a0\u202f']", "", regex=True)
            u = u.str.replace(r"^([+-]?)[$€£¥]", r"\1", regex=True).str.replace(r"[$€£¥]$", "", regex=True)
            t = t.astype(object)
            t[odd] = u
            t = t.astype("string[pyarrow]")
        grouped = t.str.fullmatch(rf"[+-]?\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+(?:{re.escape(dec)}\d*)?").fillna(False).astype(bool)
        t = t.where(~grouped, t.str.replace(thousands, "", regex=False))
        if dec != ".":
            t = t.str.replace(".", "\x00", regex=False).str.replace(",", ".", regex=False)
        vals[todo] = pd.to_numeric(t.astype(object).where(t.notna(), None), errors="coerce").astype("float64").to_numpy()
    failed = present & vals.isna().to_numpy()
    return vals, failed


def parse_bools(raw: pd.Series, opts: Options | None = None) -> tuple[pd.Series, np.ndarray]:
    """Parse booleans: true/false, yes/no, y/n, t/f, 1/0 (any case), bool and 0/1 numeric dtypes."""
    opts = opts or Options()
    if pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("boolean"), np.zeros(len(raw), dtype=bool)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        out = raw.map({1: True, 0: False, 1.0: True, 0.0: False}).astype("boolean")
        return out, (raw.notna() & out.isna()).to_numpy()
    if pd.api.types.infer_dtype(raw, skipna=True) == "boolean":
        return raw.astype("boolean"), np.zeros(len(raw), dtype=bool)
    s = _clean_text(raw).str.lower()
    words = {**{w: True for w in TRUE_WORDS | {v.lower() for v in opts.true_values}},
             **{w: False for w in FALSE_WORDS | {v.lower() for v in opts.false_values}}}
    out = s.map(words).astype("boolean")
    return out, (s.notna() & out.isna()).to_numpy()


def parse_datetimes(raw: pd.Series, opts: Options | None = None, *, date_only: bool = False) -> tuple[pd.Series, np.ndarray]:
    """Parse dates/timestamps to naive UTC datetime64[ns].

    Accepted: ISO 8601 (with or without time, 'T' or space, offsets converted to UTC),
    ``MM/DD/YYYY`` or with ``dayfirst`` ``DD/MM/YYYY`` (separators / . -, optional
    ``HH:MM[:SS]``), epoch seconds (all digits; ``epoch_unit: ms`` for milliseconds), an
    explicit ``date_format``, and native datetime/date values. Anything else is rejected.
    """
    opts = opts or Options()
    n = len(raw)
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        out = raw.dt.tz_convert(None) if getattr(raw.dt, "tz", None) is not None else raw
        out = out.astype("datetime64[ns]")
        return (out.dt.normalize() if date_only else out), np.zeros(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        out = pd.to_datetime(raw.astype("float64"), unit=opts.epoch_unit, errors="coerce").astype("datetime64[ns]")
        failed = (raw.notna() & out.isna()).to_numpy()
        return (out.dt.normalize() if date_only else out), failed
    inferred = pd.api.types.infer_dtype(raw, skipna=True)
    if inferred in ("datetime", "datetime64", "date"):
        out = pd.to_datetime(raw, errors="coerce", utc=True).dt.tz_localize(None).astype("datetime64[ns]")
        failed = (raw.notna() & out.isna()).to_numpy()
        return (out.dt.normalize() if date_only else out), failed
    s = _clean_text(raw)
    present = s.notna()
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    epoch = present & s.str.fullmatch(r"-?\d{9,}(?:\.\d+)?").fillna(False).astype(bool)
    if epoch.any():
        secs = pd.to_numeric(s[epoch].astype(object), errors="coerce")
        out[epoch] = pd.to_datetime(secs, unit=opts.epoch_unit, errors="coerce")
    rest = present & ~epoch
    if opts.date_format and rest.any():
        out[rest] = pd.to_datetime(s[rest].astype(object), format=opts.date_format, errors="coerce")
    elif rest.any():
        iso = rest & s.str.match(r"\d{4}[-/]\d{1,2}[-/]\d{1,2}").fillna(False).astype(bool)
        if iso.any():
            text = s[iso].str.replace(r"^(\d{4})/(\d{1,2})/(\d{1,2})", r"\1-\2-\3", regex=True)
            text = text.str.replace(r"^(\d{4})-(\d)-", r"\1-0\2-", regex=True).str.replace(r"^(\d{4}-\d{2})-(\d)($|[^\d])", r"\1-0\2\3", regex=True)
            parsed = pd.to_datetime(text.astype(object), format="ISO8601", errors="coerce", utc=True)
            out[iso] = parsed.dt.tz_localize(None).astype("datetime64[ns]")
        slash = rest & ~iso & s.str.match(r"\d{1,2}[/.\-]\d{1,2}[/.\-]\d{4}").fillna(False).astype(bool)
        if slash.any():
            # DD/MM/YYYY or MM/DD/YYYY with an optional time: a few strict formats, parsed in C
            text = s[slash].str.replace("T", " ", regex=False)
            dotted = text.str.match(r"\d{1,2}[.\-]").fillna(False).astype(bool)
            if dotted.any():  # 03.11.2026 / 03-11-2026 -> 03/11/2026
                text = text.astype(object)
                text[dotted] = text[dotted].str.replace(r"^(\d{1,2})[.\-](\d{1,2})[.\-]", r"\1/\2/", regex=True)
            dm = "%d/%m/%Y" if opts.dayfirst else "%m/%d/%Y"
            parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
            for fmt in (f"{dm} %H:%M:%S", f"{dm} %H:%M", dm, f"{dm} %H:%M:%S.%f"):
                todo = parsed.isna()
                if not todo.any():
                    break
                parsed[todo] = pd.to_datetime(text[todo].astype(object), format=fmt, errors="coerce")
            out[slash] = parsed
    out = out.astype("datetime64[ns]")
    if date_only:
        out = out.dt.normalize()
    failed = (present & out.isna()).to_numpy()
    return out, failed


def parse_strings(raw: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Text as object with None for empty; integral floats (e.g. ids read from Parquet) lose the '.0'."""
    if pd.api.types.is_float_dtype(raw.dtype):
        integral = raw.dropna()
        if len(integral) and (integral % 1 == 0).all():
            raw = raw.astype("Int64")
    s = _clean_text(raw)
    return s.astype(object).where(s.notna(), None), np.zeros(len(raw), dtype=bool)


def _clean_text(raw: pd.Series) -> pd.Series:
    s = raw.astype("string[pyarrow]").str.strip()
    return s.mask(s == "")


def coerce_values(raw: pd.Series, kind: str, opts: Options | None = None) -> tuple[pd.Series, np.ndarray]:
    """Parse one column to a canonical kind; returns (values, mask of values that did not parse)."""
    opts = opts or Options()
    raw = raw.reset_index(drop=True)
    if kind == "str":
        return parse_strings(raw)
    if kind in ("int", "float"):
        vals, failed = parse_numbers(raw, opts)
        if kind == "int":
            frac = vals.notna() & (vals % 1 != 0)
            failed = failed | frac.to_numpy()
            vals = vals.where(~frac).round().astype("Int64")
        return vals, failed
    if kind == "bool":
        return parse_bools(raw, opts)
    if kind in ("date", "timestamp"):
        return parse_datetimes(raw, opts, date_only=kind == "date")
    raise ValueError(f"unknown kind {kind!r}")


def _parse_reason(kind: str, opts: Options) -> str:
    if kind in ("date", "timestamp"):
        if opts.date_format:
            return f"not a {kind} in format {opts.date_format}"
        return f"not a {kind} (expected ISO, {'DD/MM/YYYY' if opts.dayfirst else 'MM/DD/YYYY'} or epoch seconds)"
    if kind == "int":
        return "not an integer"
    if kind == "float":
        return "not a number" + (" (decimal comma expected)" if opts.decimal_comma else "")
    if kind == "bool":
        return "not a boolean (expected true/false, yes/no, y/n, 1/0)"
    return f"not a {kind}"


# ============================================================================ reading sources


@dataclass
class RawSource:
    """Rows of one source before mapping: the frame plus how to refer to its rows."""

    frame: pd.DataFrame
    label: str  # file name(s), 'query' or the table name
    kind: str
    files: list[Path] = field(default_factory=list)


def _resolve_files(mapping: Mapping, patterns: list[str], where: str) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        full = str(mapping.base_dir / Path(pattern).expanduser())
        found = sorted(Path(p) for p in glob.glob(full)) if glob.has_magic(full) else ([Path(full)] if Path(full).exists() else [])
        if not found:
            raise SourceError(f"{where}: no file matches '{pattern}' (relative to {mapping.base_dir}) [mapping {mapping.label}]")
        paths += found
    return paths


def read_file(path: Path, opts: Options, expected: list[str] | None = None) -> pd.DataFrame:
    """Read one CSV/Parquet file with every structural check; all CSV values stay text.

    Adds ``_source_file`` (the file name) and ``_source_row`` (1-based data row: the first
    row after the header is 1).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    if not data.strip():
        want = f" with columns {expected}" if expected else ""
        raise SourceError(f"{path}: the file is empty; expected a header line{want} and data rows")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise SourceError(f"{path}: not a readable Parquet file: {exc}") from None
    else:
        encoding = opts.encoding
        if encoding.lower().replace("-", "").replace("_", "") == "utf8":
            encoding = "utf-8-sig"
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise SourceError(
                f"{path}: not valid {opts.encoding}: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                f"(line {line}, column {col}); set options.encoding (e.g. latin-1 or cp1252) if the file is not {opts.encoding}"
            ) from None
        except LookupError:
            raise SourceError(f"{path}: unknown encoding {opts.encoding!r}") from None
        try:
            frame = pd.read_csv(
                io.StringIO(text), sep=opts.delimiter, quotechar=opts.quotechar, dtype=str,
                keep_default_na=False, na_values=opts.null_values, engine="c",
            )
        except pd.errors.EmptyDataError:
            raise SourceError(f"{path}: the file is empty; expected a header line and data rows") from None
        except pd.errors.ParserError as exc:
            raise SourceError(f"{path}: cannot parse as CSV with delimiter {opts.delimiter!r}: {exc}") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        if len(frame.columns) == 1:
            header = frame.columns[0]
            others = [d for d in CANDIDATE_DELIMITERS if d != opts.delimiter and d in header]
            if others:
                raise SourceError(
                    f"{path}: the whole header landed in one column ({header!r}); expected delimiter {opts.delimiter!r} "
                    f"but the header looks {others[0]!r}-delimited; set options.delimiter"
                )
    frame.columns = [str(c) for c in frame.columns]
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise SourceError(f"{path}: duplicate column names {dupes}")
    if expected:
        missing = [c for c in expected if c not in frame.columns]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}; expected {expected}; found {list(frame.columns)}")
    frame[SOURCE_FILE_COL] = path.name
    frame[SOURCE_ROW_COL] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


def _expected_source_columns(src: TableSource, spec: TableSpec) -> list[str]:
    """Source columns a file/query must have: the mapped ones (and canonical-named required ones are checked later)."""
    return list(dict.fromkeys(src.columns[c.name] for c in spec.columns if c.name in src.columns))


def _read_files(mapping: Mapping, src: _SourceBase, opts: Options, where: str, expected: list[str] | None) -> RawSource:
    paths = _resolve_files(mapping, src.files(), where)
    frames = [read_file(p, opts, expected) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return RawSource(frame, ", ".join(p.name for p in paths), "file", paths)


def _stage(engine: sa.Engine, name: str, raw: RawSource) -> None:
    for col in raw.frame.columns:
        if '"' in col or len(col) > 63 or not col.isprintable():
            raise SourceError(f"{raw.label}: column name {col!r} cannot be staged (no quotes or control characters, at most 63 characters)")
    table = STAGING_PREFIX + name
    drop_tables(engine, [table])  # the header may have changed since the last run
    replace_rows(engine, table, raw.frame, replace_all=True)


def _read_warehouse(engine: sa.Engine, src: TableSource, run_date: date, where: str) -> RawSource:
    if src.query is not None:
        stmt = sa.text(src.query)
        params = {"run_date": datetime(run_date.year, run_date.month, run_date.day)} if _RUN_DATE_PARAM.search(src.query) else {}
        try:
            frame = read_sql(engine, stmt, params)
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(f"{where}: the query failed: {str(exc.orig if getattr(exc, 'orig', None) else exc).strip()}") from None
        return RawSource(frame, "query", "query")
    assert src.table is not None
    schema_name, _, name = src.table.rpartition(".")
    if not sa.inspect(engine).has_table(name, schema=schema_name or None):
        raise SourceError(f"{where}: table '{src.table}' not found in the warehouse")
    frame = read_sql(engine, sa.select(sa.text("*")).select_from(sa.table(name, schema=schema_name or None)))
    return RawSource(frame, src.table, "table")


# ============================================================================ mapping + checking one table


@dataclass
class PreparedTable:
    table: str
    source: RawSource
    frame: pd.DataFrame  # coerced, all rows, canonical columns
    violations: pd.DataFrame  # row, field, value, reason
    good: np.ndarray  # bool mask

    @property
    def rows_read(self) -> int:
        return len(self.frame)

    @property
    def rows_quarantined(self) -> int:
        return int((~self.good).sum())


def map_columns(raw: RawSource, src: TableSource, spec: TableSpec, opts: Options, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Map, coerce and default one source frame; returns (typed frame, parse violations)."""
    frame = raw.frame.reset_index(drop=True)
    n = len(frame)
    expected = _expected_source_columns(src, spec)
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise SourceError(f"{where} ({raw.label}): missing source column(s) {missing}; found {[c for c in frame.columns if not c.startswith('_source_')]}")
    out: dict[str, pd.Series] = {}
    parse_violations: list[pd.DataFrame] = []
    for col in spec.columns:
        if col.name in src.constants:
            values = pd.Series([src.constants[col.name]] * n, dtype=object)
        elif col.name in src.columns:
            values = frame[src.columns[col.name]]
        elif col.name in frame.columns:
            values = frame[col.name]
        else:
            if col.required and col.default is None and col.name not in src.defaults:
                raise SourceError(
                    f"{where} ({raw.label}): no source for required column '{col.name}'; map it under "
                    f"tables.{spec.name}.columns (or give a constant/default); source columns are "
                    f"{[c for c in frame.columns if not c.startswith('_source_')]}"
                )
            values = pd.Series([None] * n, dtype=object)
        typed, failed = coerce_values(values, col.kind, opts)
        if failed.any():
            rows = np.flatnonzero(failed)
            parse_violations.append(contracts.violations_frame(rows, col.name, values.reset_index(drop=True), _parse_reason(col.kind, opts)))
        fill = _default_value(src, col, opts, where)
        if fill is not None:
            empty = typed.isna().to_numpy() & ~failed
            if empty.any():
                typed = typed.astype(object).where(~empty, fill) if col.kind == "str" else typed.mask(pd.Series(empty), fill)
        out[col.name] = typed
    typed_frame = pd.DataFrame(out)
    pv = pd.concat(parse_violations, ignore_index=True) if parse_violations else pd.DataFrame(columns=contracts.VIOLATION_COLUMNS)
    return typed_frame, pv


def _default_value(src: TableSource, col: Column, opts: Options, where: str) -> object | None:
    if col.name in src.defaults:
        raw = src.defaults[col.name]
        if raw is None:
            return None
        typed, failed = coerce_values(pd.Series([raw], dtype=object), col.kind, opts)
        if failed.any():
            raise MappingError(f"{where}.defaults.{col.name}: {raw!r} is {_parse_reason(col.kind, opts)}")
        return typed.iloc[0]
    return col.default


def _constants_ok(src: TableSource, spec: TableSpec, opts: Options, label: str, where: str) -> None:
    for name, value in src.constants.items():
        kind = next(c.kind for c in spec.columns if c.name == name)
        if value is not None:
            _, failed = coerce_values(pd.Series([value], dtype=object), kind, opts)
            if failed.any():
                raise MappingError(f"{label}: {where}.constants.{name}: {value!r} is {_parse_reason(kind, opts)}")


def prepare_table(
    name: str, raw: RawSource, src: TableSource, opts: Options, *, run_date: date,
    known_accounts: pd.Index | None, where: str,
) -> PreparedTable:
    """Map + coerce + contract-check one table (pure: no warehouse access)."""
    spec = CANONICAL[name]
    contract = CONTRACTS[name]
    frame, parse_v = map_columns(raw, src, spec, opts, where)
    contracts.normalise_enums(frame, contract)
    failed_rows = np.zeros(len(frame), dtype=bool)
    if len(parse_v):
        failed_rows[parse_v["row"].to_numpy(dtype=np.int64)] = True
    check_v = contracts.check(frame, contract, run_date=run_date, known_accounts=known_accounts, exclude=failed_rows)
    if len(parse_v) and len(check_v):
        # a value that did not parse is reported once, not again as "missing"
        failed_cells = pd.MultiIndex.from_frame(parse_v[["row", "field"]].astype({"row": np.int64}))
        cells = pd.MultiIndex.from_frame(check_v[["row", "field"]].astype({"row": np.int64}))
        check_v = check_v[~cells.isin(failed_cells)]
    violations = pd.concat([v for v in (parse_v, check_v) if len(v)], ignore_index=True) if (len(parse_v) or len(check_v)) else parse_v
    good = np.ones(len(frame), dtype=bool)
    if len(violations):
        good[violations["row"].to_numpy(dtype=np.int64)] = False
    return PreparedTable(name, raw, frame, violations, good)


def _quarantine_records(prep: PreparedTable, run_id: str, now: datetime) -> pd.DataFrame:
    v = prep.violations
    if v.empty:
        return contracts.empty_quarantine()
    rows = v["row"].to_numpy(dtype=np.int64)
    raw = prep.source.frame.reset_index(drop=True)
    if SOURCE_FILE_COL in raw.columns:
        source = raw[SOURCE_FILE_COL].to_numpy(dtype=object)[rows]
    else:
        source = np.full(len(rows), prep.source.label, dtype=object)
    if SOURCE_ROW_COL in raw.columns:
        source_row = pd.to_numeric(raw[SOURCE_ROW_COL], errors="coerce").to_numpy(dtype="float64")[rows]
    else:
        source_row = rows + 1
    key = CANONICAL[prep.table].key
    if key:
        keys = prep.frame[list(key)].astype("string").fillna("").agg("|".join, axis=1) if len(key) > 1 else prep.frame[key[0]].astype("string")
        source_key = keys.to_numpy(dtype=object)[rows]
        source_key = np.where(pd.isna(source_key), None, source_key)
    else:
        source_key = None
    frame = pd.DataFrame({
        "table_name": prep.table, "source": source, "source_row": source_row, "source_key": source_key,
        "field": v["field"].to_numpy(dtype=object), "value": v["value"].to_numpy(dtype=object),
        "reason": v["reason"].to_numpy(dtype=object), "run_id": run_id, "quarantined_at": pd.Timestamp(now),
    })
    order = np.lexsort((frame["field"].astype(str).to_numpy(), frame["source_row"].fillna(-1).to_numpy(), frame["source"].astype(str).to_numpy()))
    return contracts.quarantine_frame(frame.iloc[order])


# ============================================================================ report


@dataclass
class TableReport:
    """One canonical table's outcome.

    ``rows_read == rows_good + rows_quarantined`` always; ``rows_loaded`` is ``rows_good``
    once loaded (ingest) and 0 when the run failed (nothing is loaded then). In a validate
    run ``rows_loaded`` is what *would* be loaded.
    """

    table: str
    source: str
    source_kind: str
    rows_read: int
    rows_good: int
    rows_loaded: int
    rows_quarantined: int
    top_reasons: list[tuple[str, int]]
    max_bad_share: float
    status: Literal["loaded", "valid", "failed"]

    @property
    def bad_share(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0

    def as_row(self) -> dict[str, object]:
        return {
            "table": self.table, "source": self.source, "read": self.rows_read, "good": self.rows_good, "loaded": self.rows_loaded,
            "quarantined": self.rows_quarantined, "bad_share": f"{self.bad_share:.1%}", "status": self.status,
            "top_reasons": "; ".join(f"{r} ({c})" for r, c in self.top_reasons),
        }


@dataclass
class IngestReport:
    """What a run read, loaded and quarantined, per table. ``quarantine`` holds the reject records."""

    mode: Literal["ingest", "validate"]
    run_id: str
    run_date: date
    mapping: str
    tables: list[TableReport]
    quarantine: pd.DataFrame

    @property
    def ok(self) -> bool:
        return all(t.status != "failed" for t in self.tables)

    COLUMNS = ("table", "source", "read", "good", "loaded", "quarantined", "bad_share", "status", "top_reasons")

    def rows(self) -> list[dict[str, object]]:
        """One dict per table with the keys in :attr:`COLUMNS` (ready for a rich.Table)."""
        return [t.as_row() for t in self.tables]

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode, "run_id": self.run_id, "run_date": self.run_date.isoformat(), "mapping": self.mapping,
            "ok": self.ok, "tables": [{**t.as_row(), "top_reasons": [list(r) for r in t.top_reasons]} for t in self.tables],
        }

    def describe(self) -> str:
        """A plain-text table plus the outcome line."""
        verb = "would load" if self.mode == "validate" else "loaded"
        header = ["table", "source", "read", verb, "quarantined", "bad", "status"]
        body = [[t.table, _short(t.source, 40), str(t.rows_read), str(t.rows_loaded), str(t.rows_quarantined), f"{t.bad_share:.1%}", t.status] for t in self.tables]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 2 or i == 6 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [f"{self.mode} run {self.run_id} (run date {self.run_date}, mapping {self.mapping})", fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in body]
        for t in self.tables:
            if t.top_reasons:
                lines.append(f"  {t.table}: " + "; ".join(f"{r} ({c})" for r, c in t.top_reasons))
        lines.append("OK" if self.ok else "FAILED: " + ", ".join(t.table for t in self.tables if t.status == "failed") + " over the bad-row limit")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ============================================================================ the run


def ingest(engine: sa.Engine, mapping: str | Path | MappingABC[str, Any] | Mapping, run_date: date | None = None, *,
           max_bad_share: float | None = None) -> IngestReport:
    """Load every mapped table (full replace), quarantining bad rows. See the module docstring.

    Raises :class:`MappingError`, :class:`SourceError` (structural; nothing written) or
    :class:`ContractError` (a table over its bad-row limit; quarantine written, no canonical
    table loaded).
    """
    return _run(engine, mapping, run_date, max_bad_share, write=True)


def validate(engine: sa.Engine, mapping: str | Path | MappingABC[str, Any] | Mapping, run_date: date | None = None, *,
             max_bad_share: float | None = None) -> IngestReport:
    """Everything :func:`ingest` checks, without loading: canonical tables and quarantine are untouched.

    File sources are still staged (``staging_*``) so ``query:`` sources can be run. A table
    over its limit is reported with status 'failed' (no exception).
    """
    return _run(engine, mapping, run_date, max_bad_share, write=False)


def _not_empty(raw: RawSource, name: str, where: str) -> RawSource:
    """A full load replaces the table: an empty source would wipe it, so it is a structural error."""
    if len(raw.frame) == 0:
        what = ", ".join(str(p) for p in raw.files) or raw.label
        raise SourceError(f"{where} ({what}): no data rows; refusing to replace '{name}' with an empty table")
    return raw


def _limit(mapping: Mapping, src: TableSource, override: float | None) -> float:
    for value in (override, src.max_bad_share, mapping.model.max_bad_share):
        if value is not None:
            return float(value)
    return DEFAULT_MAX_BAD_SHARE


def _known_accounts(engine: sa.Engine) -> pd.Index:
    if not table_exists(engine, "accounts"):
        return pd.Index([], dtype=object)
    ids = read_sql(engine, "SELECT DISTINCT account_id FROM accounts")["account_id"]
    return pd.Index(ids.dropna().astype(str))


def _run(engine: sa.Engine, mapping_src: Any, run_date: date | None, max_bad_share: float | None, *, write: bool) -> IngestReport:
    mapping = load_mapping(mapping_src)
    model = mapping.model
    run_date = run_date or date.today()
    now = datetime.now().replace(microsecond=0)
    run_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    label = mapping.label

    # 1. read and structurally check every file, before writing anything
    staged: dict[str, RawSource] = {}
    for name, stg in model.staging.items():
        opts = mapping.options_for(stg, f"staging.{name}.options")
        staged[name] = _read_files(mapping, stg, opts, f"{label}: staging.{name}", None)
    file_tables: dict[str, RawSource] = {}
    for name, src in model.tables.items():
        opts = mapping.options_for(src, f"tables.{name}.options")
        _constants_ok(src, CANONICAL[name], opts, label, f"tables.{name}")
        for col, value in src.defaults.items():
            _default_value(src, next(c for c in CANONICAL[name].columns if c.name == col), opts, f"{label}: tables.{name}")
        if src.kind == "file":
            file_tables[name] = _read_files(mapping, src, opts, f"{label}: tables.{name}", _expected_source_columns(src, CANONICAL[name]))
            _not_empty(file_tables[name], name, f"{label}: tables.{name}")

    # 2. stage raw files so queries can join them
    for name, raw in {**staged, **file_tables}.items():
        _stage(engine, name, raw)

    # 3. map, coerce and check each table (accounts first: it defines the known accounts)
    prepared: list[PreparedTable] = []
    limits: dict[str, float] = {}
    known: pd.Index | None = None
    order = [t for t in CANONICAL if t in model.tables]
    if "accounts" not in model.tables:
        known = _known_accounts(engine)
    for name in order:
        src = model.tables[name]
        opts = mapping.options_for(src, f"tables.{name}.options")
        where = f"{label}: tables.{name}"
        raw = file_tables[name] if name in file_tables else _not_empty(_read_warehouse(engine, src, run_date, where), name, where)
        prep = prepare_table(name, raw, src, opts, run_date=run_date, known_accounts=known if name != "accounts" else None, where=where)
        prepared.append(prep)
        limits[name] = _limit(mapping, src, max_bad_share)
        if name == "accounts":
            known = pd.Index(prep.frame.loc[prep.good, "account_id"].astype(str))
        log.info("%s: %d rows read, %d quarantined", name, prep.rows_read, prep.rows_quarantined)

    quarantine = {p.table: _quarantine_records(p, run_id, now) for p in prepared}
    reports = []
    for p in prepared:
        failed = p.rows_read > 0 and p.rows_quarantined / p.rows_read > limits[p.table]
        reports.append(TableReport(
            table=p.table, source=p.source.label, source_kind=p.source.kind, rows_read=p.rows_read, rows_good=int(p.good.sum()),
            rows_loaded=0 if (failed and write) else int(p.good.sum()), rows_quarantined=p.rows_quarantined,
            top_reasons=contracts.top_reasons(p.violations), max_bad_share=limits[p.table],
            status="failed" if failed else ("loaded" if write else "valid"),
        ))
    all_q = pd.concat([q for q in quarantine.values() if len(q)], ignore_index=True) if any(len(q) for q in quarantine.values()) else contracts.empty_quarantine()
    report = IngestReport("ingest" if write else "validate", run_id, run_date, label, reports, all_q)
    if not write:
        return report

    # 4. write: quarantine always (it explains a failure); canonical tables only if every table passed
    for name, q in quarantine.items():
        replace_rows(engine, QUARANTINE_TABLE, q if len(q) else contracts.empty_quarantine(), where={"table_name": name})
    if not report.ok:
        for t in report.tables:  # nothing was loaded for any table
            t.rows_loaded = 0
        raise ContractError(_failure_message(report), report)
    for p, t in zip(prepared, report.tables):
        good = coerce(p.frame.loc[p.good], CANONICAL[p.table])
        if p.table == "usage":  # only the days that changed since the last load are rewritten
            replace_usage_by_day(engine, good)
            t.rows_loaded = len(good)
        else:
            # versions known from the end of the run date (the extract may hold that whole day):
            # features as of D read only what was loaded by D (churnflow.history)
            t.rows_loaded = replace_rows(engine, p.table, good, replace_all=True, loaded_at=_end_of(run_date))
    log.info("ingest %s: %s", run_id, {t.table: (t.rows_loaded, t.rows_quarantined) for t in report.tables})
    return report


def _end_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(days=1)


def _failure_message(report: IngestReport) -> str:
    lines = []
    for t in report.tables:
        if t.status == "failed":
            reasons = "; ".join(f"{r} ({c})" for r, c in t.top_reasons)
            lines.append(
                f"table '{t.table}' ({t.source}): {t.rows_quarantined} of {t.rows_read} rows ({t.bad_share:.1%}) broke its contract, "
                f"over the limit of {t.max_bad_share:.1%}; top reasons: {reasons}"
            )
    return (
        "ingest failed, nothing was loaded:\n  " + "\n  ".join(lines)
        + f"\nThe rejected rows are in the '{QUARANTINE_TABLE}' table (run_id {report.run_id})."
    )

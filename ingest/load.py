"""Bring your own data: map foreign exports onto the canonical tables, check, quarantine, load.

The mapping file (:mod:`ingest.mapping`: the language, its models and docs/mapping.md)
says where each canonical table's rows come from and how source columns and values map
to canonical ones. This module reads the sources, maps and checks them, and loads them.

A run, for :func:`ingest` and :func:`validate` alike:

1. every file source is read and checked structurally (empty file, encoding, delimiter,
   missing columns): any problem fails fast with the file named, before anything is written;
2. files are staged raw (text columns, original header names, plus ``_source_file`` and
   ``_source_row``) into ``staging_<name>`` tables, so ``query:`` sources can join them;
   queries must be one SELECT and run in a transaction that is rolled back;
3. each canonical table (accounts first) is read, filtered by ``keep_rows``, mapped, recoded,
   coerced to the canonical kinds (values that do not parse are rejected, not guessed; a date
   column whose day/month order is ambiguous is refused) and checked against its contract
   (:mod:`ingest.contracts`), then by the whole-table checks (the ingest's own, e.g.
   subscriptions that reveal churn, and any a deployment registered with
   :func:`register_table_check`); unmapped source columns that look like canonical ones
   are reported as warnings;
4. if any table's bad share exceeds ``max_bad_share`` the run fails (:class:`ContractError`)
   and *no* canonical table is loaded; otherwise, in ONE transaction, each mapped table's
   content is replaced by its good rows (a full load: re-running never duplicates), tables
   declared absent are dropped, rejects replace that table's rows in ``quarantine``,
   attribute values go to ``account_attributes`` and the run's declarations are marked
   finished in ``ingest_manifest`` (read by :mod:`churnflow.manifest`).

:func:`validate` stops after step 3 (it writes only the staging tables).
"""

from __future__ import annotations

import difflib
import glob
import io
import json
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

from ingest import contracts
from ingest.contracts import CONTRACTS, DEFAULT_MAX_BAD_SHARE, QUARANTINE_TABLE, TableCheck
from churnflow.manifest import AttributeSpec, DataManifest
from churnflow.schema import ACCOUNT_ATTRIBUTES, CANONICAL, INGEST_MANIFEST, SA_TYPES, Column, TableSpec, coerce
from churnflow.warehouse import drop_tables, ensure_table, read_sql, replace_rows, table_exists
from ingest.mapping import (
    STAGING_PREFIX,
    AmbiguousDateError,
    AttributeEntry,
    ContractError,
    Mapping,
    MappingError,
    MappingFile,
    Options,
    QueryError,
    SourceError,
    TableSource,
    _SourceBase,
    load_mapping,
)
from ingest.usage_days import add_day_hash_parts, day_hash_parts, replace_usage_by_day, replace_usage_by_day_from

log = logging.getLogger(__name__)

SOURCE_FILE_COL = "_source_file"
SOURCE_ROW_COL = "_source_row"
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0"})
_RUN_DATE_PARAM = re.compile(r"(?<![:\w]):run_date\b")


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


_SLASH_DATE = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{4}")


class AmbiguousDates(ValueError):
    """Slash dates whose day/month order neither the options nor the values settle.

    ``row``/``value``: a positional row with an ambiguous value (or, with ``conflict``, one
    that proves day-first while ``conflict`` is a row that proves month-first).
    """

    def __init__(self, row: int, value: str, conflict: tuple[int, str] | None = None) -> None:
        super().__init__(f"row {row}: {value!r} is ambiguous")
        self.row, self.value, self.conflict = row, value, conflict


def slash_date_order(raw: pd.Series) -> tuple[bool | None, int | None]:
    """The day/month order of a column's slash/dot/dash dates, read from its own values.

    Returns ``(dayfirst, row)``: True when some value's first part is above 12 (it can only
    be a day), False when some second part is, with the positional row that proves it;
    ``(None, None)`` when no value depends on the order (none, or only 05/05-like ones).
    Raises :class:`AmbiguousDates` when values read both ways and nothing proves the order,
    or when some values prove one order and others the other: a silent guess here would
    shift every date by months.
    """
    s = _clean_text(raw.reset_index(drop=True))
    parts = s.str.extract(_SLASH_DATE.pattern)
    a = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype="float64")
    b = pd.to_numeric(parts[1], errors="coerce").to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        day_first = (a > 12) & (b <= 12)
        month_first = (b > 12) & (a <= 12)
        ambiguous = (a <= 12) & (b <= 12) & (a != b)
    text = s.astype(object)
    if day_first.any() and month_first.any():
        i, j = int(np.flatnonzero(day_first)[0]), int(np.flatnonzero(month_first)[0])
        raise AmbiguousDates(i, str(text.iloc[i]), conflict=(j, str(text.iloc[j])))
    if day_first.any():
        return True, int(np.flatnonzero(day_first)[0])
    if month_first.any():
        return False, int(np.flatnonzero(month_first)[0])
    if ambiguous.any():
        i = int(np.flatnonzero(ambiguous)[0])
        raise AmbiguousDates(i, str(text.iloc[i]))
    return None, None


def parse_datetimes(raw: pd.Series, opts: Options | None = None, *, date_only: bool = False) -> tuple[pd.Series, np.ndarray]:
    """Parse dates/timestamps to naive UTC datetime64[ns].

    Accepted: ISO 8601 (with or without time, 'T' or space, offsets converted to UTC),
    ``MM/DD/YYYY`` or ``DD/MM/YYYY`` (separators / . -, optional ``HH:MM[:SS]``) in the order
    ``dayfirst`` declares or, undeclared, the order the values prove
    (:func:`slash_date_order`, which raises :class:`AmbiguousDates` when they prove none),
    epoch seconds (all digits; ``epoch_unit: ms`` for milliseconds), an explicit
    ``date_format``, and native datetime/date values. Anything else is rejected.
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
            dayfirst = opts.dayfirst
            if dayfirst is None:
                try:
                    proven, _ = slash_date_order(s[slash])
                except AmbiguousDates as exc:  # rows of the slash subset -> rows of the column
                    where = np.flatnonzero(slash.to_numpy())
                    conflict = (int(where[exc.conflict[0]]), exc.conflict[1]) if exc.conflict else None
                    raise AmbiguousDates(int(where[exc.row]), exc.value, conflict) from None
                dayfirst = bool(proven)
            dm = "%d/%m/%Y" if dayfirst else "%m/%d/%Y"
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
        order = {True: "DD/MM/YYYY", False: "MM/DD/YYYY", None: "DD/MM/YYYY or MM/DD/YYYY"}[opts.dayfirst]
        return f"not a {kind} (expected ISO, {order} or epoch seconds)"
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


def read_file(path: Path, opts: Options, expected: list[str] | None = None, *, allow_empty: bool = False) -> pd.DataFrame:
    """Read one CSV/Parquet file with every structural check; all CSV values stay text.

    Adds ``_source_file`` (the file name) and ``_source_row`` (1-based data row: the first
    row after the header is 1). With ``allow_empty`` a blank file is an empty extract with
    the expected columns (some exports write nothing at all for an empty result).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    if not data.strip() and allow_empty:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in expected or []})
        frame[SOURCE_FILE_COL] = pd.Series(dtype=object)
        frame[SOURCE_ROW_COL] = pd.Series(dtype=np.int64)
        return frame
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


STREAMED_TABLES = ("usage",)
"""Canonical tables whose file sources are read in chunks: event tables, the ones that grow to tens of millions of rows."""

STREAM_CHUNK_ROWS = 200_000
"""Rows per chunk when a usage file source is streamed (bounds ingest memory whatever the file size)."""


def _check_header(path: Path, columns: list[str], opts: Options, expected: list[str] | None) -> list[str]:
    """The structural checks of :func:`read_file` on a header alone."""
    columns = [str(c).strip() for c in columns]
    if len(columns) == 1 and path.suffix.lower() not in (".parquet", ".pq"):
        others = [d for d in CANDIDATE_DELIMITERS if d != opts.delimiter and d in columns[0]]
        if others:
            raise SourceError(
                f"{path}: the whole header landed in one column ({columns[0]!r}); expected delimiter {opts.delimiter!r} "
                f"but the header looks {others[0]!r}-delimited; set options.delimiter"
            )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise SourceError(f"{path}: duplicate column names {dupes}")
    if expected:
        missing = [c for c in expected if c not in columns]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}; expected {expected}; found {columns}")
    return columns


def iter_file_chunks(path: Path, opts: Options, expected: list[str] | None = None, *, allow_empty: bool = False,
                     chunk_rows: int | None = None):
    """:func:`read_file` in chunks of ``chunk_rows`` rows, with the same checks and the same
    ``_source_file`` / ``_source_row`` columns, so a raw event table of any size is read in
    bounded memory. A byte that is not in the encoding is reported with the rows around it."""
    chunk_rows = chunk_rows or STREAM_CHUNK_ROWS
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise SourceError(f"{path}: not a readable Parquet file: {exc}") from None
        _check_header(path, list(parquet.schema_arrow.names), opts, expected)
        offset = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas()
            frame[SOURCE_FILE_COL] = path.name
            frame[SOURCE_ROW_COL] = np.arange(offset + 1, offset + len(frame) + 1, dtype=np.int64)
            offset += len(frame)
            yield frame
        return
    if size == 0 or (size < 4096 and not path.read_bytes().strip()):
        if allow_empty:
            yield read_file(path, opts, expected, allow_empty=True)
            return
        want = f" with columns {expected}" if expected else ""
        raise SourceError(f"{path}: the file is empty; expected a header line{want} and data rows")
    encoding = opts.encoding
    if encoding.lower().replace("-", "").replace("_", "") == "utf8":
        encoding = "utf-8-sig"
    offset = 0
    try:
        with open(path, encoding=encoding, newline="") as handle:
            reader = pd.read_csv(handle, sep=opts.delimiter, quotechar=opts.quotechar, dtype=str, keep_default_na=False,
                                 na_values=opts.null_values, engine="c", chunksize=chunk_rows)
            for frame in reader:
                if offset == 0:
                    frame.columns = _check_header(path, list(frame.columns), opts, expected)
                else:
                    frame.columns = [str(c).strip() for c in frame.columns]
                frame[SOURCE_FILE_COL] = path.name
                frame[SOURCE_ROW_COL] = np.arange(offset + 1, offset + len(frame) + 1, dtype=np.int64)
                offset += len(frame)
                yield frame
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: not valid {opts.encoding} after data row {offset} (byte 0x{exc.object[exc.start]:02x}); "
            f"set options.encoding (e.g. latin-1 or cp1252) if the file is not {opts.encoding}"
        ) from None
    except LookupError:
        raise SourceError(f"{path}: unknown encoding {opts.encoding!r}") from None
    except pd.errors.EmptyDataError:
        raise SourceError(f"{path}: the file is empty; expected a header line and data rows") from None
    except pd.errors.ParserError as exc:
        raise SourceError(f"{path}: cannot parse as CSV with delimiter {opts.delimiter!r} after data row {offset}: {exc}") from None


def _check_file_header(path: Path, opts: Options, expected: list[str] | None, *, allow_empty: bool) -> None:
    """Fail fast, before anything is written, on a streamed file's structural problems."""
    first = next(iter_file_chunks(path, opts, expected, allow_empty=allow_empty, chunk_rows=1), None)
    if first is None and not allow_empty:
        raise SourceError(f"{path}: no data rows; refusing to replace the table with an empty one (or set allow_empty: true)")


def _expected_source_columns(src: TableSource, spec: TableSpec) -> list[str]:
    """Source columns a file/query must have: the mapped ones (and canonical-named required ones are checked later)."""
    return list(dict.fromkeys(src.columns[c.name] for c in spec.columns if c.name in src.columns))


def _read_files(mapping: Mapping, src: _SourceBase, opts: Options, where: str, expected: list[str] | None, *, allow_empty: bool = False) -> RawSource:
    paths = _resolve_files(mapping, src.files(), where)
    frames = [read_file(p, opts, expected, allow_empty=allow_empty) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return RawSource(frame, ", ".join(p.name for p in paths), "file", paths)


def _stage(engine: sa.Engine, name: str, raw: RawSource) -> None:
    for col in raw.frame.columns:
        if '"' in col or len(col) > 63 or not col.isprintable():
            raise SourceError(f"{raw.label}: column name {col!r} cannot be staged (no quotes or control characters, at most 63 characters)")
    table = STAGING_PREFIX + name
    drop_tables(engine, [table])  # the header may have changed since the last run
    replace_rows(engine, table, raw.frame, replace_all=True)


_WRITE_WORDS = (
    "insert", "update", "delete", "merge", "upsert", "drop", "create", "alter", "truncate", "copy", "grant", "revoke",
    "attach", "detach", "into", "returning", "call", "pragma", "install", "load", "vacuum", "export", "import", "checkpoint",
)
_WRITE_WORD = re.compile(r"\b(" + "|".join(_WRITE_WORDS) + r")\b", re.IGNORECASE)
_SQL_NOISE = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$[A-Za-z_]*\$).*?\1",
    re.DOTALL,
)


def check_read_only_query(sql: str) -> str | None:
    """Why ``sql`` is not one read-only SELECT/WITH query (None when it is).

    Checked on the text before anything runs, with comments, string literals and quoted
    identifiers blanked out: one statement (a trailing ``;`` is fine), starting with SELECT
    or WITH, and no data-changing keyword anywhere (a ``WITH x AS (DELETE ... RETURNING)``
    or a ``SELECT ... INTO`` writes). A column named like one of those words must be quoted.
    The query also runs in a transaction that is rolled back, for anything this misses.
    """
    text = _SQL_NOISE.sub(" ", sql).strip()
    text = text.rstrip().rstrip(";").strip()
    if not text:
        return "the query is empty"
    if ";" in text:
        return "more than one statement (a ';' before the end)"
    first = re.match(r"[\s(]*([A-Za-z]+)", text)
    if not first or first.group(1).lower() not in ("select", "with"):
        return f"it starts with {first.group(1).upper() if first else text[:20]!r}, not SELECT or WITH"
    bad = _WRITE_WORD.search(text)
    if bad:
        return f"it contains {bad.group(1).upper()}, which changes data (quote a column named like that)"
    return None


def _read_only_query(engine: sa.Engine, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    """Run a source query in a transaction that is always rolled back."""
    stmt = sa.text(sql)
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            if engine.dialect.name == "duckdb":
                conn.exec_driver_sql("SELECT 1")  # the DB-API transaction is open from here
                bound = stmt.bindparams(**params) if params else stmt
                compiled = bound.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
                values = compiled.construct_params()
                positional = [values[name] for name in (compiled.positiontup or [])]
                return conn.connection.driver_connection.execute(compiled.string, positional).df()
            result = conn.execute(stmt, params)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        finally:
            trans.rollback()


def _read_warehouse(engine: sa.Engine, src: TableSource, run_date: date, where: str) -> RawSource:
    if src.query is not None:
        problem = check_read_only_query(src.query)
        if problem:
            raise QueryError(f"{where}.query: only one read-only SELECT (or WITH ... SELECT) query is allowed: {problem}; nothing was run")
        params = {"run_date": datetime(run_date.year, run_date.month, run_date.day)} if _RUN_DATE_PARAM.search(src.query) else {}
        try:
            frame = _read_only_query(engine, src.query, params)
        except Exception as exc:  # noqa: BLE001 - any driver error is the query's
            orig = getattr(exc, "orig", None) or exc
            raise SourceError(f"{where}: the query failed: {str(orig).strip()}") from None
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
    source: RawSource  # the rows kept by keep_rows (skipped rows are counted, not kept)
    frame: pd.DataFrame  # coerced, all kept rows, canonical columns
    violations: pd.DataFrame  # row, field, value, reason: each rejects its row
    good: np.ndarray  # bool mask
    cleared: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=contracts.VIOLATION_COLUMNS))  # values emptied, row kept
    skipped: int = 0  # rows keep_rows left out
    attributes: dict[str, pd.Series] = field(default_factory=dict)  # attribute name -> parsed values per row

    @property
    def rows_read(self) -> int:
        return len(self.frame)

    @property
    def rows_quarantined(self) -> int:
        return int((~self.good).sum())


@dataclass
class StreamedTable:
    """A usage file source checked chunk by chunk (:func:`_stream_table`): the counts, the
    quarantine records and the per-day hashes of the whole extract, its good rows written to
    ``load_table`` (a validate run only checks). Memory is bounded by the chunk size."""

    table: str
    source: RawSource  # an empty frame: the label and files
    columns: list[str]  # the source header
    rows_read: int = 0  # rows kept by keep_rows, as PreparedTable.rows_read
    rows_quarantined: int = 0
    skipped: int = 0
    violations: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=contracts.VIOLATION_COLUMNS))
    quarantine: pd.DataFrame = field(default_factory=contracts.empty_quarantine)
    cleared: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=contracts.VIOLATION_COLUMNS))
    day_parts: pd.DataFrame | None = None
    load_table: str | None = None
    features_seen: set[str] = field(default_factory=set)

    @property
    def good(self) -> np.ndarray:
        return np.ones(self.rows_read - self.rows_quarantined, dtype=bool)


def _source_location(raw: RawSource, row: int) -> str:
    """'file.csv row 12' (1-based data row) for a positional row of a source frame."""
    frame = raw.frame
    file = str(frame[SOURCE_FILE_COL].iloc[row]) if SOURCE_FILE_COL in frame.columns else raw.label
    number = frame[SOURCE_ROW_COL].iloc[row] if SOURCE_ROW_COL in frame.columns else row + 1
    return f"{file} row {int(number) if pd.notna(number) else row + 1}"


def _recode(values: pd.Series, table: dict[Any, Any]) -> pd.Series:
    """Replace source values found in ``table`` (trimmed, any case); others pass through."""
    lookup = {str(k).strip().lower(): v for k, v in table.items()}
    key = values.astype(object).map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().lower())
    hit = key.isin(list(lookup)).to_numpy()
    if not hit.any():
        return values
    out = values.astype(object).copy()
    out[hit] = key[hit].map(lookup).to_numpy(dtype=object)
    return out


def _column_options(values: pd.Series, col: Column, opts: Options, raw: RawSource, source_col: str, where: str,
                    notes: list[str] | None) -> Options:
    """The options a date column parses with: the declared order, else the one its values prove.

    A column whose dates read both ways is refused (one message with an example and the fix)
    rather than guessed: a wrong guess shifts dates by months without a single parse error.
    """
    if col.kind not in ("date", "timestamp") or opts.dayfirst is not None or opts.date_format:
        return opts
    if pd.api.types.is_datetime64_any_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return opts  # native datetimes and epoch numbers have no day/month order
    try:
        dayfirst, row = slash_date_order(values)
    except AmbiguousDates as exc:
        fix = "declare `dayfirst: true` (DD/MM/YYYY) or `dayfirst: false` (MM/DD/YYYY) under options (or the table's options), or give `date_format`"
        if exc.conflict:
            raise AmbiguousDateError(
                f"{where} ({raw.label}): column '{source_col}' ({col.name}) mixes day-first dates ({_source_location(raw, exc.row)}: "
                f"{exc.value!r}) and month-first dates ({_source_location(raw, exc.conflict[0])}: {exc.conflict[1]!r}); {fix} "
                "and the dates in the other order will be quarantined"
            ) from None
        raise AmbiguousDateError(
            f"{where} ({raw.label}): column '{source_col}' ({col.name}) has dates that read both as DD/MM and MM/DD, "
            f"e.g. {_source_location(raw, exc.row)}: {exc.value!r}, and no value proves the order; {fix}"
        ) from None
    if dayfirst is None:
        return opts
    if notes is not None:
        order = "DD/MM/YYYY" if dayfirst else "MM/DD/YYYY"
        notes.append(f"{where}: column '{source_col}' ({col.name}) read as {order}, proven by {_source_location(raw, row)}: "
                     f"{str(values.iloc[row]).strip()!r} (declare dayfirst to make it explicit)")
    return opts.model_copy(update={"dayfirst": dayfirst})


def map_columns(raw: RawSource, src: TableSource, spec: TableSpec, opts: Options, where: str, *,
                notes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Map, recode, coerce and default one source frame; returns (typed frame, parse violations).

    ``notes`` collects what was decided from the data (e.g. a date order the values proved).
    """
    frame = raw.frame.reset_index(drop=True)
    n = len(frame)
    expected = _expected_source_columns(src, spec)
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise SourceError(f"{where} ({raw.label}): missing source column(s) {missing}; found {[c for c in frame.columns if not c.startswith('_source_')]}")
    out: dict[str, pd.Series] = {}
    parse_violations: list[pd.DataFrame] = []
    for col in spec.columns:
        source_col = col.name
        if col.name in src.constants:
            values = pd.Series([src.constants[col.name]] * n, dtype=object)
        elif col.name in src.columns:
            source_col = src.columns[col.name]
            values = frame[source_col]
        elif col.name in frame.columns:
            values = frame[col.name]
        else:
            if col.required and col.default is None and col.name not in src.defaults and not (n == 0 and src.allow_empty):
                raise SourceError(
                    f"{where} ({raw.label}): no source for required column '{col.name}'; map it under "
                    f"tables.{spec.name}.columns (or give a constant/default); source columns are "
                    f"{[c for c in frame.columns if not c.startswith('_source_')]}"
                )
            values = pd.Series([None] * n, dtype=object)
        if col.name in src.recode:
            values = _recode(values, src.recode[col.name])
        col_opts = _column_options(values, col, opts, raw, source_col, where, notes)
        typed, failed = coerce_values(values, col.kind, col_opts)
        if failed.any():
            rows = np.flatnonzero(failed)
            parse_violations.append(contracts.violations_frame(rows, col.name, values.reset_index(drop=True), _parse_reason(col.kind, col_opts)))
        fill = _default_value(src, col, col_opts, where)
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
        try:
            typed, failed = coerce_values(pd.Series([raw], dtype=object), col.kind, opts)
        except AmbiguousDates:
            raise MappingError(f"{where}.defaults.{col.name}: {raw!r} reads both as DD/MM and MM/DD; write it as YYYY-MM-DD or declare dayfirst") from None
        if failed.any():
            raise MappingError(f"{where}.defaults.{col.name}: {raw!r} is {_parse_reason(col.kind, opts)}")
        return typed.iloc[0]
    return col.default


def _constants_ok(src: TableSource, spec: TableSpec, opts: Options, label: str, where: str) -> None:
    for name, value in src.constants.items():
        kind = next(c.kind for c in spec.columns if c.name == name)
        if value is not None:
            try:
                _, failed = coerce_values(pd.Series([value], dtype=object), kind, opts)
            except AmbiguousDates:
                raise MappingError(f"{label}: {where}.constants.{name}: {value!r} reads both as DD/MM and MM/DD; write it as YYYY-MM-DD or declare dayfirst") from None
            if failed.any():
                raise MappingError(f"{label}: {where}.constants.{name}: {value!r} is {_parse_reason(kind, opts)}")


def keep_rows(raw: RawSource, src: TableSource, where: str) -> tuple[RawSource, int]:
    """The rows whose ``keep_rows`` columns hold one of the listed values (trimmed, any case).

    Returns the kept rows (with their original source row numbers) and how many were skipped.
    """
    if not src.keep_rows:
        return raw, 0
    frame = raw.frame.reset_index(drop=True)
    if SOURCE_ROW_COL not in frame.columns:  # quarantine rows must keep pointing at the source's rows
        frame = frame.assign(**{SOURCE_ROW_COL: np.arange(1, len(frame) + 1, dtype=np.int64)})
    keep = np.ones(len(frame), dtype=bool)
    for column, wanted in src.keep_rows.items():
        if column not in frame.columns:
            raise SourceError(f"{where}.keep_rows.{column}: no source column '{column}' in {raw.label}; found "
                              f"{[c for c in frame.columns if not c.startswith('_source_')]}")
        values = _clean_text(frame[column]).str.lower()
        keep &= values.isin([str(v).strip().lower() for v in wanted]).fillna(False).to_numpy(dtype=bool)
    kept = RawSource(frame.loc[keep].reset_index(drop=True), raw.label, raw.kind, raw.files)
    return kept, int((~keep).sum())


_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def _norm_name(name: str) -> str:
    return _NOT_ALNUM.sub("", name.lower())


def unmapped_lookalikes(columns: list[str], src: TableSource, spec: TableSpec, used: set[str]) -> list[tuple[str, str]]:
    """(source column, canonical column) pairs where an unused source column looks like a
    canonical column nothing maps: same name once case, spaces and punctuation are ignored,
    or a close spelling (difflib ratio >= 0.85 on those normalised names).

    Such a column is most likely the data the mapping meant to load; without the warning a
    typo in the mapping silently leaves the canonical column empty.
    """
    present = set(columns)
    open_canonical = {_norm_name(c): c for c in spec.column_names
                      if c not in src.columns and c not in src.constants and c not in present}
    if not open_canonical:
        return []
    ignored = set(src.ignore_columns)
    out = []
    for column in columns:
        if column.startswith("_source_") or column in used or column in ignored:
            continue
        norm = _norm_name(column)
        if not norm:
            continue
        hit = open_canonical.get(norm)
        if hit is None:
            close = difflib.get_close_matches(norm, list(open_canonical), n=1, cutoff=0.85)
            hit = open_canonical[close[0]] if close else None
        if hit is not None:
            out.append((column, hit))
    return out


CRM_ID_REASON = ("not a Salesforce Account Id (15 or 18 letters and digits, key prefix 001, matching case-safe suffix): "
                 "value cleared, account loaded without a CRM link")


def invalid_salesforce_account_ids(values: pd.Series) -> np.ndarray:
    """Mask of non-empty values that are not Salesforce Account Ids.

    A wrong id would make every CRM push for the account fail (or, worse, hit another
    record), so ingest stops it where it enters instead of at sync time.
    """
    from churnflow.salesforce_ids import PREFIXES, to_id18

    def bad(v: object) -> bool:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return False
        id18 = to_id18(str(v))
        return id18 is None or not id18.startswith(PREFIXES["Account"])

    return values.astype(object).map(bad).to_numpy(dtype=bool)


def prepare_table(
    name: str, raw: RawSource, src: TableSource, opts: Options, *, run_date: date,
    known_accounts: pd.Index | None, where: str, notes: list[str] | None = None,
    attributes: dict[str, AttributeEntry] | None = None, crm_id_field: str = "Id",
) -> PreparedTable:
    """keep_rows + map + coerce + contract-check one table (pure: no warehouse access).

    ``attributes``: the mapping's attribute entries read from this table (name -> entry);
    a value that does not parse rejects its row like any field. With ``crm_id_field``
    ``Id``, account CRM ids that are not Salesforce Account Ids are cleared (and recorded
    in quarantine) while the account itself loads.
    """
    spec = CANONICAL[name]
    contract = CONTRACTS[name]
    raw, skipped = keep_rows(raw, src, where)
    frame, parse_v = map_columns(raw, src, spec, opts, where, notes=notes)
    contracts.normalise_enums(frame, contract)
    attr_values: dict[str, pd.Series] = {}
    source = raw.frame.reset_index(drop=True)
    extra_v = []
    for attr, entry in (attributes or {}).items():
        if entry.column not in source.columns:
            raise SourceError(f"{where} ({raw.label}): attributes.{attr}.column: no source column '{entry.column}'; "
                              f"found {[c for c in source.columns if not c.startswith('_source_')]}")
        values = source[entry.column]
        typed, failed = coerce_values(values, "float" if entry.kind == "number" else "str", opts)
        if failed.any():
            extra_v.append(contracts.violations_frame(np.flatnonzero(failed), attr, values.reset_index(drop=True),
                                                      f"{_parse_reason('float', opts)} (attribute {attr})"))
        attr_values[attr] = typed.reset_index(drop=True)
    if extra_v:
        parse_v = pd.concat([parse_v, *extra_v], ignore_index=True) if len(parse_v) else pd.concat(extra_v, ignore_index=True)
    cleared = pd.DataFrame(columns=contracts.VIOLATION_COLUMNS)
    if name == "accounts" and crm_id_field == "Id" and len(frame):
        bad_ids = invalid_salesforce_account_ids(frame["crm_account_id"])
        if bad_ids.any():
            cleared = contracts.violations_frame(np.flatnonzero(bad_ids), "crm_account_id", frame["crm_account_id"], CRM_ID_REASON)
            frame["crm_account_id"] = frame["crm_account_id"].astype(object).where(~bad_ids, None)
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
    if len(cleared):  # a rejected row is reported for why it was rejected; a cleared value only on rows that load
        cleared = cleared[good[cleared["row"].to_numpy(dtype=np.int64)]].reset_index(drop=True)
    return PreparedTable(name, raw, frame, violations, good, cleared, skipped, attr_values)


def _quarantine_records(prep: PreparedTable, run_id: str, now: datetime) -> pd.DataFrame:
    parts = [x for x in (prep.violations, prep.cleared) if len(x)]
    v = pd.concat(parts, ignore_index=True) if parts else prep.violations
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

    ``rows_read == rows_good + rows_quarantined + rows_skipped`` always (skipped: left out by
    ``keep_rows``); ``rows_loaded`` is ``rows_good`` once loaded (ingest) and 0 when the run
    failed (nothing is loaded then). In a validate run ``rows_loaded`` is what *would* be
    loaded. ``fields_cleared`` counts values emptied on rows that still load (CRM ids that
    are not Salesforce Ids); they are in quarantine too.
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
    status: Literal["loaded", "valid", "failed", "absent"]
    rows_skipped: int = 0
    fields_cleared: int = 0

    @property
    def bad_share(self) -> float:
        considered = self.rows_read - self.rows_skipped
        return self.rows_quarantined / considered if considered else 0.0

    def as_row(self) -> dict[str, object]:
        return {
            "table": self.table, "source": self.source, "read": self.rows_read, "good": self.rows_good, "loaded": self.rows_loaded,
            "quarantined": self.rows_quarantined, "skipped": self.rows_skipped, "cleared": self.fields_cleared,
            "bad_share": f"{self.bad_share:.1%}", "status": self.status,
            "top_reasons": "; ".join(f"{r} ({c})" for r, c in self.top_reasons),
        }


@dataclass
class IngestReport:
    """What a run read, loaded and quarantined, per table. ``quarantine`` holds the reject records.

    ``warnings``: things the user should look at that did not stop the run (a source column
    that looks like an unmapped canonical one, whole-table checks);
    ``notes``: what the run decided from the data (a date order the values proved, a table
    dropped because it was declared absent).
    """

    mode: Literal["ingest", "validate"]
    run_id: str
    run_date: date
    mapping: str
    tables: list[TableReport]
    quarantine: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.status != "failed" for t in self.tables)

    COLUMNS = ("table", "source", "read", "good", "loaded", "quarantined", "skipped", "cleared", "bad_share", "status", "top_reasons")

    def rows(self) -> list[dict[str, object]]:
        """One dict per table with the keys in :attr:`COLUMNS` (ready for a rich.Table)."""
        return [t.as_row() for t in self.tables]

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode, "run_id": self.run_id, "run_date": self.run_date.isoformat(), "mapping": self.mapping,
            "ok": self.ok, "tables": [{**t.as_row(), "top_reasons": [list(r) for r in t.top_reasons]} for t in self.tables],
            "warnings": list(self.warnings), "notes": list(self.notes),
        }

    def describe(self) -> str:
        """A plain-text table, the warnings and notes, and the outcome line."""
        verb = "would load" if self.mode == "validate" else "loaded"
        header = ["table", "source", "read", verb, "quarantined", "skipped", "bad", "status"]
        body = [[t.table, _short(t.source, 40), str(t.rows_read), str(t.rows_loaded), str(t.rows_quarantined), str(t.rows_skipped),
                 f"{t.bad_share:.1%}", t.status] for t in self.tables]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 2 or i == 7 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [f"{self.mode} run {self.run_id} (run date {self.run_date}, mapping {self.mapping})", fmt(header), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in body]
        for t in self.tables:
            if t.top_reasons:
                lines.append(f"  {t.table}: " + "; ".join(f"{r} ({c})" for r, c in t.top_reasons))
            if t.fields_cleared:
                lines.append(f"  {t.table}: {t.fields_cleared} value(s) cleared on rows that loaded (see quarantine)")
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += [f"  WARNING {w}" for w in self.warnings]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {n}" for n in self.notes]
        lines.append("OK" if self.ok else "FAILED: " + ", ".join(t.table for t in self.tables if t.status == "failed") + " over the bad-row limit")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ============================================================================ whole-table checks a deployment adds

_TABLE_CHECKS: dict[str, list[TableCheck]] = {}


def register_table_check(table_name: str, fn: TableCheck) -> None:
    """Have ``fn`` look at every ingest/validate of ``table_name`` in this process, after the
    ingest's own checks (:data:`ingest.contracts.TABLE_CHECKS`): it receives the coerced good
    rows (canonical columns) and returns warnings, which the report and the CLI show.

    For checks a deployment adds for its own data; a check every ingest needs belongs in
    ``ingest.contracts.TABLE_CHECKS``, which runs whatever else is imported. Registering the
    same function again replaces it.
    """
    if table_name not in CANONICAL:
        raise KeyError(f"register_table_check: '{table_name}' is not a canonical table; expected one of {list(CANONICAL)}")
    key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", repr(fn)))
    checks = [f for f in _TABLE_CHECKS.get(table_name, []) if (getattr(f, "__module__", None), getattr(f, "__qualname__", repr(f))) != key]
    _TABLE_CHECKS[table_name] = [*checks, fn]


def _table_checks(name: str) -> list[TableCheck]:
    return [*contracts.TABLE_CHECKS.get(name, ()), *_TABLE_CHECKS.get(name, [])]


def _run_table_checks(name: str, good: pd.DataFrame) -> list[str]:
    out: list[str] = []
    for fn in _table_checks(name):
        label = getattr(fn, "__qualname__", repr(fn))
        try:
            found = fn(good.copy())
        except Exception as exc:  # noqa: BLE001 - a broken check must not break the load; it is reported
            log.debug("table check %s failed", label, exc_info=True)
            out.append(f"tables.{name}: check {label} could not run: {type(exc).__name__}: {exc}")
            continue
        out += [f"tables.{name}: {w}" for w in found or []]
    return out


# ============================================================================ the run

DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "usage": ("usage_daily", "usage_account_daily", "usage_rollup_days", "usage_ingest_days"),
    "surveys": ("survey_text",),
}
"""Tables computed from a canonical table: dropped with it when it is declared absent."""


def ingest(engine: sa.Engine, mapping: str | Path | MappingABC[str, Any] | Mapping, run_date: date | None = None, *,
           max_bad_share: float | None = None, crm_id_field: str = "Id") -> IngestReport:
    """Load every mapped table (full replace), quarantining bad rows. See the module docstring.

    Every write (canonical tables, dropped absent tables, attributes, quarantine, the
    manifest) commits in one transaction: a run that dies leaves the previous load whole.
    ``crm_id_field`` is the setting ``sf_account_match_field``: with ``Id`` account CRM ids
    must be Salesforce Account Ids.

    Raises :class:`MappingError`, :class:`SourceError` (structural; nothing written) or
    :class:`ContractError` (a table over its bad-row limit; quarantine written, no canonical
    table loaded).
    """
    return _run(engine, mapping, run_date, max_bad_share, write=True, crm_id_field=crm_id_field)


def validate(engine: sa.Engine, mapping: str | Path | MappingABC[str, Any] | Mapping, run_date: date | None = None, *,
             max_bad_share: float | None = None, crm_id_field: str = "Id") -> IngestReport:
    """Everything :func:`ingest` checks, without loading: canonical tables and quarantine are untouched.

    File sources are still staged (``staging_*``) so ``query:`` sources can be run; queries
    run in a transaction that is rolled back and must be a single SELECT. A table over its
    limit is reported with status 'failed' (no exception).
    """
    return _run(engine, mapping, run_date, max_bad_share, write=False, crm_id_field=crm_id_field)


def _not_empty(raw: RawSource, name: str, where: str) -> RawSource:
    """A full load replaces the table: an empty source would wipe it, so it is a structural error."""
    if len(raw.frame) == 0:
        what = ", ".join(str(p) for p in raw.files) or raw.label
        raise SourceError(f"{where} ({what}): no data rows; refusing to replace '{name}' with an empty table "
                          f"(set tables.{name}.allow_empty: true if an empty extract is expected)")
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


def _table_rows(engine: sa.Engine, name: str) -> int | None:
    if not table_exists(engine, name):
        return None
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(name))).scalar_one())


def _attribute_sources(model: MappingFile, name: str) -> dict[str, AttributeEntry]:
    return {a: e for a, e in model.attributes.items() if e.table == name}


def _file_columns(model: MappingFile, name: str, src: TableSource) -> list[str]:
    """Source columns a file must have: mapped ones, keep_rows ones and attribute ones."""
    cols = _expected_source_columns(src, CANONICAL[name]) + list(src.keep_rows) + [e.column for e in _attribute_sources(model, name).values()]
    return list(dict.fromkeys(cols))


def manifest_for(model: MappingFile) -> DataManifest:
    """What a mapping declares, as the manifest features and training read."""
    attributes = tuple(
        AttributeSpec(
            name=attr, table=entry.table, kind=entry.kind,
            description=entry.description or f"{entry.column} from the {entry.table} source",
            sentence=entry.sentence or (f"{attr.replace('_', ' ').capitalize()} is {{value}}" if entry.kind == "category"
                                        else f"{attr.replace('_', ' ').capitalize()} is {{value:,.4g}}"),
            risk_when=entry.risk_when or ("category" if entry.kind == "category" else "higher"),
        )
        for attr, entry in model.attributes.items()
    )
    return DataManifest(
        absent=frozenset(n for n, src in model.tables.items() if src.absent),
        churn_source=model.churn.source,
        attributes=attributes,
        usage_event_types=tuple(str(t).strip() for t in model.usage_event_types) if model.usage_event_types is not None else None,
    )


def _attribute_rows(prep: PreparedTable, model: MappingFile) -> pd.DataFrame:
    """account_attributes rows of one loaded table's good rows (empty values are left out)."""
    frames = []
    good = prep.good
    for attr, entry in _attribute_sources(model, prep.table).items():
        values = prep.attributes[attr][good].reset_index(drop=True)
        ids = prep.frame.loc[good].reset_index(drop=True)
        keep = values.notna().to_numpy()
        number = entry.kind == "number"
        frames.append(pd.DataFrame({
            "account_id": ids["account_id"][keep].to_numpy(dtype=object),
            "subscription_id": ids["subscription_id"][keep].to_numpy(dtype=object) if prep.table == "subscriptions" else None,
            "name": attr,
            "value_number": values[keep].astype("float64").to_numpy() if number else np.nan,
            "value_text": None if number else values[keep].to_numpy(dtype=object),
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ACCOUNT_ATTRIBUTES.column_names)


def _stream_table(
    engine: sa.Engine, name: str, paths: list[Path], src: TableSource, opts: Options, *, run_date: date, known: pd.Index | None,
    where: str, notes: list[str], run_id: str, now: datetime, write: bool, crm_id_field: str,
) -> StreamedTable:
    """Map, coerce and check a usage file source chunk by chunk, exactly as
    :func:`prepare_table` does for a whole table, and (``write``) append the good rows to a
    load table the final transaction copies from. The day hashes add up across chunks."""
    label = ", ".join(p.name for p in paths)
    streamed = StreamedTable(name, RawSource(pd.DataFrame(), label, "file", paths), columns=[])
    parts: list[pd.DataFrame] = []
    violations: list[pd.DataFrame] = []
    quarantine: list[pd.DataFrame] = []
    if write:
        streamed.load_table = f"load_{name}_{uuid.uuid4().hex[:12]}"
        metadata = sa.MetaData()
        sa.Table(streamed.load_table, metadata, *[sa.Column(c.name, SA_TYPES[c.kind]) for c in CANONICAL[name].columns]).create(engine)
    expected = _expected_source_columns(src, CANONICAL[name])
    try:
        for path in paths:
            for chunk in iter_file_chunks(path, opts, expected, allow_empty=src.allow_empty):
                if not streamed.columns:
                    streamed.columns = [c for c in chunk.columns if not c.startswith("_source_")]
                raw = RawSource(chunk, path.name, "file", [path])
                prep = prepare_table(name, raw, src, opts, run_date=run_date, known_accounts=known, where=where, notes=notes,
                                     crm_id_field=crm_id_field)
                streamed.rows_read += prep.rows_read
                streamed.rows_quarantined += prep.rows_quarantined
                streamed.skipped += prep.skipped
                if len(prep.violations):
                    violations.append(prep.violations[["field", "reason"]])
                    quarantine.append(_quarantine_records(prep, run_id, now))
                good = coerce(prep.frame.loc[prep.good], CANONICAL[name])
                if len(good):
                    parts.append(day_hash_parts(good))
                    streamed.features_seen |= set(good["feature"].dropna().astype(str))
                    if write:
                        replace_rows(engine, streamed.load_table, good)
    except BaseException:
        drop_load_table(engine, streamed)
        raise
    streamed.day_parts = add_day_hash_parts(parts)
    if violations:
        streamed.violations = pd.concat(violations, ignore_index=True)
    if quarantine:
        streamed.quarantine = contracts.quarantine_frame(pd.concat(quarantine, ignore_index=True))
    return streamed


def drop_load_table(engine: sa.Engine, prep: object) -> None:
    """Drop a streamed table's load table once the load committed or failed."""
    load = getattr(prep, "load_table", None)
    if load:
        drop_tables(engine, [load])


def _run(engine: sa.Engine, mapping_src: Any, run_date: date | None, max_bad_share: float | None, *, write: bool,
         crm_id_field: str = "Id") -> IngestReport:
    mapping = load_mapping(mapping_src)
    model = mapping.model
    run_date = run_date or date.today()
    now = datetime.now().replace(microsecond=0)
    run_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    label = mapping.label
    warnings: list[str] = []
    notes: list[str] = []
    mapped = {name: src for name, src in model.tables.items() if not src.absent}
    absent = [name for name in CANONICAL if name in model.tables and model.tables[name].absent]
    if model.churn.source == "churn_events" and "churn_events" not in mapped and not table_exists(engine, "churn_events"):
        raise MappingError(f"{label}: churn.source is churn_events, but tables.churn_events is not mapped and the warehouse has no "
                           "churn_events table; map it under tables.churn_events")

    # 1. read and structurally check every file, before writing anything
    staged: dict[str, RawSource] = {}
    for name, stg in model.staging.items():
        opts = mapping.options_for(stg, f"staging.{name}.options")
        staged[name] = _read_files(mapping, stg, opts, f"{label}: staging.{name}", None)
    file_tables: dict[str, RawSource] = {}
    streamed_files: dict[str, list[Path]] = {}
    for name, src in mapped.items():
        opts = mapping.options_for(src, f"tables.{name}.options")
        _constants_ok(src, CANONICAL[name], opts, label, f"tables.{name}")
        for col, value in src.defaults.items():
            _default_value(src, next(c for c in CANONICAL[name].columns if c.name == col), opts, f"{label}: tables.{name}")
        if src.kind == "file" and name in STREAMED_TABLES:  # read chunk by chunk in step 3; check the headers now
            streamed_files[name] = _resolve_files(mapping, src.files(), f"{label}: tables.{name}")
            for path in streamed_files[name]:
                _check_file_header(path, opts, _file_columns(model, name, src), allow_empty=src.allow_empty)
        elif src.kind == "file":
            file_tables[name] = _read_files(mapping, src, opts, f"{label}: tables.{name}", _file_columns(model, name, src),
                                            allow_empty=src.allow_empty)
            if not src.allow_empty:
                _not_empty(file_tables[name], name, f"{label}: tables.{name}")

    # 2. stage raw files so queries can join them
    for name, raw in {**staged, **file_tables}.items():
        _stage(engine, name, raw)

    # 3. map, coerce and check each table (accounts first: it defines the known accounts)
    prepared: list[PreparedTable] = []
    streams: list[StreamedTable] = []
    limits: dict[str, float] = {}
    known: pd.Index | None = None
    order = [t for t in CANONICAL if t in mapped]
    if "accounts" not in mapped:
        known = _known_accounts(engine)
    for name in order:
        src = mapped[name]
        opts = mapping.options_for(src, f"tables.{name}.options")
        where = f"{label}: tables.{name}"
        limits[name] = _limit(mapping, src, max_bad_share)
        if name in streamed_files:
            prep = _stream_table(engine, name, streamed_files[name], src, opts, run_date=run_date, known=known, where=where, notes=notes,
                                 run_id=run_id, now=now, write=write, crm_id_field=crm_id_field)
            streams.append(prep)
            prepared.append(prep)  # type: ignore[arg-type] - the same report interface
            for column, canonical in unmapped_lookalikes(prep.columns, src, CANONICAL[name], set(src.columns.values()) | set(src.keep_rows)):
                warnings.append(f"{prep.source.label}: column '{column}' looks like canonical '{canonical}' but is not mapped; map it under "
                                f"tables.{name}.columns or list it under tables.{name}.ignore_columns")
            if prep.rows_read == 0 and not src.allow_empty:
                drop_load_table(engine, prep)
                raise SourceError(f"{where} ({prep.source.label}): no data rows; refusing to replace '{name}' with an empty table")
            if prep.skipped:
                notes.append(f"tables.{name}: {prep.skipped} row(s) skipped by keep_rows ({', '.join(src.keep_rows)})")
            if model.usage_event_types is not None:
                unseen = [t for t in model.usage_event_types if str(t).strip() not in prep.features_seen]
                if unseen:
                    warnings.append(f"usage_event_types: {unseen} never occur in usage.feature; their features will be zero for every account")
            log.info("%s: %d rows read in chunks, %d quarantined, %d skipped", name, prep.rows_read + prep.skipped, prep.rows_quarantined, prep.skipped)
            continue
        raw = file_tables[name] if name in file_tables else _read_warehouse(engine, src, run_date, where)
        if not src.allow_empty:
            _not_empty(raw, name, where)
        attrs = _attribute_sources(model, name)
        used = set(src.columns.values()) | set(src.keep_rows) | {e.column for e in attrs.values()}
        for column, canonical in unmapped_lookalikes([str(c) for c in raw.frame.columns], src, CANONICAL[name], used):
            who = raw.label if raw.kind == "file" else f"tables.{name} ({raw.label})"
            warnings.append(f"{who}: column '{column}' looks like canonical '{canonical}' but is not mapped; map it under "
                            f"tables.{name}.columns or list it under tables.{name}.ignore_columns")
        prep = prepare_table(name, raw, src, opts, run_date=run_date, known_accounts=known if name != "accounts" else None, where=where,
                             notes=notes, attributes=attrs, crm_id_field=crm_id_field)
        prepared.append(prep)
        if name == "accounts":
            known = pd.Index(prep.frame.loc[prep.good, "account_id"].astype(str))
        if prep.skipped:
            notes.append(f"tables.{name}: {prep.skipped} row(s) skipped by keep_rows ({', '.join(src.keep_rows)})")
        if _table_checks(name):
            warnings += _run_table_checks(name, coerce(prep.frame.loc[prep.good], CANONICAL[name]))
        if name == "usage" and model.usage_event_types is not None:
            seen = set(prep.frame.loc[prep.good, "feature"].dropna().astype(str))
            unseen = [t for t in model.usage_event_types if str(t).strip() not in seen]
            if unseen:
                warnings.append(f"usage_event_types: {unseen} never occur in usage.feature; their features will be zero for every account")
        log.info("%s: %d rows read, %d quarantined, %d skipped", name, prep.rows_read + prep.skipped, prep.rows_quarantined, prep.skipped)

    quarantine = {p.table: p.quarantine if isinstance(p, StreamedTable) else _quarantine_records(p, run_id, now) for p in prepared}
    notes[:] = list(dict.fromkeys(notes))  # a streamed table notes the same date order once per chunk
    reports = []
    for p in prepared:
        failed = p.rows_read > 0 and p.rows_quarantined / p.rows_read > limits[p.table]
        reports.append(TableReport(
            table=p.table, source=p.source.label, source_kind=p.source.kind, rows_read=p.rows_read + p.skipped, rows_good=int(p.good.sum()),
            rows_loaded=0 if (failed and write) else int(p.good.sum()), rows_quarantined=p.rows_quarantined,
            top_reasons=contracts.top_reasons(p.violations), max_bad_share=limits[p.table],
            status="failed" if failed else ("loaded" if write else "valid"), rows_skipped=p.skipped, fields_cleared=len(p.cleared),
        ))
    for name in absent:
        loaded = _table_rows(engine, name)
        reports.append(TableReport(table=name, source="absent", source_kind="absent", rows_read=0, rows_good=0, rows_loaded=0,
                                   rows_quarantined=0, top_reasons=[], max_bad_share=0.0, status="absent"))
        if loaded is not None:
            verb = "would drop" if not write else "dropped"
            notes.append(f"tables.{name}: declared absent; {verb} the previously loaded table ({loaded} rows)")
    all_q = pd.concat([q for q in quarantine.values() if len(q)], ignore_index=True) if any(len(q) for q in quarantine.values()) else contracts.empty_quarantine()
    report = IngestReport("ingest" if write else "validate", run_id, run_date, label, reports, all_q, warnings, notes)
    if not write:
        return report
    try:
        return _write_load(engine, report, prepared, quarantine, absent, model, run_id, run_date, label)
    finally:
        for stream in streams:
            drop_load_table(engine, stream)


def _write_load(engine: sa.Engine, report: IngestReport, prepared: list, quarantine: dict[str, pd.DataFrame], absent: list[str],
                model: MappingFile, run_id: str, run_date: date, label: str) -> IngestReport:
    """Step 4 of a run: the manifest row, then every table in one transaction (or none)."""
    # 4. write. The manifest row is recorded first (finished_at empty: a run that dies stays
    # visible as unfinished); everything else commits in ONE transaction, or not at all.
    manifest = manifest_for(model)
    ensure_table(engine, INGEST_MANIFEST.name, pd.DataFrame(columns=INGEST_MANIFEST.column_names))
    replace_rows(engine, INGEST_MANIFEST.name, pd.DataFrame([{
        "run_id": run_id, "run_date": pd.Timestamp(run_date), "started_at": pd.Timestamp(datetime.now()), "finished_at": pd.NaT,
        "mapping": label, "config": json.dumps(manifest.to_config(), sort_keys=True),
    }]), where={"run_id": run_id})
    if not report.ok:  # quarantine explains the failure; no canonical table changes
        with engine.begin() as conn:
            for name, q in quarantine.items():
                replace_rows(conn, QUARANTINE_TABLE, q if len(q) else contracts.empty_quarantine(), where={"table_name": name})
        for t in report.tables:
            t.rows_loaded = 0
        raise ContractError(_failure_message(report), report)
    goods = [(p, t, None if isinstance(p, StreamedTable) else coerce(p.frame.loc[p.good], CANONICAL[p.table]))
             for p, t in zip(prepared, report.tables)]
    attribute_rows = [_attribute_rows(p, model) for p in prepared if not isinstance(p, StreamedTable) and _attribute_sources(model, p.table)]
    log.info("ingest %s: writing the load in one transaction", run_id)
    with engine.begin() as conn:
        for name in absent:
            for table in (name, *DERIVED_FROM.get(name, ())):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))  # churnflow's own table names, never input
            if table_exists(conn, QUARANTINE_TABLE):
                q_table = sa.table(QUARANTINE_TABLE, sa.column("table_name"))
                conn.execute(q_table.delete().where(q_table.c.table_name == name))
        for p, t, good in goods:
            if isinstance(p, StreamedTable):  # copied in SQL from the load table, only the changed days
                if t.rows_good:
                    replace_usage_by_day_from(conn, p.load_table, p.day_parts)
                else:  # an accepted empty extract (allow_empty): every day is gone
                    replace_usage_by_day(conn, coerce(pd.DataFrame(columns=CANONICAL[p.table].column_names), CANONICAL[p.table]))
                t.rows_loaded = t.rows_good
            elif p.table == "usage":  # only the days that changed since the last load are rewritten
                replace_usage_by_day(conn, good)
                t.rows_loaded = len(good)
            else:
                # versions known from the end of the run date (the extract may hold that whole day):
                # features as of D read only what was loaded by D (churnflow.history)
                t.rows_loaded = replace_rows(conn, p.table, good, replace_all=True, loaded_at=_end_of(run_date))
            log.info("ingest %s: %s written (%d rows), not committed yet", run_id, p.table, t.rows_loaded)
        for name, q in quarantine.items():
            replace_rows(conn, QUARANTINE_TABLE, q if len(q) else contracts.empty_quarantine(), where={"table_name": name})
        if model.attributes or table_exists(conn, ACCOUNT_ATTRIBUTES.name):
            rows = pd.concat([a for a in attribute_rows if len(a)], ignore_index=True) if any(len(a) for a in attribute_rows) else None
            replace_rows(conn, ACCOUNT_ATTRIBUTES.name, coerce(rows if rows is not None else pd.DataFrame(columns=ACCOUNT_ATTRIBUTES.column_names),
                                                               ACCOUNT_ATTRIBUTES), replace_all=True, loaded_at=_end_of(run_date))
        m = sa.table(INGEST_MANIFEST.name, sa.column("run_id"), sa.column("finished_at"))
        conn.execute(m.update().where(m.c.run_id == run_id).values(finished_at=datetime.now()))
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
                f"table '{t.table}' ({t.source}): {t.rows_quarantined} of {t.rows_read - t.rows_skipped} rows ({t.bad_share:.1%}) broke its contract, "
                f"over the limit of {t.max_bad_share:.1%}; top reasons: {reasons}"
            )
    return (
        "ingest failed, nothing was loaded:\n  " + "\n  ".join(lines)
        + f"\nThe rejected rows are in the '{QUARANTINE_TABLE}' table (run_id {report.run_id})."
    )

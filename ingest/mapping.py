"""The mapping file: the language that says how your exports become the canonical tables.

A mapping file (YAML, read with ``yaml.safe_load`` and validated with pydantic) says where
each canonical table's rows come from -- a warehouse ``table:``, a ``query:`` in the
warehouse's own dialect, or ``file:`` CSV/Parquet path(s) -- or that it is ``absent``, and
how source columns and values map to canonical ones (``columns``, ``constants``,
``defaults``, ``recode``, ``keep_rows``), plus ``churn:``, ``attributes:`` and
``usage_event_types:``. The models below are the language's one declaration: the parser
accepts what they declare, and docs/mapping.md is generated from them
(:func:`mapping_markdown`). Reading, checking and loading the data: :mod:`ingest.load`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnflow.errors import ChurnflowError
from churnflow.schema import CANONICAL
from ingest.contracts import DEFAULT_MAX_BAD_SHARE

STAGING_PREFIX = "staging_"
DEFAULT_NULLS = ["", "NULL", "null", "None", "NaN", "nan", "N/A", "n/a", "#N/A"]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# ============================================================================ errors


class IngestError(ChurnflowError):
    """Base class of ingest failures."""


class MappingError(IngestError):
    """The mapping file is invalid (the message names the file and the key)."""


class SourceError(IngestError):
    """A structural problem with a source: fails fast, naming the file/table and what was expected."""


class AmbiguousDateError(SourceError):
    """A date column reads both as DD/MM and MM/DD and the mapping did not say which."""


class QueryError(MappingError):
    """A mapping ``query:`` is not one read-only SELECT."""


class ContractError(IngestError):
    """Too many rows of a table broke its contract; nothing was loaded. ``report`` has the details."""

    def __init__(self, message: str, report: "IngestReport") -> None:
        super().__init__(message)
        self.report = report


# ============================================================================ mapping model


class Options(BaseModel):
    """File-reading and value-parsing options: top-level ``options:`` are the defaults for
    every source; a table or staging entry overrides them under its own ``options:``."""

    model_config = ConfigDict(extra="forbid")

    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field delimiter: `,` (default), `;`, `\\t` or `|`.")
    encoding: str = Field("utf-8", description="Text encoding of CSV files, e.g. `latin-1` or `cp1252` for legacy exports (a UTF-8 BOM is accepted).")
    quotechar: str = Field('"', min_length=1, max_length=1, description="Character that quotes CSV fields containing the delimiter or line breaks.")
    dayfirst: bool | None = Field(
        None,
        description="Order of slash/dot/dash dates: `true` = DD/MM/YYYY, `false` = MM/DD/YYYY. Not declared (default): "
        "the order is read from the column's own values when some prove it (a first part above 12 means day-first); "
        "a column whose dates read both ways (03/11/2026) is refused until you declare it.",
    )
    date_format: str | None = Field(None, description="Explicit strptime format for every date/timestamp column of the source, e.g. `%d.%m.%Y %H:%M`; only if your dates are in none of the common formats.")
    epoch_unit: Literal["s", "ms"] = Field("s", description="Unit of all-digit (epoch) timestamps: `s` seconds or `ms` milliseconds.")
    decimal_comma: bool = Field(False, description="Numbers use a decimal comma (`1.234,50`).")
    thousands: str | None = Field(None, max_length=1, description="Thousands separator; default `,` (`.` with decimal_comma). Spaces, apostrophes and a leading/trailing currency sign are always accepted.")
    null_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NULLS), description="Cell texts read as empty (replaces the default list: " + ", ".join(repr(v) for v in DEFAULT_NULLS) + ").")
    true_values: list[str] = Field(default_factory=list, description="Extra words read as true, besides true/t/yes/y/1 in any case.")
    false_values: list[str] = Field(default_factory=list, description="Extra words read as false, besides false/f/no/n/0 in any case.")


class _SourceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str | list[str] | None = Field(None, description="CSV or Parquet path, glob or list of them, relative to the mapping file.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options for this source only (see Options), overriding the top-level ones.")

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
    """Where one canonical table's rows come from, and how its columns and values map."""

    absent: bool = Field(False, description="The source does not exist for you (`tables.surveys: absent` is short for this). "
                         "Ingest drops a previously loaded copy and records the absence; features and training then do without it.")
    table: str | None = Field(None, description="A table already in the warehouse, optionally schema-qualified.")
    query: str | None = Field(None, description="One SELECT (or WITH ... SELECT) in the warehouse's dialect; `:run_date` is bound if used. "
                              "It runs read-only: any other statement is refused.")
    columns: dict[str, str] = Field(default_factory=dict, description="canonical column: source column. Unlisted canonical columns match a source column of the same name.")
    constants: dict[str, Any] = Field(default_factory=dict, description="canonical column: the value every row gets (the source is not read for it).")
    defaults: dict[str, Any] = Field(default_factory=dict, description="canonical column: the value used where the source is empty.")
    recode: dict[str, dict[Any, Any]] = Field(default_factory=dict, description="canonical column: {source value: canonical value}. Matched after trimming, "
                                              "ignoring case; unlisted values pass through to the contract checks (which quarantine values "
                                              "outside an enumeration, naming the allowed ones).")
    keep_rows: dict[str, list[Any]] = Field(default_factory=dict, description="source column: values to keep (trimmed, any case). Other rows are skipped "
                                            "(counted as skipped, not quarantined), e.g. `{status: [churned, cancelled]}`.")
    ignore_columns: list[str] = Field(default_factory=list, description="Source columns you leave unmapped on purpose: silences the "
                                      "'looks like canonical ... but is not mapped' warning.")
    allow_empty: bool = Field(False, description="Accept an empty extract (the table is loaded with 0 rows). By default an empty source is an "
                              "error, because loading it would wipe the table.")
    max_bad_share: float | None = Field(None, ge=0, le=1, description="This table fails the run when more than this share of its rows is bad (overrides the top level).")

    @model_validator(mode="before")
    @classmethod
    def _absent_shorthand(cls, data: Any) -> Any:
        if isinstance(data, str) and data.strip().lower() == "absent":
            return {"absent": True}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "TableSource":
        if self.absent:
            extra = sorted(k for k in self.model_fields_set if k not in ("absent",))
            if extra:
                raise ValueError(f"an absent table takes no other keys (got {extra})")
            return self
        given = [k for k in ("table", "query", "file") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of 'table', 'query' or 'file', or 'absent' (got {given or 'none'})")
        if self.table is not None and not all(_IDENT.match(p) for p in self.table.split(".")):
            raise ValueError(f"'table' must be a table name, optionally schema-qualified (letters, digits, _): {self.table!r}")
        for col, values in self.keep_rows.items():
            if not values:
                raise ValueError(f"keep_rows.{col}: list at least one value to keep")
        return self

    @property
    def kind(self) -> str:
        return "absent" if self.absent else "file" if self.file else "query" if self.query else "table"


class ChurnSection(BaseModel):
    """Where churn comes from."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["coverage", "churn_events"] = Field(
        "coverage",
        description="`coverage` (default): churn is derived from subscriptions (coverage ends and nothing renews within the grace period). "
        "`churn_events`: churn is what your system of record says, loaded into the `churn_events` table.",
    )


class AttributeEntry(BaseModel):
    """An extra account or subscription column used as a model feature."""

    model_config = ConfigDict(extra="forbid")

    table: Literal["accounts", "subscriptions"] = Field(description="The mapped table whose source holds the column: `accounts` or `subscriptions`.")
    column: str = Field(min_length=1, description="The source column (as named in that table's file, query or table).")
    kind: Literal["category", "number"] = Field(description="`category` (text values, learned as categories) or `number` (parsed like any number; a value that does not parse quarantines the row).")
    risk_when: Literal["higher", "lower", "category"] | None = Field(
        None, description="For numbers: `higher` (default) or `lower` values read as risk in explanations. Categories have no direction (`category`).")
    sentence: str | None = Field(None, description="How an explanation says it, with `{value}` (format specs allowed, e.g. `{value:.0f}`). Checked with a sample value.")
    description: str | None = Field(None, description="What the attribute means (shown in the feature docs).")

    @model_validator(mode="after")
    def _direction(self) -> "AttributeEntry":
        if self.kind == "category" and self.risk_when not in (None, "category"):
            raise ValueError("risk_when applies to number attributes; a category has no direction")
        if self.kind == "number" and self.risk_when == "category":
            raise ValueError("risk_when of a number is 'higher' or 'lower'")
        return self


class MappingFile(BaseModel):
    """The whole mapping file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(1, description="Mapping format version: 1.")
    options: dict[str, Any] = Field(default_factory=dict, description="Default options for every source (see Options).")
    max_bad_share: float | None = Field(None, ge=0, le=1, description=f"Fail the run when more than this share of a table's rows is bad (default {DEFAULT_MAX_BAD_SHARE}).")
    staging: dict[str, StagingSource] = Field(default_factory=dict, description="name: a file loaded raw into `staging_<name>` for queries to join.")
    tables: dict[str, TableSource] = Field(description="canonical table: its source (or `absent`). Tables not listed are left alone.")
    churn: ChurnSection = Field(default_factory=ChurnSection, description="Where churn comes from (see Churn).")
    attributes: dict[str, AttributeEntry] = Field(default_factory=dict, description="name: an extra account/subscription column used as a model feature (see Attributes).")
    usage_event_types: list[str] | None = Field(None, description="Usage `feature` values that get their own usage features. Default: the most frequent types, learned at training.")

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
            for section in ("columns", "constants", "defaults", "recode"):
                for col in getattr(src, section):
                    if col not in known:
                        raise ValueError(f"tables.{name}.{section}.{col}: not a column of '{name}'; expected one of {sorted(known)}")
            both = set(src.constants) & (set(src.columns) | set(src.defaults))
            if both:
                raise ValueError(f"tables.{name}.constants: {sorted(both)} also mapped under columns/defaults; a constant replaces the source")
            recoded_constants = set(src.recode) & set(src.constants)
            if recoded_constants:
                raise ValueError(f"tables.{name}.recode: {sorted(recoded_constants)} are constants; recode applies to source values")
        if "accounts" in self.tables and self.tables["accounts"].absent:
            raise ValueError("tables.accounts: accounts cannot be absent (every other table refers to it)")
        if self.churn.source == "churn_events" and "churn_events" in self.tables and self.tables["churn_events"].absent:
            raise ValueError("churn.source: churn_events, but tables.churn_events is declared absent")
        for attr, entry in self.attributes.items():
            if not _ATTRIBUTE_NAME.match(attr):
                raise ValueError(f"attributes.{attr}: attribute names are lower-case identifiers (a-z, 0-9, _), starting with a letter")
            src = self.tables.get(entry.table)
            if src is None or src.absent:
                raise ValueError(f"attributes.{attr}.table: '{entry.table}' is not mapped under tables (attributes are read from a mapped source)")
            sample: object = 1234.5 if entry.kind == "number" else "sample"
            if entry.sentence is not None:
                problem = _sentence_problem(entry.sentence, sample)
                if problem:
                    raise ValueError(f"attributes.{attr}.sentence: {problem}")
        if self.usage_event_types is not None:
            types = [str(t).strip() for t in self.usage_event_types]
            if not types or any(not t for t in types) or len(set(types)) != len(types):
                raise ValueError("usage_event_types: list distinct, non-empty event types (or leave it out to learn them)")
            if "usage" in self.tables and self.tables["usage"].absent:
                raise ValueError("usage_event_types: given, but tables.usage is declared absent")
        return self


def _sentence_problem(sentence: str, sample: object) -> str | None:
    """Why ``sentence`` cannot be formatted with ``value=sample`` (None when it can)."""
    try:
        sentence.format(value=sample)
    except (KeyError, IndexError) as exc:
        return f"unknown placeholder {exc}; use {{value}}"
    except ValueError as exc:
        return f"cannot format the sample value {sample!r}: {exc}"
    return None


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


# ============================================================================ docs/mapping.md


def _type_text(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"\btyping\.", "", text)
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = re.sub(r"\bingest\.mapping\.", "", text)  # the models' own module
    text = re.sub(r"^Optional\[(.*)\]$", r"\1 | None", text)
    return text.replace("NoneType", "None")


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return f"`{json.dumps(value.model_dump())}`"
        return f"`{json.dumps(value)}`" if value != [] and value != {} else "empty"
    return f"`{json.dumps(info.default)}`" if info.default is not None else "-"


def _fields_table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        meaning = (info.description or "").replace("|", "\\|").replace("\n", " ")
        kind = _type_text(info.annotation).replace("|", "\\|")
        lines.append(f"| `{name}` | `{kind}` | {_default_text(info)} | {meaning} |")
    return lines + [""]


def mapping_markdown() -> str:
    """The text of docs/mapping.md, generated from the mapping models' Field descriptions:
    the page can never list a key the parser does not accept, or miss one it does."""
    lines = [
        "# The mapping file",
        "",
        "Generated from the mapping models in `ingest/mapping.py` by `churnflow docs`; do not edit by hand.",
        "",
        "A mapping file (YAML) tells `churnflow validate` and `churnflow ingest` where each canonical table",
        "([data model](data-model.md)) comes from and how your columns and values map onto it. It is read",
        "with a safe YAML loader and validated strictly: an unknown key is an error naming the file and the key.",
        "See the README section \"Bring your own data\" for a walk-through and `examples/foreign_export/sources.yaml`",
        "for a complete example. Each ingest records what its mapping declares (absent tables, churn source,",
        "attributes, usage event types) in the `ingest_manifest` table; the newest finished run's declarations",
        "are the ones features and training use, so a mapping states all of them every time.",
        "",
        "```yaml",
        "version: 1",
        "options: {dayfirst: true, thousands: ','}",
        "max_bad_share: 0.05",
        "churn: {source: churn_events}          # default: coverage (derived from subscriptions)",
        "tables:",
        "  accounts:",
        "    file: customers.csv",
        "    columns: {account_id: CustomerID, name: Company, segment: Tier, created_at: Since}",
        "    ignore_columns: [closedat_legacy]",
        "  surveys: absent                      # you have no surveys",
        "  tickets:",
        "    file: tickets.csv",
        "    allow_empty: true",
        "    recode: {priority: {medium: normal, p1: urgent}}",
        "  churn_events:",
        "    file: customers.csv",
        "    columns: {account_id: CustomerID, churn_date: CancelledOn}",
        "    keep_rows: {Status: [churned, cancelled]}",
        "attributes:",
        "  acquisition_channel: {table: accounts, column: Channel, kind: category, sentence: \"Acquired through {value}\"}",
        "  age_years: {table: accounts, column: Age, kind: number, risk_when: lower, sentence: \"Account holder is {value:.0f} years old\"}",
        "usage_event_types: [like, dislike, add_friend]",
        "```",
        "",
        "## Top level",
        "",
        *_fields_table(MappingFile),
        "## Tables (`tables.<canonical table>`)",
        "",
        "Each canonical table takes exactly one source (`file`, `table` or `query`), or is declared `absent`.",
        "Tables not listed are left as they are in the warehouse. Every file is also staged raw into",
        "`staging_<table>` so a `query:` can join it.",
        "",
        *_fields_table(TableSource),
        "## Options (`options:`, `tables.<name>.options:`, `staging.<name>.options:`)",
        "",
        *_fields_table(Options),
        "Dates: ISO 8601 (offsets converted to UTC), DD/MM/YYYY or MM/DD/YYYY (separators `/ . -`, optional time),",
        "or epoch seconds. When `dayfirst` is not declared and a date column holds values like `03/11/2026` that",
        "read both ways, the run is refused with the file, column, row and value; when some value proves the",
        "order (`30/11/2026`), it is used and the report's notes say so. ISO and slash dates may mix in one column.",
        "",
        "## Staging (`staging.<name>`)",
        "",
        *_fields_table(StagingSource),
        "## Churn (`churn:`)",
        "",
        *_fields_table(ChurnSection),
        "With `churn_events`, map `tables.churn_events` (account_id, churn_date, optional reason and",
        "reactivated_at), often from the customers export with `keep_rows` selecting the churned statuses.",
        "",
        "## Attributes (`attributes.<name>`)",
        "",
        "Extra columns of the accounts or subscriptions source that become model features. Values are",
        "written to the `account_attributes` table (one row per account, or subscription, and attribute);",
        "the declaration is recorded in the `ingest_manifest` table for features and training.",
        "",
        *_fields_table(AttributeEntry),
        "## What the run checks and reports",
        "",
        "- A mapped source column that does not exist is an error. An unmapped source column whose name looks",
        "  like a canonical column nothing maps (`closedat`, `Closed_At`, `closed at` for `closed_at`) is a warning;",
        "  map it or list it under `ignore_columns`.",
        "- `recode` runs before the contract checks: values still outside an enumeration are quarantined with the",
        "  allowed values in the reason. Rows left out by `keep_rows` are counted as skipped, not quarantined.",
        "- When the setting `sf_account_match_field` is `Id` (the default), `accounts.crm_account_id` values that are",
        "  not Salesforce Account Ids (15 or 18 letters and digits, key prefix `001`, matching case-safe suffix) are",
        "  cleared and recorded in `quarantine`; the account itself loads (its usage and tickets still count).",
        "- A `query:` must be one SELECT (or WITH ... SELECT); anything else is refused before it runs, and",
        "  queries run in a transaction that is rolled back.",
        "- `ingest` commits every table, the quarantine, the attributes and the manifest in one transaction:",
        "  a run that fails or dies leaves the previous load whole.",
        "",
    ]
    return "\n".join(lines)

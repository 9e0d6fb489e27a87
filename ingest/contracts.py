"""Data contracts for the canonical tables, and the quarantine they feed.

A contract is derived from the declarations in :mod:`churnflow.schema` (columns, kinds,
required flags, keys) plus the value rules declared once below (:data:`RANGES`,
:data:`ALLOWED`, :data:`ORDERED`, :data:`CONDITIONAL_RANGES`). :func:`check` applies it to an
already-coerced frame with vectorised pandas operations (no per-row Python), so it scales
to millions of usage rows, and returns one violation record per (row, broken rule).

Rules, in the order they are evaluated (every rule runs on every row; a row that breaks
several is reported once per rule but counted once):

* required columns are non-null (after mapping defaults and the schema's defaults);
* enumerations (``kind``, ``priority``) after lower-casing and trimming;
* numeric ranges, including score ranges that depend on the survey ``kind``;
* ordering between columns where both are present (``end_date > start_date``,
  ``closed_at >= opened_at``, ``reactivated_at >= churn_date``);
* no timestamp after the run date (timestamp columns only: a subscription's ``end_date``
  is a *date* and is legitimately in the future);
* referential integrity: ``account_id`` must be a known account;
* key uniqueness, last: among rows that pass every other rule, the first occurrence of a
  key (in source order) is kept and later ones are quarantined as duplicates.

Values that could not be parsed as their column's kind are reported by the coercion step
(:mod:`ingest.load`) in the same record format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from collections.abc import Callable
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from churnflow.schema import CANONICAL, QUARANTINE, TableSpec

# ---------------------------------------------------------------------------- declarations

RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    # (table, column): (minimum, maximum), inclusive; None = unbounded.
    ("subscriptions", "seats"): (0, None),
    ("subscriptions", "arr"): (0, None),
    ("usage", "quantity"): (0, None),
    ("usage", "duration_s"): (0, None),
    ("usage", "errors"): (0, None),
    ("tickets", "first_response_minutes"): (0, None),
    ("tickets", "csat"): (1, 5),
}
"""Inclusive value ranges per (table, column)."""

SCORE_SCALES: dict[str, tuple[float, float]] = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}
"""Survey score scale per kind."""

CONDITIONAL_RANGES: dict[tuple[str, str], tuple[str, dict[str, tuple[float, float]]]] = {
    # (table, column): (the column whose value selects the range, {value: (min, max)})
    ("surveys", "score"): ("kind", SCORE_SCALES),
}

ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("surveys", "kind"): frozenset(SCORE_SCALES),
    ("tickets", "priority"): frozenset({"low", "normal", "high", "urgent"}),
    ("subscriptions", "billing_period"): frozenset({"month", "quarter", "year"}),
}
"""Enumerated columns; incoming values are trimmed and lower-cased before the check."""

ORDERED: dict[str, list[tuple[str, str, bool]]] = {
    # table: [(later column, earlier column, strict)] -- later > earlier (strict) or >=; checked
    # only where both are present (an open-ended subscription has no end_date).
    "subscriptions": [("end_date", "start_date", True)],
    "tickets": [("closed_at", "opened_at", False)],
    "churn_events": [("reactivated_at", "churn_date", False)],
}

REFERENCES: dict[str, str] = {
    # table: column that must name a known account
    "subscriptions": "account_id",
    "usage": "account_id",
    "tickets": "account_id",
    "surveys": "account_id",
    "churn_events": "account_id",
}

DEFAULT_MAX_BAD_SHARE = 0.05
"""A table whose share of quarantined rows exceeds this fails the run."""

VIOLATION_COLUMNS = ["row", "field", "value", "reason"]


def _fmt(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


@dataclass(frozen=True)
class Contract:
    """Everything checked for one canonical table."""

    table: str
    spec: TableSpec
    required: tuple[str, ...]
    key: tuple[str, ...]
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    conditional_ranges: dict[str, tuple[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    allowed: dict[str, frozenset[str]] = field(default_factory=dict)
    ordered: tuple[tuple[str, str, bool], ...] = ()
    reference: str | None = None
    timestamps: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """The rules as sentences (for docs and ``--help`` text)."""
        lines = [f"required: {', '.join(self.required)}"]
        if self.key:
            lines.append(f"unique key: {', '.join(self.key)} (first occurrence kept)")
        for col, (lo, hi) in self.ranges.items():
            lines.append(f"{col} in [{_fmt(lo)}, {_fmt(hi) or 'inf'}]")
        for col, (by, scales) in self.conditional_ranges.items():
            lines.append(f"{col} by {by}: " + ", ".join(f"{k} {_fmt(a)}-{_fmt(b)}" for k, (a, b) in scales.items()))
        for col, values in self.allowed.items():
            lines.append(f"{col} in {{{', '.join(sorted(values))}}}")
        for later, earlier, strict in self.ordered:
            lines.append(f"{later} {'>' if strict else '>='} {earlier}")
        if self.reference:
            lines.append(f"{self.reference} references a known account")
        if self.timestamps:
            lines.append(f"not after the run date: {', '.join(self.timestamps)}")
        return lines


def contract_for(table: str) -> Contract:
    """The contract of a canonical table, from schema.py plus the rules above."""
    if table not in CANONICAL:
        raise KeyError(f"'{table}' is not a canonical table; expected one of {sorted(CANONICAL)}")
    spec = CANONICAL[table]
    return Contract(
        table=table,
        spec=spec,
        required=tuple(c.name for c in spec.columns if c.required),
        key=spec.key,
        ranges={c: r for (t, c), r in RANGES.items() if t == table},
        conditional_ranges={c: r for (t, c), r in CONDITIONAL_RANGES.items() if t == table},
        allowed={c: v for (t, c), v in ALLOWED.items() if t == table},
        ordered=tuple(ORDERED.get(table, ())),
        reference=REFERENCES.get(table),
        timestamps=tuple(c.name for c in spec.columns if c.kind == "timestamp"),
    )


CONTRACTS: dict[str, Contract] = {name: contract_for(name) for name in CANONICAL}


# ---------------------------------------------------------------------------- checking


def violations_frame(rows: np.ndarray, field_name: str, values: pd.Series | np.ndarray | None, reason: str) -> pd.DataFrame:
    """Violation records for positional ``rows`` (values as text; None stays None)."""
    if values is None:
        text = np.full(len(rows), None, dtype=object)
    else:
        vals = pd.Series(values.iloc[rows].to_numpy(dtype=object) if isinstance(values, pd.Series) else np.asarray(values, dtype=object)[rows])
        text = vals.map(_as_text).to_numpy(dtype=object)
    return pd.DataFrame({"row": rows.astype(np.int64), "field": field_name, "value": text, "reason": reason})


def _as_text(v: object) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, (pd.Timestamp, datetime)):
        ts = pd.Timestamp(v)
        return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat(sep=" ")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def normalise_enums(frame: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Trim and lower-case enumerated columns in place (``High`` means ``high``)."""
    for col in contract.allowed:
        if col in frame.columns:
            s = frame[col]
            frame[col] = s.where(s.isna(), s.astype("string").str.strip().str.lower().astype(object))
    return frame


def check(
    frame: pd.DataFrame,
    contract: Contract,
    *,
    run_date: date,
    known_accounts: Iterable[str] | pd.Index | None = None,
    exclude: np.ndarray | None = None,
) -> pd.DataFrame:
    """Violations of ``contract`` in a coerced frame, one record per (row, rule).

    ``row`` is the positional row index in ``frame``. ``known_accounts`` is the set of valid
    account ids (None skips the reference check, e.g. for the accounts table itself).
    ``exclude`` marks rows already rejected (e.g. unparseable values): they take no part
    in the duplicate check, so a bad first copy does not shadow a good later one.
    """
    n = len(frame)
    out: list[pd.DataFrame] = []

    def add(mask: np.ndarray, col: str, reason: str, values: pd.Series | None = None) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            out.append(violations_frame(rows, col, frame[col] if values is None else values, reason))

    for col in contract.required:
        add(frame[col].isna().to_numpy(), col, f"missing required {col}", values=pd.Series([None] * n, dtype=object))

    for col, values in contract.allowed.items():
        if col not in frame.columns:  # an optional column the frame does not carry
            continue
        s = frame[col]
        add((s.notna() & ~s.isin(values)).to_numpy(), col, f"{col} not one of {', '.join(sorted(values))}")

    for col, (lo, hi) in contract.ranges.items():
        s = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        bad = np.zeros(n, dtype=bool)
        if lo is not None:
            bad |= (s < lo).to_numpy()
        if hi is not None:
            bad |= (s > hi).to_numpy()
        label = f"{col} out of range {_fmt(lo)}-{_fmt(hi)}" if hi is not None else f"{col} below {_fmt(lo)}"
        add(bad, col, label)

    for col, (by, scales) in contract.conditional_ranges.items():
        s = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        for value, (lo, hi) in scales.items():
            sel = (frame[by] == value).to_numpy()
            bad = sel & ((s < lo) | (s > hi)).to_numpy()
            add(bad, col, f"{col} out of range {_fmt(lo)}-{_fmt(hi)} for {by}={value}")

    for later, earlier, strict in contract.ordered:
        a, b = frame[later], frame[earlier]
        both = (a.notna() & b.notna()).to_numpy()
        cmp = (a <= b) if strict else (a < b)
        add(both & cmp.fillna(False).to_numpy(dtype=bool), later, f"{later} {'not after' if strict else 'before'} {earlier}")

    limit = pd.Timestamp(run_date) + pd.Timedelta(days=1)
    for col in contract.timestamps:
        s = frame[col]
        add((s >= limit).fillna(False).to_numpy(dtype=bool), col, f"{col} after the run date {run_date.isoformat()}")

    if contract.reference and known_accounts is not None:
        col = contract.reference
        known = known_accounts if isinstance(known_accounts, pd.Index) else pd.Index(list(known_accounts))
        s = frame[col]
        add((s.notna() & ~s.isin(known)).to_numpy(), col, f"unknown {col}")

    violations = pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=VIOLATION_COLUMNS)

    if contract.key and n:
        rejected = np.zeros(n, dtype=bool)
        rejected[violations["row"].to_numpy(dtype=np.int64)] = True
        if exclude is not None:
            rejected |= exclude
        keys = frame.loc[~rejected, list(contract.key)]
        dup = keys.duplicated(keep="first")
        if dup.any():
            rows = np.flatnonzero(~rejected)[dup.to_numpy()]
            key_col = contract.key[0]
            violations = pd.concat(
                [violations, violations_frame(rows, key_col, frame[key_col], f"duplicate {'/'.join(contract.key)} (first occurrence kept)")],
                ignore_index=True,
            )
    return violations.astype({"row": np.int64}) if len(violations) else violations


# ---------------------------------------------------------------------------- quarantine

QUARANTINE_TABLE = QUARANTINE.name
QUARANTINE_COLUMNS = QUARANTINE.column_names
"""Quarantine records: one per (rejected row, broken rule).

``source`` is the file name, ``query`` or the source table; ``source_row`` is the 1-based
data row of a file (the first row after the header is 1) or of the query/table result;
``source_key`` the row's key value(s) when the table has a key. The table is replaced per
canonical table on every ingest, so it always shows the rejects of the latest load.
"""


def empty_quarantine() -> pd.DataFrame:
    return quarantine_frame(pd.DataFrame(columns=QUARANTINE_COLUMNS))


def quarantine_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Quarantine records with stable dtypes (so the warehouse table gets stable types)."""
    out = pd.DataFrame(index=frame.index)
    for col in QUARANTINE_COLUMNS:
        s = frame[col] if col in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        if col == "source_row":
            out[col] = pd.to_numeric(s).astype("Int64")
        elif col == "quarantined_at":
            out[col] = pd.to_datetime(s).astype("datetime64[ns]")
        else:
            out[col] = s.astype(object).where(s.notna(), None)
    return out.reset_index(drop=True)


def top_reasons(violations: pd.DataFrame, n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` most frequent reasons with their counts, most frequent first."""
    if violations.empty:
        return []
    counts = violations["reason"].value_counts()
    return [(str(k), int(v)) for k, v in counts.head(n).items()]


# ---------------------------------------------------------------------------- table checks
# Problems the row rules cannot express, found in a whole table: warnings, never rejections.
# Here, in the ingest, so every ingest and validate runs them whatever else is imported.


_MIN_ROWS = 5  # below this many rows a pattern is not evidence


def subscription_leak_warnings(frame: pd.DataFrame, run_date: date) -> list[str]:
    """Warnings for subscription columns that look like outcomes rather than terms.

    A column filled in *because* the customer left tells the model who left: labels would be
    right, features leak, and the model looks great on history and fails live. Each warning
    names the column and the pattern; none of them stops an ingest (the data may be honest).
    ``frame`` holds canonical subscription columns (missing ones are skipped).
    """
    warnings: list[str] = []
    n = len(frame)
    if n < _MIN_ROWS:
        return warnings
    run = pd.Timestamp(run_date)
    end = pd.to_datetime(frame["end_date"]) if "end_date" in frame else pd.Series(pd.NaT, index=frame.index)
    cancelled = pd.to_datetime(frame["cancelled_at"]) if "cancelled_at" in frame else pd.Series(pd.NaT, index=frame.index)
    has_end, is_cancelled = end.notna(), cancelled.notna()

    if _MIN_ROWS <= has_end.sum() and (~has_end).mean() >= 0.5 and (end[has_end] <= run).all():
        warnings.append(
            f"subscriptions.end_date: set on only {int(has_end.sum())} of {n} rows and every one is on or before the run date "
            f"{run_date}: it looks like the date customers left, not the contractual end of a term. Map it to cancelled_at "
            "(or a churn_events source), and leave end_date empty for open-ended subscriptions."
        )
    if is_cancelled.mean() > 0.5:
        warnings.append(
            f"subscriptions.cancelled_at: set on {is_cancelled.mean():.0%} of {n} rows: if this is a status-change or "
            "last-updated timestamp rather than when a cancellation was recorded, every subscription looks cancelled."
        )
    both = has_end & is_cancelled
    if both.sum() >= _MIN_ROWS:
        rewritten = end[both] <= cancelled[both].dt.normalize() + pd.Timedelta(days=1)
        if rewritten.mean() >= 0.9:
            warnings.append(
                f"subscriptions.end_date: on {rewritten.mean():.0%} of the {int(both.sum())} cancelled rows it equals the "
                "cancellation day: it looks rewritten when the customer cancelled. end_date must be the end of the term as signed."
            )
    if "auto_renew" in frame:
        auto = frame["auto_renew"].astype("boolean")
        off_cancelled = (auto[is_cancelled] == False).mean() if is_cancelled.sum() else np.nan  # noqa: E712
        off_live = (auto[~is_cancelled] == False).mean() if (~is_cancelled).sum() else np.nan  # noqa: E712
        if is_cancelled.sum() >= _MIN_ROWS and (~is_cancelled).sum() >= _MIN_ROWS and off_cancelled >= 0.9 and off_live <= 0.02:
            warnings.append(
                f"subscriptions.auto_renew: false on {off_cancelled:.0%} of cancelled rows and {off_live:.0%} of the others: it "
                "looks switched off by the cancellation. Map the flag as signed (its value when the term began)."
            )
    if "renewal_date" in frame and "billing_period" in frame:
        stated = pd.to_datetime(frame["renewal_date"]).notna()
        if stated.sum() >= _MIN_ROWS and frame.loc[stated, "billing_period"].isna().mean() > 0.5:
            warnings.append(
                "subscriptions.renewal_date: mapped without billing_period on most rows: for past dates the exported renewal "
                "date is used as is, and an export that froze it when customers left would leak. Map billing_period too."
            )
    return warnings


def subscriptions_table_check(frame: pd.DataFrame) -> list[str]:
    """:func:`subscription_leak_warnings` as a table check of every ingest (it receives only the rows).

    The run date is today, or the day after the newest start or cancellation in the rows if
    that is later: an export cannot be older than its own newest row."""
    stamps = [pd.to_datetime(frame[c]).max() for c in ("start_date", "cancelled_at") if c in frame]
    run_date = max([date.today(), *[s.date() + timedelta(days=1) for s in stamps if not pd.isna(s)]])
    return [w.removeprefix("subscriptions.") for w in subscription_leak_warnings(frame, run_date)]


TableCheck = Callable[[pd.DataFrame], list[str]]

TABLE_CHECKS: dict[str, tuple[TableCheck, ...]] = {"subscriptions": (subscriptions_table_check,)}
"""The ingest's own table checks per canonical table (more can be registered: ``ingest.load.register_table_check``)."""

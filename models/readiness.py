"""Readiness: can this warehouse support a churn model, and with which settings?

``churnflow profile`` answers before anyone trains: how much history each source has,
how many accounts each covers, how subscriptions are billed, how many churn events happen
per month, and, for monthly and weekly snapshots at the configured horizon, how many
churned accounts the trainer's fit / calibration / holdout slices would get. It ends with
a verdict ("ready", or "not ready: <cause>; <fix>") and suggested settings.

Spans and coverage are SQL aggregates in the warehouse; churners come from the same label
function and the same split (``models.split.plan_split``) the trainer uses, so the profile
and a refusal of ``train`` always agree.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import date

import pandas as pd
import sqlalchemy as sa

from churnflow.manifest import available_tables, read_manifest
from churnflow.settings import Settings
from churnflow.warehouse import read_sql
from features.labels import data_window, labels_for_dates, observation_end
from models.split import SLICES, InsufficientDataError, SplitPlan, churner_shortfalls, matured_dates, plan_split, slice_churners

# Each source's event timestamp (a fixed list: table and column names are never user input).
SOURCE_TIME = {"usage": "occurred_at", "tickets": "opened_at", "surveys": "submitted_at", "subscriptions": "start_date"}
CADENCES = ("monthly", "weekly")
# Horizons tried when the configured one cannot give enough churners (nearest first).
CANDIDATE_HORIZONS = (30, 60, 90, 120, 180)


@dataclass
class SourceProfile:
    table: str
    present: bool
    rows: int = 0
    first: str | None = None
    last: str | None = None
    accounts: int = 0  # distinct accounts with at least one row
    account_share: float = 0.0


@dataclass
class SplitProfile:
    """The trainer's split at one cadence / horizon / lead, and its churners per slice."""

    cadence: str
    horizon_days: int
    lead_days: int
    matured_snapshots: int = 0
    used_snapshots: int = 0
    first_as_of: str | None = None
    last_as_of: str | None = None
    slices: dict[str, dict[str, int]] = field(default_factory=dict)  # slice -> rows, positive_rows, churners, snapshots
    per_snapshot: list[dict[str, object]] = field(default_factory=list)  # as_of, slice, accounts, churned
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> str:
        return " / ".join(str(self.slices.get(name, {}).get("churners", 0)) for name in SLICES)


@dataclass
class Suggestion:
    changes: dict[str, object]  # settings to change (empty: the current settings are fine)
    split: SplitProfile

    def describe_counts(self) -> str:
        return self.split.counts()


@dataclass
class ReadinessReport:
    observed_from: str
    observed_until: str
    accounts: int
    sources: list[SourceProfile]
    subscription_cadence: dict[str, object]
    churn_events_per_month: dict[str, int]
    splits: list[SplitProfile]
    suggestion: Suggestion | None
    suggested_settings: dict[str, object]
    verdict: str
    seconds: float = 0.0

    @property
    def ready(self) -> bool:
        return self.verdict == "ready"

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ready"] = self.ready
        for split, data in zip(self.splits, out["splits"]):
            data["ok"] = split.ok
        return out

    def describe(self) -> str:
        """Plain text for the terminal."""
        lines = [f"history: {self.observed_from} to {self.observed_until} (exclusive); {self.accounts:,} accounts"]
        for s in self.sources:
            if not s.present:
                lines.append(f"  {s.table:13s} absent")
            else:
                lines.append(f"  {s.table:13s} {s.rows:>10,} rows  {s.first} .. {s.last}  covers {s.accounts:,} accounts ({s.account_share:.0%})")
        sc = self.subscription_cadence
        if sc.get("terms"):
            shares = ", ".join(f"{k} {v:.0%}" for k, v in sc["shares"].items() if v)
            lines.append(f"subscriptions: {sc['terms']:,} terms by {sc['source']}: {shares}")
        events = self.churn_events_per_month
        if events:
            lines.append("churn events per month: " + ", ".join(f"{m} {n}" for m, n in events.items()))
        else:
            lines.append("churn events per month: none observed with matured labels")
        lines.append("churned accounts per slice (fit / calibration / holdout):")
        for sp in self.splits:
            head = f"  {sp.cadence:7s} horizon {sp.horizon_days}d lead {sp.lead_days}d: {sp.matured_snapshots} matured snapshots"
            if sp.used_snapshots:
                per = sum(v.get("positive_rows", 0) for v in sp.slices.values()) / max(sp.used_snapshots, 1)
                head += f", {sp.used_snapshots} used ({sp.first_as_of} .. {sp.last_as_of}), {per:.1f} churners per snapshot; churners {sp.counts()}"
            lines.append(head + ("" if sp.ok else f"  [{'; '.join(sp.problems)}]"))
        if self.suggested_settings:
            lines.append("suggested settings: " + ", ".join(f"{k} = {v!r}" for k, v in self.suggested_settings.items()))
        lines.append(f"verdict: {self.verdict}")
        lines.append(f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def _source_profiles(engine: sa.Engine, tables: frozenset[str], accounts: int) -> list[SourceProfile]:
    out = []
    for table, column in SOURCE_TIME.items():
        if table not in tables:
            out.append(SourceProfile(table, present=False))
            continue
        row = read_sql(
            engine,
            f"SELECT COUNT(*) AS n, MIN({column}) AS first_at, MAX({column}) AS last_at, COUNT(DISTINCT account_id) AS accounts FROM {table}",
        ).iloc[0]
        first = None if pd.isna(row["first_at"]) else str(pd.Timestamp(row["first_at"]).date())
        last = None if pd.isna(row["last_at"]) else str(pd.Timestamp(row["last_at"]).date())
        covered = int(row["accounts"] or 0)
        out.append(SourceProfile(table, True, int(row["n"]), first, last, covered, covered / accounts if accounts else 0.0))
    return out


def _subscription_cadence(engine: sa.Engine, tables: frozenset[str]) -> dict[str, object]:
    """Shares of terms by billing period: from ``billing_period`` when the table has it, else
    from term lengths (end - start). Open-ended terms (no end date) are their own share."""
    if "subscriptions" not in tables:
        return {"terms": 0, "source": "absent", "shares": {}}
    columns = {c["name"] for c in sa.inspect(engine).get_columns("subscriptions")}
    if "billing_period" in columns:
        rows = read_sql(engine, "SELECT LOWER(CAST(billing_period AS VARCHAR)) AS period, COUNT(*) AS n FROM subscriptions GROUP BY 1")
        total = int(rows["n"].sum())
        named = {"month": "monthly", "quarter": "quarterly", "year": "annual"}  # the same words as term lengths give
        shares = {named.get(str(p), str(p)) if p is not None else "unknown": int(n) / total for p, n in zip(rows["period"], rows["n"])} if total else {}
        ends = read_sql(engine, "SELECT COUNT(*) AS n FROM subscriptions WHERE end_date IS NULL").loc[0, "n"]
        shares["open_ended"] = int(ends) / total if total else 0.0
        return {"terms": total, "source": "billing_period", "shares": shares}
    terms = read_sql(engine, "SELECT start_date, end_date FROM subscriptions")
    if terms.empty:
        return {"terms": 0, "source": "term length", "shares": {}}
    days = (pd.to_datetime(terms["end_date"]) - pd.to_datetime(terms["start_date"])).dt.days
    kinds = pd.cut(days, [-1e9, 24, 35, 84, 95, 349, 380, 1e9], labels=["other", "monthly", "other", "quarterly", "other", "annual", "multi_year"], ordered=False)
    kinds = kinds.astype(object).where(days.notna(), "open_ended")
    shares = {k: float((kinds == k).mean()) for k in ("monthly", "quarterly", "annual", "multi_year", "other", "open_ended")}
    return {"terms": int(len(terms)), "source": "term length", "shares": shares}


class _Labels:
    """Labels per (horizon, lead) and as-of date, computed once per profile."""

    def __init__(self, engine: sa.Engine, settings: Settings, observed_until: date) -> None:
        self.engine, self.settings, self.observed_until = engine, settings, observed_until
        self.cache: dict[tuple[int, int], dict[date, pd.DataFrame]] = {}

    def __call__(self, dates: list[date], horizon: int, lead: int) -> pd.DataFrame:
        known = self.cache.setdefault((horizon, lead), {})
        missing = [d for d in dates if d not in known]
        if missing:
            fresh = labels_for_dates(
                self.engine, missing, horizon_days=horizon, grace_days=self.settings.churn_grace_days,
                observed_until=self.observed_until, lead_days=lead,
            )
            for d in missing:
                known[d] = fresh[fresh["as_of_date"] == pd.Timestamp(d)]
        return pd.concat([known[d] for d in dates], ignore_index=True) if dates else pd.DataFrame(
            columns=["as_of_date", "account_id", "churned", "churn_date"])


def split_profile(
    settings: Settings, data_start: date, observed_until: date, labels: _Labels, *, cadence: str, horizon_days: int, lead_days: int
) -> SplitProfile:
    """Churned accounts per slice of the split ``train`` would use with these settings."""
    profile = SplitProfile(cadence, horizon_days, lead_days)
    profile.matured_snapshots = len(matured_dates(
        data_start, observed_until, cadence=cadence, horizon_days=horizon_days, grace_days=settings.churn_grace_days, lead_days=lead_days))
    try:
        plan: SplitPlan = plan_split(data_start, observed_until, settings, cadence=cadence, horizon_days=horizon_days, lead_days=lead_days)
    except InsufficientDataError as exc:
        profile.problems.append(exc.cause)
        return profile
    frame = labels(plan.used, horizon_days, lead_days)
    counts = slice_churners(frame, plan)
    role = plan.slice_of()
    for name in SLICES:
        counts[name]["snapshots"] = sum(1 for r in role.values() if r == name)
    profile.used_snapshots = len(plan.used)
    profile.first_as_of, profile.last_as_of = str(plan.used[0]), str(plan.used[-1])
    profile.slices = counts
    per = frame.groupby(frame["as_of_date"].dt.date)["churned"].agg(["size", "sum"])
    profile.per_snapshot = [{"as_of": str(d), "slice": role[d], "accounts": int(r["size"]), "churned": int(r["sum"])} for d, r in per.iterrows()]
    profile.problems = churner_shortfalls(counts, settings.model_copy(update={"horizon_days": horizon_days}))
    return profile


def _candidates(settings: Settings) -> list[tuple[str, int, int]]:
    """(cadence, horizon, lead) to try, the current settings first, then the nearest horizons;
    at each horizon the configured cadence before the other; the configured lead before none."""
    horizons = sorted(set(CANDIDATE_HORIZONS) | {settings.horizon_days}, key=lambda h: (abs(h - settings.horizon_days), h))
    cadences = [settings.snapshot_cadence, *[c for c in CADENCES if c != settings.snapshot_cadence]]
    leads = [settings.label_lead_days] + ([0] if settings.label_lead_days else [])
    out = []
    for horizon in horizons:
        for cadence in cadences:
            if cadence == "monthly" and horizon < 28:
                continue  # a monthly snapshot with a shorter window would miss churn between snapshots
            for lead in leads:
                out.append((cadence, horizon, lead))
    return out


def suggest_settings(
    engine: sa.Engine, settings: Settings, data_start: date, observed_until: date, *, labels: _Labels | None = None,
    known: dict[tuple[str, int, int], SplitProfile] | None = None,
) -> Suggestion | None:
    """The first candidate (current settings first) whose split has enough churners in every
    slice, or None when no cadence, horizon or lead does on this history."""
    labels = labels or _Labels(engine, settings, observed_until)
    known = known if known is not None else {}
    for cadence, horizon, lead in _candidates(settings):
        key = (cadence, horizon, lead)
        if key not in known:
            known[key] = split_profile(settings, data_start, observed_until, labels, cadence=cadence, horizon_days=horizon, lead_days=lead)
        if known[key].ok:
            changes: dict[str, object] = {}
            if cadence != settings.snapshot_cadence:
                changes["snapshot_cadence"] = cadence
            if horizon != settings.horizon_days:
                changes["horizon_days"] = horizon
            if lead != settings.label_lead_days:
                changes["label_lead_days"] = lead
            return Suggestion(changes, known[key])
    return None


def _churn_events_per_month(settings: Settings, data_start: date, observed_until: date, labels: _Labels) -> dict[str, int]:
    """Distinct (account, churn date) events by month of the churn date, from the labels of
    every matured monthly snapshot at the configured horizon."""
    dates = matured_dates(data_start, observed_until, cadence="monthly", horizon_days=settings.horizon_days,
                          grace_days=settings.churn_grace_days, lead_days=settings.label_lead_days)
    frame = labels(dates, settings.horizon_days, settings.label_lead_days)
    events = frame.loc[frame["churned"] == 1, ["account_id", "churn_date"]].drop_duplicates()
    if events.empty:
        return {}
    months = pd.to_datetime(events["churn_date"]).dt.strftime("%Y-%m")
    return {str(k): int(v) for k, v in months.value_counts().sort_index().items()}


def profile_readiness(engine: sa.Engine, settings: Settings) -> ReadinessReport:
    """Readiness of the warehouse for training with ``settings`` (see the module docstring)."""
    started = time.perf_counter()
    tables = available_tables(engine)
    needed = ["accounts", "usage"] + (["subscriptions"] if read_manifest(engine).churn_source == "coverage" else [])
    missing = [t for t in needed if t not in tables]
    if missing:
        fix = "load your data with `churnflow ingest --mapping sources.yaml`"
        if missing == ["subscriptions"]:
            fix += " (churn is derived from subscriptions' coverage: map them, or declare `churn: {source: churn_events}` with a churn_events table)"
        raise InsufficientDataError(f"table(s) {', '.join(missing)} missing from the warehouse", fix)
    data_start, _ = data_window(engine, settings)
    observed_until = observation_end(engine, settings)
    accounts = int(read_sql(engine, "SELECT COUNT(*) AS n FROM accounts").loc[0, "n"])
    labels = _Labels(engine, settings, observed_until)
    known: dict[tuple[str, int, int], SplitProfile] = {}
    splits = []
    for cadence in CADENCES:
        key = (cadence, settings.horizon_days, settings.label_lead_days)
        known[key] = split_profile(settings, data_start, observed_until, labels, cadence=cadence,
                                   horizon_days=settings.horizon_days, lead_days=settings.label_lead_days)
        splits.append(known[key])
    suggestion = suggest_settings(engine, settings, data_start, observed_until, labels=labels, known=known)
    current = known[(settings.snapshot_cadence, settings.horizon_days, settings.label_lead_days)]
    if current.ok:
        verdict = "ready"
    else:
        cause = "; ".join(current.problems) + f" ({settings.snapshot_cadence} snapshots, {settings.horizon_days}-day horizon)"
        if suggestion is not None:
            changes = ", ".join(f"{k} = {v!r}" for k, v in suggestion.changes.items())
            fix = f"set {changes} (gives {suggestion.describe_counts()} churned accounts in fit / calibration / holdout)"
        else:
            fix = "no cadence or horizon gives enough churners on this history: more history or more accounts"
        verdict = f"not ready: {cause}; {fix}"
    suggested = {"snapshot_cadence": settings.snapshot_cadence, "horizon_days": settings.horizon_days, "label_lead_days": settings.label_lead_days}
    if suggestion is not None:
        suggested.update(suggestion.changes)
    report = ReadinessReport(
        observed_from=str(data_start), observed_until=str(observed_until), accounts=accounts,
        sources=_source_profiles(engine, tables, accounts), subscription_cadence=_subscription_cadence(engine, tables),
        churn_events_per_month=_churn_events_per_month(settings, data_start, observed_until, labels),
        splits=splits, suggestion=suggestion, suggested_settings=suggested if suggestion is not None else {}, verdict=verdict,
    )
    report.seconds = round(time.perf_counter() - started, 2)
    return report

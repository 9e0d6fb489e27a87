"""The weekly executive risk digest.

One message a week that an executive can read in a minute: where revenue is at risk, what
changed since last week, why, and what the team is doing about it. The digest only *reads*
what earlier stages stored (``account_scores``, ``outreach_tasks``, ``subscriptions``,
``surveys``, ``accounts`` and, when it exists, ``model_monitoring``); it never recomputes
features or retrains, so it always agrees with what CS teams saw in the CRM that week.

Definitions (all dates are naive UTC days):

* **This week** is the latest ``account_scores.as_of_date`` on or before ``week_ending``;
  **last week** is the latest one on or before ``week_ending - 7 days``. Scores are daily,
  so comparing two score days a week apart is exact and needs no re-aggregation.
* **Event windows** (ARR churned, tasks created, survey responses) are the seven days
  ``week_ending - 6 .. week_ending``; the previous window is the seven days before that.
* **ARR churned** in a window: subscriptions whose coverage ended in the window (at the
  cancellation day if ``cancelled_at`` is set, else at ``end_date``) while no other
  subscription of the account outlasts that day and starts within ``churn_grace_days`` of
  it (the label rule of ``features.labels``). A renewal recorded after the digest is not
  known yet, so a late renewal can make a past week's number drop.
* **Portfolio drivers** add up the positive ``top_drivers`` contributions of yellow and red
  accounts (green accounts' drivers are noise for an executive). Shares are of the total,
  grouped by feature family from ``feature_family``; unmapped features fall in ``other``.
* **Outreach** tasks belong to the week of the scoring day that triggered them
  (``outreach_tasks.as_of_date``; ``created_at`` is the run's wall clock, which a backfill
  makes useless for weekly counts). Completion is the last status synced from the CRM
  (completion dates are not stored), counted over all sent tasks up to ``week_ending``.
* **Lift vs holdout** compares the churn label of ``features.labels`` (the account churns within
  ``outcome_horizon_days`` of the task's scoring day, no renewal within the grace period)
  between sent tasks and held-out matches, only for labels that have matured by
  ``week_ending`` (horizon + grace passed). Until both groups of a playbook have matured
  outcomes the section says why instead of showing a number.

Privacy. By default the digest shows **no personal data**: survey verbatims are replaced by
a count, and account owners are shown as **initials derived from the owner's email**
(``jane.doe@corp.com`` -> ``JD``), which lets a CS lead recognise their team without putting
contact details into a mail that is often forwarded. ``include_contacts=True`` shows the
owner email instead; ``include_verbatims=True`` adds up to five of the week's survey
comments (lowest scores first, since those are the actionable ones). Account (company)
names are business data and always shown.

Rendering: :func:`render_html` (self-contained, phone-width, light and dark mode),
:func:`render_text` (the plain-text alternative), :func:`render_markdown` (a Prefect
artifact). :func:`write_digest` writes files and :func:`send_digest` mails the digest with
the charts as inline ``cid:`` images.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import sqlalchemy as sa

from churnflow.mail import SmtpConfig, send_message, smtp_config
from churnflow.settings import Settings
from churnflow.warehouse import read_sql, table_exists
from features.labels import labels_for_dates

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
HTML_TEMPLATE = "digest.html.j2"

BANDS: tuple[str, ...] = ("red", "yellow", "green")
# Mid-saturation colours readable on both white and near-black backgrounds (the chart PNGs
# are transparent so they sit on whatever the mail client paints).
BAND_COLOURS: dict[str, str] = {"green": "#2f9e5f", "yellow": "#d99a00", "red": "#d64545"}
FAMILY_COLOURS: dict[str, str] = {
    "usage": "#4c78a8",
    "support": "#e45756",
    "perception": "#b279a2",
    "commercial": "#d99a00",
    "lifecycle": "#54a24b",
    "other": "#8c8c8c",
}
CHART_TEXT = "#858c96"  # ~3.4:1 on white, ~5.5:1 on #121212: legible on both
TOP_ACCOUNTS = 10
TOP_MOVERS = 10
MAX_VERBATIMS = 5
HISTORY_WEEKS = 12
SPARK_CHARS = "▁▂▃▄▅▆▇█"

Unit = Literal["count", "money", "percent", "score", "number"]


# ----------------------------------------------------------------------------------------
# data model
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A number this week with last week's value, so every figure carries its change."""

    label: str
    current: float | None
    previous: float | None
    unit: Unit = "count"
    higher_is_better: bool | None = None

    @property
    def change(self) -> float | None:
        if self.current is None or self.previous is None:
            return None
        return self.current - self.previous

    @property
    def direction(self) -> Literal["better", "worse", "flat", "unknown"]:
        """Whether the change is good news, so renderers can colour it without knowing the metric."""
        delta = self.change
        if delta is None or self.higher_is_better is None:
            return "unknown"
        if abs(delta) < 1e-9:
            return "flat"
        return "better" if (delta > 0) == self.higher_is_better else "worse"


@dataclass(frozen=True)
class Headline:
    metrics: list[Metric]
    total_arr: float
    churned_accounts: list[str]
    note: str | None = None  # e.g. "no scores a week earlier"


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    name: str
    owner: str
    band: str
    previous_band: str | None
    health: int
    previous_health: int | None
    p_churn: float
    arr: float
    arr_at_risk: float
    trend: list[int]  # weekly health scores, oldest first
    drivers: list[str]

    @property
    def health_change(self) -> int | None:
        return None if self.previous_health is None else self.health - self.previous_health

    @property
    def sparkline(self) -> str:
        return sparkline(self.trend)


@dataclass(frozen=True)
class AccountsSection:
    rows: list[AccountRow]
    reason: str | None = None


@dataclass(frozen=True)
class MoversSection:
    movers: list[AccountRow]
    new_reds: list[AccountRow]
    movers_reason: str | None = None
    new_reds_reason: str | None = None


@dataclass(frozen=True)
class DriverShare:
    name: str  # family name or feature name
    label: str  # plain words
    family: str
    share: float  # of the total positive contribution this week, 0-1
    previous_share: float | None
    accounts: int  # at-risk accounts where it is a top driver

    @property
    def change(self) -> float | None:
        return None if self.previous_share is None else self.share - self.previous_share


@dataclass(frozen=True)
class DriversSection:
    families: list[DriverShare]
    features: list[DriverShare]
    at_risk_accounts: int
    reason: str | None = None
    previous_reason: str | None = None


@dataclass(frozen=True)
class PlaybookRow:
    playbook: str
    created: int  # sent tasks created this week
    held_out: int  # held-out matches this week
    previous_created: int
    sent_to_date: int
    completed_to_date: int

    @property
    def completion_rate(self) -> float | None:
        return None if not self.sent_to_date else self.completed_to_date / self.sent_to_date


@dataclass(frozen=True)
class LiftRow:
    playbook: str
    treated: int
    treated_churned: int
    holdout: int
    holdout_churned: int

    @property
    def treated_rate(self) -> float:
        return self.treated_churned / self.treated if self.treated else float("nan")

    @property
    def holdout_rate(self) -> float:
        return self.holdout_churned / self.holdout if self.holdout else float("nan")

    @property
    def lift(self) -> float:
        """Churn-rate reduction in absolute points (holdout minus treated); positive is good."""
        return self.holdout_rate - self.treated_rate

    @property
    def small_sample(self) -> bool:
        return min(self.treated, self.holdout) < 30


@dataclass(frozen=True)
class OutreachSection:
    playbooks: list[PlaybookRow]
    lift: list[LiftRow]
    reason: str | None = None
    lift_reason: str | None = None


@dataclass(frozen=True)
class Verbatim:
    account: str
    kind: str
    score: float
    comment: str
    submitted_at: datetime


@dataclass(frozen=True)
class SurveySection:
    metrics: list[Metric]
    responses: int
    previous_responses: int
    verbatims: list[Verbatim]
    comments_withheld: int
    reason: str | None = None


@dataclass(frozen=True)
class DriftFlag:
    metric: str
    value: float
    detail: str


@dataclass(frozen=True)
class ModelHealth:
    champion: str | None
    model_name: str | None
    scored_at: datetime | None
    realized_auc: float | None
    previous_auc: float | None
    psi_score: float | None
    checked_at: datetime | None
    drift: list[DriftFlag]
    reason: str | None = None  # why there is no monitoring information


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    alt: str
    png: bytes | None
    reason: str | None = None

    @property
    def cid(self) -> str:
        return f"chart-{self.key}@churnflow"

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode("ascii")


@dataclass(frozen=True)
class Digest:
    """Everything the digest says, as data; renderers only format it."""

    week_ending: date
    this_date: date | None
    last_date: date | None
    generated_at: datetime
    currency: str
    highlights: list[str]
    headline: Headline
    top_accounts: AccountsSection
    movers: MoversSection
    drivers: DriversSection
    outreach: OutreachSection
    surveys: SurveySection
    model: ModelHealth
    charts: list[Chart]
    include_verbatims: bool = False
    include_contacts: bool = False
    reason: str | None = None  # set when there are no scores at all

    @property
    def title(self) -> str:
        return f"Customer health digest — week ending {self.week_ending.isoformat()}"

    @property
    def subject(self) -> str:
        """A mail subject that already says the one number that matters."""
        at_risk = next((m for m in self.headline.metrics if m.label == "ARR at risk"), None)
        if at_risk is None or at_risk.current is None:
            return self.title
        text = f"{self.title}: {fmt_money(at_risk.current, self.currency)} ARR at risk"
        if at_risk.change is not None:
            text += f" ({fmt_delta(at_risk.change, 'money', self.currency)} wow)"
        return text


# ----------------------------------------------------------------------------------------
# formatting helpers (shared by all renderers and the Jinja environment)
# ----------------------------------------------------------------------------------------


def fmt_money(value: float | None, currency: str = "$") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    sign = "-" if value < 0 else ""
    v = abs(float(value))
    if v >= 1e6:
        return f"{sign}{currency}{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{sign}{currency}{v / 1e3:.1f}k"
    return f"{sign}{currency}{v:,.0f}"


def fmt_value(value: float | None, unit: Unit, currency: str = "$") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if unit == "money":
        return fmt_money(value, currency)
    if unit == "percent":
        return f"{value * 100:.0f}%"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "score":  # NPS-style: always signed
        return f"{value:+.0f}"
    return f"{value:.2f}"


def fmt_delta(value: float | None, unit: Unit, currency: str = "$") -> str:
    """Signed change with an arrow, e.g. ``▲ +$12.0k``; percents become points (pp)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) < 1e-9:
        return "±0"
    arrow = "▲" if value > 0 else "▼"
    sign = "+" if value > 0 else "-"
    v = abs(value)
    if unit == "money":
        body = fmt_money(v, currency)
    elif unit == "percent":
        body = f"{v * 100:.1f} pp"
    elif unit == "count" or unit == "score":
        body = f"{v:,.0f}"
    else:
        body = f"{v:.2f}"
    return f"{arrow} {sign}{body}"


def sparkline(values: Sequence[float]) -> str:
    """A unicode sparkline; fixed 0-100 scale so lines are comparable across accounts."""
    if not values:
        return ""
    return "".join(SPARK_CHARS[min(len(SPARK_CHARS) - 1, max(0, int(v / 100 * len(SPARK_CHARS))))] for v in values)


_ACRONYMS = {"nps": "NPS", "csat": "CSAT", "ces": "CES", "arr": "ARR", "top2": "top-2", "psi": "PSI", "auc": "AUC"}


def humanize_feature(name: str) -> str:
    """``csat_top2_box_90d`` -> ``CSAT top-2 box (90 days)``: readable without the catalogue."""
    text = " ".join(_ACRONYMS.get(w.lower(), w) for w in name.replace("_", " ").split())
    for suffix, words in ((" 7d", " (7 days)"), (" 30d", " (30 days)"), (" 90d", " (90 days)"), (" 365d", " (1 year)")):
        if text.endswith(suffix):
            text = text[: -len(suffix)] + words
    return text[:1].upper() + text[1:]


def owner_label(email: str | None, include_contacts: bool) -> str:
    """Initials from the email's local part unless contacts may be shown (see module docstring)."""
    if not email or not isinstance(email, str):
        return "unassigned"
    if include_contacts:
        return email
    local = email.split("@", 1)[0]
    parts = [p for p in local.replace("_", ".").replace("-", ".").replace("+", ".").split(".") if p and p[0].isalpha()]
    initials = "".join(p[0].upper() for p in parts[:2])
    return initials or "CSM"


# ----------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------


def _as_date(value: object) -> date | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    return pd.Timestamp(value).date()


def _score_dates(engine: sa.Engine, week_ending: date) -> list[date]:
    frame = read_sql(
        engine,
        "SELECT DISTINCT as_of_date FROM account_scores WHERE as_of_date <= :d ORDER BY as_of_date",
        {"d": week_ending},
    )
    return [d for d in (_as_date(v) for v in frame["as_of_date"]) if d is not None]


def _latest_on_or_before(dates: Sequence[date], day: date) -> date | None:
    eligible = [d for d in dates if d <= day]
    return max(eligible) if eligible else None


def _weekly_dates(dates: Sequence[date], week_ending: date, weeks: int = HISTORY_WEEKS) -> list[date]:
    """The score day of each of the last ``weeks`` weeks (latest on or before each week end)."""
    picked = {_latest_on_or_before(dates, week_ending - timedelta(days=7 * k)) for k in range(weeks)}
    return sorted(d for d in picked if d is not None)


def _scores_on(engine: sa.Engine, days: Sequence[date], columns: str) -> pd.DataFrame:
    if not days:
        return pd.DataFrame()
    stmt = sa.text(f"SELECT {columns} FROM account_scores WHERE as_of_date IN :days").bindparams(
        sa.bindparam("days", expanding=True)
    )
    frame = read_sql(engine, stmt, {"days": list(days)})
    frame["as_of_date"] = pd.to_datetime(frame["as_of_date"]).dt.date
    return frame


def _accounts(engine: sa.Engine) -> pd.DataFrame:
    if not table_exists(engine, "accounts"):
        return pd.DataFrame(columns=["account_id", "name", "owner_email"])
    return read_sql(engine, "SELECT account_id, name, owner_email FROM accounts")


def _subscriptions(engine: sa.Engine) -> pd.DataFrame:
    cols = ["subscription_id", "account_id", "arr", "start_date", "end_date", "cancelled_at"]
    if not table_exists(engine, "subscriptions"):
        return pd.DataFrame(columns=cols)
    frame = read_sql(engine, f"SELECT {', '.join(cols)} FROM subscriptions")
    frame["start_date"] = pd.to_datetime(frame["start_date"]).dt.normalize()
    frame["end_date"] = pd.to_datetime(frame["end_date"]).dt.normalize()
    cancelled = pd.to_datetime(frame["cancelled_at"]).dt.normalize()
    # Coverage ends at the cancellation day when one is recorded (schema: subscriptions).
    # An open-ended subscription (no end_date) runs until it is cancelled.
    frame["effective_end"] = cancelled.where(cancelled.notna() & (frame["end_date"].isna() | (cancelled < frame["end_date"])), frame["end_date"])
    return frame


def churn_events(subscriptions: pd.DataFrame, start: date, end: date, grace_days: int = 30) -> pd.DataFrame:
    """Subscriptions whose coverage ended in ``[start, end]`` with no renewal known.

    A subscription is renewed when the same account has another subscription that outlasts
    its end day and starts no later than ``grace_days`` after it (a renewal row, a concurrent
    contract, or a quick re-signing), matching how ``features.labels`` merges terms.
    """
    if subscriptions.empty:
        return subscriptions.assign(effective_end=pd.Series(dtype="datetime64[ns]"))
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    ended = subscriptions[(subscriptions["effective_end"] >= lo) & (subscriptions["effective_end"] <= hi)]
    if ended.empty:
        return ended
    others = subscriptions[["subscription_id", "account_id", "start_date", "effective_end"]].rename(
        columns={"subscription_id": "other_id", "start_date": "other_start", "effective_end": "other_end"}
    )
    pairs = ended[["subscription_id", "account_id", "effective_end"]].merge(others, on="account_id")
    pairs = pairs[pairs["other_id"] != pairs["subscription_id"]]
    renewing = pairs[(pairs["other_end"].isna() | (pairs["other_end"] > pairs["effective_end"]))
                     & (pairs["other_start"] <= pairs["effective_end"] + pd.Timedelta(days=grace_days))]
    return ended[~ended["subscription_id"].isin(set(renewing["subscription_id"]))]


def _band_counts(scores: pd.DataFrame) -> dict[str, int]:
    counts = scores["band"].value_counts() if not scores.empty else pd.Series(dtype=int)
    return {b: int(counts.get(b, 0)) for b in BANDS}


def _drivers_of(row: Mapping[str, object], limit: int = 3) -> list[str]:
    text = row.get("top_drivers_text")
    if isinstance(text, str) and text.strip():
        return [line.strip() for line in text.splitlines() if line.strip()][:limit]
    return [d.get("sentence", "") for d in _parse_drivers(row.get("top_drivers"))][:limit]


def _parse_drivers(raw: object) -> list[dict]:
    if not isinstance(raw, str) or not raw.strip():
        return []
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("account_scores.top_drivers is not valid JSON; ignored: %.60s", raw)
        return []
    return [d for d in parsed if isinstance(d, dict)] if isinstance(parsed, list) else []


def _account_row(
    row: Mapping[str, object],
    previous: Mapping[str, object] | None,
    trend: list[int],
    include_contacts: bool,
) -> AccountRow:
    return AccountRow(
        account_id=str(row["account_id"]),
        name=str(row.get("name") or row["account_id"]),
        owner=owner_label(row.get("owner_email"), include_contacts),  # type: ignore[arg-type]
        band=str(row["band"]),
        previous_band=None if previous is None else str(previous["band"]),
        health=int(row["health_score"]),
        previous_health=None if previous is None else int(previous["health_score"]),
        p_churn=float(row["p_churn"]),
        arr=float(row["arr"]),
        arr_at_risk=float(row["arr_at_risk"]),
        trend=trend,
        drivers=_drivers_of(row),
    )


def _headline(
    now: pd.DataFrame, prev: pd.DataFrame | None, subs: pd.DataFrame, week_ending: date, grace_days: int
) -> Headline:
    this_start = week_ending - timedelta(days=6)
    churned_now = churn_events(subs, this_start, week_ending, grace_days)
    churned_prev = churn_events(subs, this_start - timedelta(days=7), week_ending - timedelta(days=7), grace_days)
    counts = _band_counts(now)
    prev_counts = _band_counts(prev) if prev is not None else None
    metrics = [
        Metric("ARR at risk", float(now["arr_at_risk"].sum()),
               None if prev is None else float(prev["arr_at_risk"].sum()), "money", False),
        Metric("ARR churned this week", float(churned_now["arr"].sum()), float(churned_prev["arr"].sum()), "money", False),
        Metric("Red accounts", counts["red"], None if prev_counts is None else prev_counts["red"], "count", False),
        Metric("Yellow accounts", counts["yellow"], None if prev_counts is None else prev_counts["yellow"], "count", False),
        Metric("Green accounts", counts["green"], None if prev_counts is None else prev_counts["green"], "count", True),
        Metric("Red ARR", float(now.loc[now["band"] == "red", "arr"].sum()),
               None if prev is None else float(prev.loc[prev["band"] == "red", "arr"].sum()), "money", False),
    ]
    return Headline(
        metrics=metrics,
        total_arr=float(now["arr"].sum()),
        churned_accounts=sorted(set(churned_now["account_id"].astype(str))),
        note=None if prev is not None else "no scores a week earlier: changes are not shown",
    )


def _movers(
    now: pd.DataFrame, prev: pd.DataFrame | None, trends: Mapping[str, list[int]], include_contacts: bool
) -> MoversSection:
    if prev is None:
        reason = "no scores a week earlier"
        return MoversSection([], [], reason, reason)
    prev_by_id = prev.set_index("account_id")
    merged = now.merge(prev[["account_id", "health_score", "band"]], on="account_id", how="left", suffixes=("", "_prev"))
    both = merged[merged["health_score_prev"].notna()].copy()
    both["delta"] = both["health_score"].astype(float) - both["health_score_prev"].astype(float)
    drops = both[both["delta"] < 0].sort_values(["delta", "arr_at_risk"], ascending=[True, False]).head(TOP_MOVERS)

    def build(rows: pd.DataFrame) -> list[AccountRow]:
        out = []
        for rec in rows.to_dict("records"):
            aid = rec["account_id"]
            previous = prev_by_id.loc[aid].to_dict() if aid in prev_by_id.index else None
            out.append(_account_row(rec, previous, trends.get(aid, []), include_contacts))
        return out

    new_red = merged[(merged["band"] == "red") & (merged["band_prev"] != "red")]
    new_red = new_red.sort_values("arr_at_risk", ascending=False)
    movers = build(drops)
    reds = build(new_red)
    return MoversSection(
        movers=movers,
        new_reds=reds,
        movers_reason=None if movers else "no account's health dropped since last week",
        new_reds_reason=None if reds else "no account turned red this week",
    )


def _driver_shares(
    scores: pd.DataFrame, feature_family: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float], dict[str, int], dict[str, int], int]:
    """Positive contributions of at-risk accounts, summed by feature and by family."""
    at_risk = scores[scores["band"].isin(["red", "yellow"])]
    by_feature: dict[str, float] = {}
    feature_accounts: dict[str, int] = {}
    by_family: dict[str, float] = {}
    family_accounts: dict[str, set[str]] = {}
    for rec in at_risk[["account_id", "top_drivers"]].itertuples(index=False):
        for d in _parse_drivers(rec.top_drivers):
            try:
                contribution = float(d.get("contribution", 0.0))
            except (TypeError, ValueError):
                continue
            if not (contribution > 0):
                continue
            name = str(d.get("feature", "unknown"))
            family = feature_family.get(name, "other")
            by_feature[name] = by_feature.get(name, 0.0) + contribution
            feature_accounts[name] = feature_accounts.get(name, 0) + 1
            by_family[family] = by_family.get(family, 0.0) + contribution
            family_accounts.setdefault(family, set()).add(str(rec.account_id))
    total = sum(by_feature.values())
    if total <= 0:
        return {}, {}, {}, {}, len(at_risk)
    return (
        {k: v / total for k, v in by_feature.items()},
        {k: v / total for k, v in by_family.items()},
        feature_accounts,
        {k: len(v) for k, v in family_accounts.items()},
        len(at_risk),
    )


def _driver_families(feature_family: Mapping[str, str], *frames: pd.DataFrame | None) -> dict[str, str]:
    """``feature_family`` plus the family each stored driver names (per-book features such as
    per-event-type usage or mapped attributes are in no static catalogue)."""
    out: dict[str, str] = {}
    for frame in frames:
        if frame is None or "top_drivers" not in frame:
            continue
        for raw in frame["top_drivers"]:
            for d in _parse_drivers(raw):
                if d.get("feature") and d.get("family"):
                    out.setdefault(str(d["feature"]), str(d["family"]))
    return {**out, **feature_family}


def _drivers(now: pd.DataFrame, prev: pd.DataFrame | None, feature_family: Mapping[str, str]) -> DriversSection:
    feature_family = _driver_families(feature_family, now, prev)
    feats, fams, feat_n, fam_n, n_at_risk = _driver_shares(now, feature_family)
    if not feats:
        return DriversSection([], [], n_at_risk, reason="no yellow or red accounts with risk drivers this week")
    previous_reason = None
    pfeats: dict[str, float] = {}
    pfams: dict[str, float] = {}
    if prev is None:
        previous_reason = "no scores a week earlier"
    else:
        pfeats, pfams, _, _, _ = _driver_shares(prev, feature_family)
        if not pfeats:
            previous_reason = "no at-risk drivers a week earlier"
    has_prev = previous_reason is None
    families = [
        DriverShare(f, f.capitalize(), f, s, pfams.get(f, 0.0) if has_prev else None, fam_n.get(f, 0))
        for f, s in sorted(fams.items(), key=lambda kv: -kv[1])
    ]
    features = [
        DriverShare(f, humanize_feature(f), feature_family.get(f, "other"), s,
                    pfeats.get(f, 0.0) if has_prev else None, feat_n.get(f, 0))
        for f, s in sorted(feats.items(), key=lambda kv: -kv[1])[:8]
    ]
    return DriversSection(families, features, n_at_risk, None, previous_reason)


def _outreach(
    engine: sa.Engine, week_ending: date, subs: pd.DataFrame, horizon_days: int, grace_days: int
) -> OutreachSection:
    if not table_exists(engine, "outreach_tasks"):
        return OutreachSection([], [], reason="no outreach has run yet", lift_reason="no outreach has run yet")
    tasks = read_sql(
        engine,
        "SELECT account_id, playbook, as_of_date, status, held_out FROM outreach_tasks WHERE as_of_date <= :d",
        {"d": week_ending},
    )
    if tasks.empty:
        return OutreachSection([], [], reason="no outreach tasks up to this week", lift_reason="no outreach tasks yet")
    tasks["as_of_date"] = pd.to_datetime(tasks["as_of_date"]).dt.normalize()
    # Tasks are dated by the scoring day that triggered them, not by ``created_at`` (the
    # wall clock of the run): a backfill decides months of tasks in one run.
    tasks["created_day"] = tasks["as_of_date"]
    tasks["held_out"] = tasks["held_out"].fillna(False).astype(bool)
    tasks["completed"] = tasks["status"].fillna("").astype(str).str.lower().str.startswith("completed")
    this_lo = pd.Timestamp(week_ending - timedelta(days=6))
    prev_lo = this_lo - pd.Timedelta(days=7)
    this_week = tasks["created_day"] >= this_lo
    prev_week = (tasks["created_day"] >= prev_lo) & (tasks["created_day"] < this_lo)
    rows = []
    for playbook, g in tasks.groupby("playbook", sort=True):
        sent = g[~g["held_out"]]
        rows.append(PlaybookRow(
            playbook=str(playbook),
            created=int((~g["held_out"] & this_week[g.index]).sum()),
            held_out=int((g["held_out"] & this_week[g.index]).sum()),
            previous_created=int((~g["held_out"] & prev_week[g.index]).sum()),
            sent_to_date=len(sent),
            completed_to_date=int(sent["completed"].sum()),
        ))
    rows.sort(key=lambda r: (-r.created - r.held_out, r.playbook))

    wait = horizon_days + grace_days
    matured = tasks[tasks["as_of_date"] + pd.Timedelta(days=wait) <= pd.Timestamp(week_ending)]
    lift: list[LiftRow] = []
    lift_reason: str | None = None
    if matured.empty:
        lift_reason = f"no outcomes matured yet: an outcome is known {wait} days after the task (horizon + grace)"
    elif not matured["held_out"].any():
        lift_reason = "no held-out matches with matured outcomes yet, so there is nothing to compare against"
    elif matured["held_out"].all():
        lift_reason = "no sent tasks with matured outcomes yet"
    else:
        days = sorted(matured["as_of_date"].dt.date.unique())
        outcomes = labels_for_dates(engine, days, horizon_days=horizon_days, grace_days=grace_days, observed_until=week_ending)
        # Accounts no longer active on the task's day have no outcome and drop out.
        matured = matured.merge(outcomes[["account_id", "as_of_date", "churned"]], on=["account_id", "as_of_date"], how="inner")
        for playbook, g in sorted(matured.groupby("playbook"), key=lambda kv: str(kv[0])):
            t, h = g[~g["held_out"]], g[g["held_out"]]
            if len(t) and len(h):
                lift.append(LiftRow(str(playbook), len(t), int(t["churned"].sum()), len(h), int(h["churned"].sum())))
        if not lift:
            lift_reason = "no playbook has matured outcomes in both the sent and the held-out group yet"
    return OutreachSection(rows, lift, None, lift_reason)


def _nps(scores: pd.Series) -> float | None:
    if scores.empty:
        return None
    return float(((scores >= 9).mean() - (scores <= 6).mean()) * 100)


def _surveys(
    engine: sa.Engine, week_ending: date, names: Mapping[str, str], include_verbatims: bool
) -> SurveySection:
    from churnflow.manifest import available_tables

    if "surveys" not in available_tables(engine):  # declared absent in the mapping, or never loaded
        return SurveySection([], 0, 0, [], 0, reason="no surveys are configured for this book")
    lo = week_ending - timedelta(days=13)
    frame = read_sql(
        engine,
        "SELECT account_id, submitted_at, kind, score, comment FROM surveys "
        "WHERE submitted_at >= :lo AND submitted_at < :hi",
        {"lo": datetime.combine(lo, datetime.min.time()),
         "hi": datetime.combine(week_ending + timedelta(days=1), datetime.min.time())},
    )
    frame["submitted_at"] = pd.to_datetime(frame["submitted_at"])
    frame["kind"] = frame["kind"].astype(str).str.lower()
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    this_lo = pd.Timestamp(week_ending - timedelta(days=6))
    now, prev = frame[frame["submitted_at"] >= this_lo], frame[frame["submitted_at"] < this_lo]
    if now.empty:
        return SurveySection([], 0, len(prev), [], 0, reason="no survey responses this week")

    def of(f: pd.DataFrame, kind: str) -> pd.Series:
        return f.loc[f["kind"] == kind, "score"].dropna()

    def top2(s: pd.Series) -> float | None:
        return None if s.empty else float((s >= 4).mean())

    def mean(s: pd.Series) -> float | None:
        return None if s.empty else float(s.mean())

    metrics = [
        Metric("NPS", _nps(of(now, "nps")), _nps(of(prev, "nps")), "score", True),
        Metric("CSAT top-2-box", top2(of(now, "csat")), top2(of(prev, "csat")), "percent", True),
        Metric("CES (mean, 1-7, lower is easier)", mean(of(now, "ces")), mean(of(prev, "ces")), "number", False),
    ]
    commented = now[now["comment"].fillna("").astype(str).str.strip() != ""]
    verbatims: list[Verbatim] = []
    if include_verbatims:
        # Lowest scores first within each kind's scale: normalise to 0-1 before sorting.
        scale = {"nps": (0, 10), "csat": (1, 5), "ces": (7, 1)}  # CES: higher is worse
        def norm(r: pd.Series) -> float:
            lo_, hi_ = scale.get(r["kind"], (0, 10))
            return (r["score"] - lo_) / (hi_ - lo_) if hi_ != lo_ else 0.0
        ranked = commented.assign(_n=commented.apply(norm, axis=1) if len(commented) else []).sort_values(["_n", "submitted_at"])
        for rec in ranked.head(MAX_VERBATIMS).to_dict("records"):
            verbatims.append(Verbatim(
                account=names.get(str(rec["account_id"]), str(rec["account_id"])),
                kind=str(rec["kind"]).upper(), score=float(rec["score"]), comment=str(rec["comment"]).strip(),
                submitted_at=rec["submitted_at"].to_pydatetime(),
            ))
    return SurveySection(
        metrics=metrics,
        responses=len(now),
        previous_responses=len(prev),
        verbatims=verbatims,
        comments_withheld=0 if include_verbatims else len(commented),
    )


def _model_health(engine: sa.Engine, now: pd.DataFrame, week_ending: date) -> ModelHealth:
    champion = model_name = None
    scored_at = None
    if not now.empty:
        champion = str(now["model_version"].mode().iloc[0])
        model_name = str(now["model_name"].mode().iloc[0])
        scored_at = pd.Timestamp(now["scored_at"].max()).to_pydatetime()
    empty = dict(realized_auc=None, previous_auc=None, psi_score=None, checked_at=None, drift=[])
    if not table_exists(engine, "model_monitoring"):
        return ModelHealth(champion, model_name, scored_at, **empty,
                           reason="model monitoring has not run yet (no model_monitoring table)")
    # The day a check is *about* (as_of_date) decides its week, not when it ran: a re-run or a
    # backfill checks past days, and a book whose data stops before today is checked later.
    mon = read_sql(
        engine,
        "SELECT checked_at, as_of_date, model_version, metric, value, breached, detail FROM model_monitoring WHERE as_of_date < :hi",
        {"hi": datetime.combine(week_ending + timedelta(days=1), datetime.min.time())},
    )
    if champion is not None and (mon["model_version"].astype(str) == champion).any():
        mon = mon[mon["model_version"].astype(str) == champion]
    if mon.empty:
        return ModelHealth(champion, model_name, scored_at, **empty,
                           reason="no monitoring results for the champion model up to this week")
    mon = mon.assign(checked_at=pd.to_datetime(mon["checked_at"])).sort_values(["as_of_date", "checked_at"])
    latest = mon.groupby("metric").tail(1)
    auc_rows = mon[mon["metric"] == "realized_auc"]
    realized = float(auc_rows["value"].iloc[-1]) if len(auc_rows) else None
    previous_auc = float(auc_rows["value"].iloc[-2]) if len(auc_rows) > 1 else None
    psi = latest.loc[latest["metric"] == "psi_score", "value"]
    drift = [
        DriftFlag(str(r["metric"]), float(r["value"]), str(r["detail"] or ""))
        for r in latest[latest["breached"].fillna(False).astype(bool)].to_dict("records")
    ]
    return ModelHealth(
        champion, model_name, scored_at, realized, previous_auc,
        float(psi.iloc[0]) if len(psi) else None,
        pd.Timestamp(mon["checked_at"].max()).to_pydatetime(), drift,
        reason=None if realized is not None else "no realized AUC yet: labels for scored days have not matured",
    )


def _highlights(d: Digest) -> list[str]:
    """The three to five sentences an executive reads if they read nothing else."""
    out: list[str] = []
    m = {x.label: x for x in d.headline.metrics}
    risk = m["ARR at risk"]
    total = d.headline.total_arr
    share = f" ({risk.current / total:.0%} of {fmt_money(total, d.currency)} scored ARR)" if total and risk.current else ""
    if risk.change is not None:
        verb = "rose" if risk.change > 0 else "fell" if risk.change < 0 else "held"
        out.append(f"ARR at risk {verb} {fmt_money(abs(risk.change), d.currency)} to {fmt_money(risk.current, d.currency)}{share}.")
    else:
        out.append(f"ARR at risk is {fmt_money(risk.current, d.currency)}{share}; no scores a week earlier to compare.")
    churned = m["ARR churned this week"]
    if churned.current:
        out.append(f"{fmt_money(churned.current, d.currency)} ARR churned this week "
                   f"({len(d.headline.churned_accounts)} account(s)).")
    if d.movers.new_reds:
        names = ", ".join(r.name for r in d.movers.new_reds[:3])
        more = f" and {len(d.movers.new_reds) - 3} more" if len(d.movers.new_reds) > 3 else ""
        out.append(f"{len(d.movers.new_reds)} account(s) turned red: {names}{more}.")
    if d.drivers.families:
        top = d.drivers.families[0]
        change = f" ({fmt_delta(top.change, 'percent')} vs last week)" if top.change is not None else ""
        out.append(f"{top.label} signals drive most risk: {top.share:.0%} of at-risk drivers{change}.")
    if d.outreach.playbooks:
        created = sum(r.created for r in d.outreach.playbooks)
        held = sum(r.held_out for r in d.outreach.playbooks)
        out.append(f"{created} outreach task(s) created this week, {held} held out for measurement.")
    if d.model.drift:
        out.append(f"Model drift flagged on {len(d.model.drift)} check(s); see Model health.")
    return out


def _history(engine: sa.Engine, weekly: Sequence[date]) -> pd.DataFrame:
    frame = _scores_on(engine, weekly, "as_of_date, account_id, band, health_score, arr, arr_at_risk")
    return frame.drop_duplicates(["as_of_date", "account_id"], keep="last") if not frame.empty else frame


def build_digest(
    engine: sa.Engine,
    week_ending: date,
    *,
    include_verbatims: bool = False,
    include_contacts: bool = False,
    feature_family: Mapping[str, str] | None = None,
    outcome_horizon_days: int = 90,
    churn_grace_days: int = 30,
    currency: str = "$",
    charts: bool = True,
) -> Digest:
    """Compute every section of the digest for the week ending ``week_ending`` (inclusive).

    Reads stored outputs only. Sections that cannot be computed carry a ``reason`` string
    instead of disappearing, so a reader can tell "nothing happened" from "not measured".

    Args:
        engine: The warehouse.
        week_ending: Last day of the reported week (inclusive).
        include_verbatims: Show up to five survey comments of the week (personal data).
        include_contacts: Show owner emails instead of initials (personal data).
        feature_family: Feature name -> family (usage, support, perception, commercial,
            lifecycle), e.g. ``{f.name: f.family for f in features.catalogue.CATALOGUE}``;
            unmapped features count as "other".
        outcome_horizon_days: Churn horizon for lift vs holdout (``Settings.horizon_days``).
        churn_grace_days: Renewal grace, as for labels (``Settings.churn_grace_days``).
        currency: Symbol for money figures (ARR is in the reporting currency).
        charts: Render the PNG charts (off saves ~0.5 s when only numbers are needed).
    """
    feature_family = dict(feature_family or {})
    generated_at = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    dates = _score_dates(engine, week_ending) if table_exists(engine, "account_scores") else []
    this_date = _latest_on_or_before(dates, week_ending)
    last_date = _latest_on_or_before(dates, week_ending - timedelta(days=7))
    stale_note: str | None = None
    if this_date is not None and this_date < week_ending - timedelta(days=6):
        stale_note = f"the latest scores are from {this_date.isoformat()}, before this week: scoring may have stopped"
        # Comparing a score day with itself would show "no change"; compare a week back instead.
        last_date = _latest_on_or_before(dates, this_date - timedelta(days=7))
    accounts = _accounts(engine)
    names = dict(zip(accounts["account_id"].astype(str), accounts["name"].astype(str)))
    subs = _subscriptions(engine)
    log.info("building digest for week ending %s (scores %s vs %s)", week_ending, this_date, last_date)

    if this_date is None:
        reason = f"no account scores on or before {week_ending.isoformat()}"
        empty_scores = pd.DataFrame(columns=["account_id", "band", "arr", "arr_at_risk", "model_version"])
        digest = Digest(
            week_ending=week_ending, this_date=None, last_date=None, generated_at=generated_at, currency=currency,
            highlights=[], headline=_headline(empty_scores, None, subs, week_ending, churn_grace_days),
            top_accounts=AccountsSection([], reason), movers=MoversSection([], [], reason, reason),
            drivers=DriversSection([], [], 0, reason), outreach=_outreach(engine, week_ending, subs, outcome_horizon_days, churn_grace_days),
            surveys=_surveys(engine, week_ending, names, include_verbatims),
            model=ModelHealth(None, None, None, None, None, None, None, [], reason),
            charts=[Chart(k, t, t, None, reason) for k, t in _CHART_TITLES.items()],
            include_verbatims=include_verbatims, include_contacts=include_contacts, reason=reason,
        )
        return digest

    weekly = _weekly_dates(dates, week_ending)
    full_days = [this_date] + ([last_date] if last_date else [])
    scores = _scores_on(engine, full_days, "*").drop_duplicates(["as_of_date", "account_id"], keep="last")
    scores = scores.merge(accounts, on="account_id", how="left")
    now = scores[scores["as_of_date"] == this_date].reset_index(drop=True)
    prev = scores[scores["as_of_date"] == last_date].reset_index(drop=True) if last_date else None
    history = _history(engine, weekly)
    trends: dict[str, list[int]] = {
        str(aid): [int(v) for v in g.sort_values("as_of_date")["health_score"]]
        for aid, g in history.groupby("account_id")
    }

    prev_by_id = prev.set_index("account_id") if prev is not None else None
    top_rows = []
    for rec in now.sort_values(["arr_at_risk", "account_id"], ascending=[False, True]).head(TOP_ACCOUNTS).to_dict("records"):
        previous = None
        if prev_by_id is not None and rec["account_id"] in prev_by_id.index:
            previous = prev_by_id.loc[rec["account_id"]].to_dict()
        top_rows.append(_account_row(rec, previous, trends.get(str(rec["account_id"]), []), include_contacts))

    digest = Digest(
        week_ending=week_ending,
        this_date=this_date,
        last_date=last_date,
        generated_at=generated_at,
        currency=currency,
        highlights=[],
        headline=_headline(now, prev, subs, week_ending, churn_grace_days),
        top_accounts=AccountsSection(top_rows, None if top_rows else "no scored accounts this week"),
        movers=_movers(now, prev, trends, include_contacts),
        drivers=_drivers(now, prev, feature_family),
        outreach=_outreach(engine, week_ending, subs, outcome_horizon_days, churn_grace_days),
        surveys=_surveys(engine, week_ending, names, include_verbatims),
        model=_model_health(engine, now, week_ending),
        charts=[],
        include_verbatims=include_verbatims,
        include_contacts=include_contacts,
    )
    if stale_note:
        digest.highlights.append(stale_note[:1].upper() + stale_note[1:] + ".")
    digest.highlights.extend(_highlights(digest))
    if charts:
        digest.charts.extend(build_charts(history, digest))
    return digest


# ----------------------------------------------------------------------------------------
# charts
# ----------------------------------------------------------------------------------------

_CHART_TITLES = {
    "band_mix": "Accounts by health band, last 12 weeks",
    "arr_at_risk": "ARR at risk, last 12 weeks",
    "drivers": "What drives risk this week",
}


def _figure(height: float = 2.9) -> tuple[Figure, Axes]:
    """A phone-first figure: 4.8 in wide so 11 pt text stays ~11 px on a 375 px screen.

    Built on the Agg canvas directly, not pyplot: no global backend switch, no figure
    registry to leak, and safe to call from worker threads (Prefect task runners).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fig.patch.set_alpha(0.0)
    ax.set_facecolor("none")
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    for spine in ("left", "bottom"):
        ax.spines[spine].set_color(CHART_TEXT)
    ax.tick_params(colors=CHART_TEXT, labelsize=10.5)
    ax.xaxis.label.set_color(CHART_TEXT)
    ax.yaxis.label.set_color(CHART_TEXT)
    ax.grid(axis="y", color=CHART_TEXT, alpha=0.25, linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=200, transparent=True)
    return buf.getvalue()


def _money_axis(ax: Axes, currency: str) -> None:
    from matplotlib.ticker import FuncFormatter

    def short(v: float, _pos: int) -> str:  # tick labels: $1.5M, $500k, $0 (no trailing zeros)
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return f"{currency}{v / scale:.3g}{suffix}"
        return f"{currency}{v:.0f}"

    ax.yaxis.set_major_formatter(FuncFormatter(short))


def build_charts(history: pd.DataFrame, digest: Digest) -> list[Chart]:
    """Band mix, ARR-at-risk trend and driver bars as transparent PNGs with phone-size text."""
    out: list[Chart] = []
    weeks = sorted(history["as_of_date"].unique()) if not history.empty else []
    labels = [pd.Timestamp(d).strftime("%d %b") for d in weeks]
    step = max(1, math.ceil(len(labels) / 6))  # at most ~6 tick labels on a phone

    if len(weeks) >= 2:
        counts = history.pivot_table(index="as_of_date", columns="band", values="account_id", aggfunc="count").reindex(weeks).fillna(0)
        fig, ax = _figure()
        bottom = [0.0] * len(weeks)
        for band in ("green", "yellow", "red"):
            vals = counts[band].tolist() if band in counts else [0.0] * len(weeks)
            ax.bar(range(len(weeks)), vals, bottom=bottom, color=BAND_COLOURS[band], label=band.capitalize(), width=0.75)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(0, len(weeks), step), labels[::step])
        ax.set_ylabel("Accounts", fontsize=11)
        ax.set_xlabel("Score date (weekly)", fontsize=11)
        leg = ax.legend(ncols=3, fontsize=10.5, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        for t in leg.get_texts():
            t.set_color(CHART_TEXT)
        red_now = int(counts["red"].iloc[-1]) if "red" in counts else 0
        out.append(Chart("band_mix", _CHART_TITLES["band_mix"],
                         f"Stacked bars of green, yellow and red accounts per week; {red_now} red in the latest week.", _png(fig)))

        arr = history.groupby("as_of_date")["arr_at_risk"].sum().reindex(weeks)
        red_arr = history[history["band"] == "red"].groupby("as_of_date")["arr_at_risk"].sum().reindex(weeks).fillna(0)
        fig, ax = _figure()
        ax.plot(range(len(weeks)), arr.values, color="#4c78a8", linewidth=2.5, marker="o", markersize=4, label="All accounts")
        ax.plot(range(len(weeks)), red_arr.values, color=BAND_COLOURS["red"], linewidth=2, linestyle="--", label="Red accounts")
        ax.set_ylim(bottom=0)
        _money_axis(ax, digest.currency)
        ax.set_xticks(range(0, len(weeks), step), labels[::step])
        ax.set_ylabel("ARR at risk", fontsize=11)
        ax.set_xlabel("Score date (weekly)", fontsize=11)
        leg = ax.legend(ncols=2, fontsize=10.5, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        for t in leg.get_texts():
            t.set_color(CHART_TEXT)
        out.append(Chart("arr_at_risk", _CHART_TITLES["arr_at_risk"],
                         f"Line chart of ARR at risk per week, now {fmt_money(float(arr.iloc[-1]), digest.currency)}.", _png(fig)))
    else:
        reason = "fewer than two weekly score days: no trend to draw yet"
        out.append(Chart("band_mix", _CHART_TITLES["band_mix"], _CHART_TITLES["band_mix"], None, reason))
        out.append(Chart("arr_at_risk", _CHART_TITLES["arr_at_risk"], _CHART_TITLES["arr_at_risk"], None, reason))

    feats = digest.drivers.features
    if feats:
        feats = list(reversed(feats))  # largest at the top of a horizontal bar chart
        fig, ax = _figure(height=1.5 + 0.42 * len(feats))
        ax.grid(axis="x", color=CHART_TEXT, alpha=0.25, linewidth=0.8)
        ax.grid(axis="y", visible=False)
        ys = range(len(feats))
        ax.barh(ys, [f.share * 100 for f in feats], color=[FAMILY_COLOURS.get(f.family, FAMILY_COLOURS["other"]) for f in feats], height=0.65)
        from matplotlib.patches import Patch

        handles = [Patch(color=FAMILY_COLOURS.get(fam, FAMILY_COLOURS["other"]), label=fam)
                   for fam in dict.fromkeys(f.family for f in reversed(feats))]
        if all(f.previous_share is not None for f in feats):
            handles.append(ax.scatter([f.previous_share * 100 for f in feats], ys, marker="|", s=260, linewidths=2.5,
                                      color=CHART_TEXT, zorder=3, label="last week"))
        leg = ax.legend(handles=handles, ncols=3, fontsize=10, frameon=False, loc="lower center",
                        bbox_to_anchor=(0.35, 1.0), handlelength=1.2, columnspacing=1.0)
        for t in leg.get_texts():
            t.set_color(CHART_TEXT)
        ax.set_yticks(list(ys), [textwrap.shorten(f.label, 26, placeholder="…") for f in feats], fontsize=10.5)
        ax.set_xlabel("Share of at-risk drivers (%)", fontsize=11)
        out.append(Chart("drivers", _CHART_TITLES["drivers"],
                         "Horizontal bars of the features that drive risk most: "
                         + ", ".join(f"{f.label} {f.share:.0%}" for f in reversed(feats)) + ".", _png(fig)))
    else:
        out.append(Chart("drivers", _CHART_TITLES["drivers"], _CHART_TITLES["drivers"], None,
                         digest.drivers.reason or "no drivers to chart"))
    return out


# ----------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------


def _jinja_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["money"] = fmt_money
    env.filters["value"] = fmt_value
    env.filters["delta"] = fmt_delta
    return env


def render_html(digest: Digest, *, images: Literal["data", "cid"] = "data") -> str:
    """Self-contained HTML: charts inlined as ``data:`` URIs (files, previews) or ``cid:`` (mail)."""
    srcs = {c.key: (c.data_uri() if images == "data" else f"cid:{c.cid}") for c in digest.charts if c.png}
    return _jinja_env().get_template(HTML_TEMPLATE).render(d=digest, srcs=srcs)


def _wrap(text: str, indent: str = "", width: int = 72) -> str:
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ")


def _change_text(m: Metric, currency: str) -> str:
    return "" if m.change is None else f" ({fmt_delta(m.change, m.unit, currency)} vs last week)"


def _lines(digest: Digest, md: bool) -> list[str]:
    """Shared body of the text and markdown renderers (they differ only in markup)."""
    cur = digest.currency
    h2 = (lambda s: ["", f"## {s}", ""]) if md else (lambda s: ["", s.upper(), "-" * len(s)])
    bullet = "- " if md else "* "
    out: list[str] = [f"# {digest.title}" if md else digest.title, ""]
    if digest.this_date:
        compared = f"compared with {digest.last_date.isoformat()}" if digest.last_date else "no earlier scores to compare"
        out.append(f"Scores of {digest.this_date.isoformat()}, {compared}.")
    if digest.reason:
        out.append(f"Note: {digest.reason}.")
    if digest.highlights:
        out += h2("This week in brief")
        out += [bullet + s for s in digest.highlights]

    out += h2("Headline")
    if digest.headline.note:
        out.append(f"Note: {digest.headline.note}.")
    for m in digest.headline.metrics:
        out.append(f"{bullet}{m.label}: {fmt_value(m.current, m.unit, cur)}{_change_text(m, cur)}")

    out += h2("Top accounts by ARR at risk")
    if not digest.top_accounts.rows:
        out.append(f"Not shown: {digest.top_accounts.reason}.")
    for i, r in enumerate(digest.top_accounts.rows, 1):
        change = "" if r.health_change is None else f", {fmt_delta(r.health_change, 'score')} wow"
        name = f"**{r.name}**" if md else r.name
        was = f", was {r.previous_band}" if r.previous_band and r.previous_band != r.band else ""
        out.append(f"{i}. {name} — {fmt_money(r.arr_at_risk, cur)} at risk of {fmt_money(r.arr, cur)} ({r.band}{was})")
        indent = "   - " if md else "   "
        out.append(f"{indent}Health {r.health}{change} {r.sparkline} · owner {r.owner}")
        out += [indent + ("" if md else "- ") + s for s in r.drivers]

    out += h2("Biggest movers")
    if not digest.movers.movers:
        out.append(f"None: {digest.movers.movers_reason}.")
    for r in digest.movers.movers:
        bands = f"{r.previous_band} → {r.band}" if r.previous_band != r.band else f"still {r.band}"
        out.append(f"{bullet}{r.name}: health {r.previous_health} → {r.health} ({fmt_delta(r.health_change, 'score')}), "
                   f"{bands}, {fmt_money(r.arr_at_risk, cur)} at risk; owner {r.owner}"
                   + (f" — {r.drivers[0]}" if r.drivers else ""))
    out += h2("New red accounts")
    if not digest.movers.new_reds:
        out.append(f"None: {digest.movers.new_reds_reason}.")
    for r in digest.movers.new_reds:
        was = r.previous_band or "not scored"
        out.append(f"{bullet}{r.name}: was {was}, {fmt_money(r.arr_at_risk, cur)} at risk; owner {r.owner}"
                   + (f" — {r.drivers[0]}" if r.drivers else ""))

    out += h2("What drives risk")
    dr = digest.drivers
    if dr.reason:
        out.append(f"Not shown: {dr.reason}.")
    else:
        out.append(f"Share of risk drivers across {dr.at_risk_accounts} yellow and red accounts.")
        if dr.previous_reason:
            out.append(f"No comparison: {dr.previous_reason}.")
        for f in dr.families:
            ch = "" if f.change is None else f" ({fmt_delta(f.change, 'percent')})"
            out.append(f"{bullet}{f.label}: {f.share:.0%}{ch}")
        out.append("### Top features" if md else "Top features:")
        for f in dr.features:
            ch = "" if f.change is None else f" ({fmt_delta(f.change, 'percent')})"
            out.append(f"{bullet}{f.label} [{f.family}]: {f.share:.0%}{ch}, {f.accounts} account(s)")

    out += h2("Outreach")
    o = digest.outreach
    if o.reason:
        out.append(f"Not shown: {o.reason}.")
    if o.playbooks:
        if md:
            out += ["| playbook | created | held out | sent to date | completed |", "|---|---:|---:|---:|---:|"]
        for p in o.playbooks:
            rate = "–" if p.completion_rate is None else f"{p.completion_rate:.0%}"
            if md:
                out.append(f"| {p.playbook} | {p.created} | {p.held_out} | {p.sent_to_date} | {p.completed_to_date} ({rate}) |")
            else:
                out.append(f"{bullet}{p.playbook}: {p.created} created this week (last week {p.previous_created}), "
                           f"{p.held_out} held out; {p.completed_to_date} of {p.sent_to_date} sent completed ({rate})")
    out.append("")
    out.append("### Lift vs holdout" if md else "Lift vs holdout:")
    if not o.lift:
        out.append(f"Not yet: {o.lift_reason}.")
    for l in o.lift:
        caveat = " — small sample, directional only" if l.small_sample else ""
        out.append(f"{bullet}{l.playbook}: churn {l.treated_rate:.0%} with outreach (n={l.treated}) vs "
                   f"{l.holdout_rate:.0%} held out (n={l.holdout}); lift {l.lift * 100:+.1f} pp{caveat}")

    out += h2("Survey pulse")
    s = digest.surveys
    if s.reason:
        out.append(f"Not shown: {s.reason}.")
    else:
        out.append(f"{s.responses} responses this week ({s.previous_responses} last week).")
        for m in s.metrics:
            out.append(f"{bullet}{m.label}: {fmt_value(m.current, m.unit)}{_change_text(m, cur)}")
        if s.verbatims:
            out.append("")
            out.append("### What customers said" if md else "What customers said:")
            for v in s.verbatims:
                out.append(f"{'> ' if md else '  '}\"{v.comment}\" — {v.account} ({v.kind} {v.score:g})")
                if md:
                    out.append("")  # one blockquote per comment
        elif s.comments_withheld:
            out.append(f"{s.comments_withheld} comment(s) withheld for privacy (include_verbatims is off).")

    out += h2("Model health")
    mh = digest.model
    out.append(f"Champion: {mh.model_name or '–'} version {mh.champion or '–'}"
               + (f", scored {mh.scored_at:%Y-%m-%d %H:%M} UTC" if mh.scored_at else ""))
    if mh.realized_auc is not None:
        prev = "" if mh.previous_auc is None else f" (previous check {mh.previous_auc:.3f})"
        out.append(f"Realized AUC: {mh.realized_auc:.3f}{prev}")
    if mh.psi_score is not None:
        out.append(f"Score drift (PSI): {mh.psi_score:.3f}")
    if mh.reason:
        out.append(f"Note: {mh.reason}.")
    if mh.checked_at is not None:
        if mh.drift:
            out.append("Drift flags:")
            out += [f"{bullet}{f.metric} = {f.value:.3f}: {f.detail}" for f in mh.drift]
        else:
            out.append("No drift flags at the latest check.")
    unavailable = [c for c in digest.charts if not c.png]
    if unavailable:
        out += h2("Charts")
        out += [f"{bullet}{c.title}: {c.reason}." for c in unavailable]
    out += ["", f"Generated {digest.generated_at:%Y-%m-%d %H:%M} UTC by churnflow."]
    return out


def render_text(digest: Digest) -> str:
    """The plain-text alternative part: wrapped at 72 columns for any mail client."""
    lines = []
    for line in _lines(digest, md=False):
        if len(line) <= 72:
            lines.append(line)
        else:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(_wrap(line.strip(), indent))
    return "\n".join(lines).strip() + "\n"


def render_markdown(digest: Digest) -> str:
    """Markdown for a Prefect artifact (no images: artifacts should stay small)."""
    out: list[str] = []
    for line in _lines(digest, md=True):
        block = line.startswith(("- ", "   - ", "|", "> ")) or line[:1].isdigit() and ". " in line[:4]
        if not line or block:
            out.append(line)
        else:  # a paragraph or heading: blank lines around it so it never merges into a list
            out += ["", line, ""]
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


# ----------------------------------------------------------------------------------------
# delivery
# ----------------------------------------------------------------------------------------


def write_digest(digest: Digest, out_dir: Path | str) -> Path:
    """Write ``digest-<week_ending>.html`` and ``.txt``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / f"digest-{digest.week_ending.isoformat()}.html"
    html_path.write_text(render_html(digest, images="data"), encoding="utf-8")
    html_path.with_suffix(".txt").write_text(render_text(digest), encoding="utf-8")
    log.info("wrote digest to %s", html_path)
    return html_path


def build_message(digest: Digest, config: SmtpConfig) -> EmailMessage:
    """multipart/alternative: text, then multipart/related (HTML + charts as cid: images)."""
    msg = EmailMessage()
    msg["Subject"] = digest.subject
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.sender.rsplit("@", 1)[-1] or "churnflow")
    msg.set_content(render_text(digest))
    msg.add_alternative(render_html(digest, images="cid"), subtype="html")
    html_part = msg.get_payload()[1]
    for chart in digest.charts:
        if chart.png:
            html_part.add_related(chart.png, maintype="image", subtype="png", cid=f"<{chart.cid}>",
                                  filename=f"{chart.key}.png", disposition="inline")
    return msg


def send_digest(digest: Digest, config: SmtpConfig) -> None:
    """Mail the digest (text + HTML with inline charts) through the configured relay."""
    send_message(build_message(digest, config), config)


@dataclass(frozen=True)
class PublishedDigest:
    """What publishing a digest produced: the file, the Markdown for Prefect, whether it was mailed."""

    path: Path
    markdown: str
    emailed_to: tuple[str, ...]


def smtp_config_from(settings: Settings) -> SmtpConfig | None:
    """The SMTP config for the digest's recipients, or None when mail is not configured."""
    return smtp_config(settings, settings.smtp_recipients)


def publish_digest(engine: sa.Engine, settings: Settings, week_ending: date, *, send: bool = True) -> PublishedDigest:
    """Build the digest with the configured options, write its files and mail it if SMTP is set.

    The one entry point the CLI and the weekly flow share.
    """
    from features.catalogue import CATALOGUE

    digest = build_digest(
        engine,
        week_ending,
        include_verbatims=settings.digest_include_verbatims,
        include_contacts=settings.digest_include_contacts,
        feature_family={f.name: f.family for f in CATALOGUE},
        outcome_horizon_days=settings.horizon_days,
        churn_grace_days=settings.churn_grace_days,
        currency=settings.currency,
    )
    path = write_digest(digest, settings.digests)
    config = smtp_config_from(settings) if send else None
    if config is not None:
        send_digest(digest, config)
    return PublishedDigest(path, render_markdown(digest), config.recipients if config else ())

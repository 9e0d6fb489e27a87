"""The feature catalogue: every feature declared once.

An entry gives the feature's name, family, window, description, unit, the direction that
raises risk and the sentence used to explain a score. ``docs/features.md`` and the
plain-words drivers shown to CS teams are generated from these entries; the builder in
``features.build`` must produce exactly these columns (a test checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Family = Literal["usage", "support", "perception", "commercial", "lifecycle"]
FAMILIES: tuple[Family, ...] = ("usage", "support", "perception", "commercial", "lifecycle")


@dataclass(frozen=True)
class Feature:
    name: str
    family: Family
    description: str
    unit: str
    risk_when: Literal["higher", "lower", "category"]
    # str.format template: {value}; also {abs_pct} and {direction} (fell/rose) for ratios and
    # {onoff} for flags. For categorical features {value} is the label.
    sentence: str
    window_days: int | None = None
    categories: tuple[str, ...] = ()

    @property
    def is_categorical(self) -> bool:
        return bool(self.categories)

    def explain(self, value: object) -> str:
        """The plain-words sentence for this feature at ``value``."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{self.description}: no data"
        if self.is_categorical:
            return self.sentence.format(value=value)
        number = float(value)  # type: ignore[arg-type]
        return self.sentence.format(
            value=number, abs_pct=abs(number) * 100, direction="fell" if number < 0 else "rose", onoff="on" if number else "off"
        )


F = Feature
CATALOGUE: tuple[Feature, ...] = (
    # -- usage ---------------------------------------------------------------------
    F("active_users_7d", "usage", "Distinct active users in the last 7 days", "users", "lower",
      "{value:.0f} active users in the last 7 days", 7),
    F("active_users_30d", "usage", "Distinct active users in the last 30 days", "users", "lower",
      "{value:.0f} active users in the last 30 days", 30),
    F("active_users_90d", "usage", "Distinct active users in the last 90 days", "users", "lower",
      "{value:.0f} active users in the last 90 days", 90),
    F("events_7d", "usage", "Product events in the last 7 days", "events", "lower",
      "{value:,.0f} product events in the last 7 days", 7),
    F("events_30d", "usage", "Product events in the last 30 days", "events", "lower",
      "{value:,.0f} product events in the last 30 days", 30),
    F("events_90d", "usage", "Product events in the last 90 days", "events", "lower",
      "{value:,.0f} product events in the last 90 days", 90),
    F("usage_trend_30d", "usage", "Change in events, last 30 days vs the 30 before", "ratio", "lower",
      "Product usage {direction} {abs_pct:.0f}% over the last 30 days", 60),
    F("active_users_trend_30d", "usage", "Change in active users, last 30 days vs the 30 before", "ratio", "lower",
      "Active users {direction} {abs_pct:.0f}% over the last 30 days", 60),
    F("features_used_30d", "usage", "Distinct product features used in the last 30 days (adoption breadth)", "features", "lower",
      "{value:.0f} product features used in the last 30 days", 30),
    F("days_since_last_activity", "usage", "Full days since the last day with any product activity (0: used the day before)", "days", "higher",
      "{value:.0f} days since anyone used the product", 365),
    F("error_rate_30d", "usage", "Errors per product event in the last 30 days", "ratio", "higher",
      "{abs_pct:.1f}% of product events hit an error in the last 30 days", 30),
    F("seat_utilisation_30d", "usage", "Active users in the last 30 days per licensed seat", "ratio", "lower",
      "{abs_pct:.0f}% of licensed seats active in the last 30 days", 30),
    # -- support -------------------------------------------------------------------
    F("tickets_30d", "support", "Support tickets opened in the last 30 days", "tickets", "higher",
      "{value:.0f} support tickets opened in the last 30 days", 30),
    F("tickets_90d", "support", "Support tickets opened in the last 90 days", "tickets", "higher",
      "{value:.0f} support tickets opened in the last 90 days", 90),
    F("open_tickets", "support", "Tickets still open", "tickets", "higher",
      "{value:.0f} support tickets still open"),
    F("high_priority_share_90d", "support", "Share of tickets that were high or urgent priority, last 90 days", "ratio", "higher",
      "{abs_pct:.0f}% of recent tickets were high or urgent priority", 90),
    F("median_first_response_minutes_90d", "support", "Median minutes to first response, last 90 days", "minutes", "higher",
      "Support took a median {value:,.0f} minutes to first respond", 90),
    F("median_resolution_hours_90d", "support", "Median hours to resolve tickets closed in the last 90 days", "hours", "higher",
      "Tickets took a median {value:,.0f} hours to resolve", 90),
    F("reopen_rate_90d", "support", "Share of tickets reopened, last 90 days", "ratio", "higher",
      "{abs_pct:.0f}% of recent tickets were reopened", 90),
    F("first_contact_resolution_90d", "support", "Share of closed tickets resolved without reopening, last 90 days", "ratio", "lower",
      "{abs_pct:.0f}% of recent tickets were resolved at first contact", 90),
    # -- perception ------------------------------------------------------------------
    F("csat_top2_box_90d", "perception", "Share of CSAT answers that were 4 or 5, last 90 days", "ratio", "lower",
      "{abs_pct:.0f}% of recent CSAT answers were satisfied (4-5)", 90),
    F("nps_latest", "perception", "Most recent NPS answer (0-10), last 365 days", "score", "lower",
      "Latest NPS answer was {value:.0f} out of 10", 365),
    F("nps_category", "perception", "Category of the latest NPS answer", "category", "category",
      "Latest NPS answer is a {value}", 365, ("promoter", "passive", "detractor", "none")),
    F("nps_trend", "perception", "Latest NPS answer minus the one before", "points", "lower",
      "NPS moved {value:+.0f} points since the previous answer", 365),
    F("ces_mean_90d", "perception", "Mean customer effort score (1-7, higher is harder), last 90 days", "score", "higher",
      "Customers rated effort {value:.1f} out of 7 recently", 90),
    F("comment_sentiment_90d", "perception", "Mean sentiment of survey comments (-1 to 1), last 90 days", "score", "lower",
      "Survey comments read {value:+.2f} on a -1 to 1 sentiment scale", 90),
    F("complaints_wait_time_90d", "perception", "Survey comments about wait times, last 90 days", "comments", "higher",
      "{value:.0f} recent comments complained about wait times", 90),
    F("complaints_billing_90d", "perception", "Survey comments about billing or pricing, last 90 days", "comments", "higher",
      "{value:.0f} recent comments complained about billing or pricing", 90),
    F("complaints_bugs_90d", "perception", "Survey comments about bugs or errors, last 90 days", "comments", "higher",
      "{value:.0f} recent comments complained about bugs", 90),
    F("complaints_onboarding_90d", "perception", "Survey comments about onboarding or setup, last 90 days", "comments", "higher",
      "{value:.0f} recent comments complained about onboarding", 90),
    # -- commercial ------------------------------------------------------------------
    F("arr", "commercial", "Annual recurring revenue", "currency", "lower",
      "ARR is {value:,.0f}"),
    F("seats", "commercial", "Licensed seats", "seats", "lower",
      "{value:.0f} licensed seats"),
    F("plan", "commercial", "Current plan", "category", "category",
      "On the {value} plan", None, ("starter", "growth", "enterprise", "other")),
    F("segment", "commercial", "Customer segment", "category", "category",
      "A {value} customer", None, ("smb", "mid_market", "enterprise", "other")),
    F("days_to_renewal", "commercial", "Days until the next renewal (renewal date, term end or billing-cycle anniversary; empty when unknown)", "days", "lower",
      "Renewal is due in {value:.0f} days"),
    F("auto_renew", "commercial", "Whether the current term renews automatically (1 yes, 0 no)", "flag", "lower",
      "Auto-renew is {onoff}"),
    F("downgrades_365d", "commercial", "Renewals at lower ARR in the last 365 days", "renewals", "higher",
      "{value:.0f} downgrades in the last year", 365),
    # -- lifecycle -------------------------------------------------------------------
    F("tenure_days", "lifecycle", "Days since the account became a customer", "days", "lower",
      "Customer for {value:,.0f} days"),
    F("journey_stage", "lifecycle", "Onboarding (first 90 days), renewal window (90 days to renewal) or adoption", "category", "category",
      "In the {value} stage", None, ("onboarding", "adoption", "renewal_window")),
    F("days_to_first_value", "lifecycle", "Calendar days from becoming a customer to the first day of product activity", "days", "higher",
      "Took {value:.0f} days to first product use"),
)

BY_NAME: dict[str, Feature] = {f.name: f for f in CATALOGUE}
FEATURE_NAMES: list[str] = [f.name for f in CATALOGUE]
CATEGORICAL: list[str] = [f.name for f in CATALOGUE if f.is_categorical]
FEATURE_SET_VERSION = "2"  # bump when a feature's meaning changes (2: day-granular activity dates)


def family_of(name: str) -> str:
    return BY_NAME[name].family if name in BY_NAME else "other"


def features_markdown() -> str:
    """The text of docs/features.md."""
    lines = [
        "# Feature catalogue",
        "",
        "Generated from `features/catalogue.py` by `churnflow docs`; do not edit by hand.",
        "Every feature as of date D uses only rows stamped before D (see `docs/data-model.md`).",
        "",
    ]
    for family in FAMILIES:
        lines += [f"## {family}", "", "| feature | window | unit | risk rises when | description | example sentence |", "|---|---|---|---|---|---|"]
        for f in CATALOGUE:
            if f.family != family:
                continue
            example = f.explain(f.categories[0] if f.is_categorical else (-0.42 if f.unit == "ratio" else 3))
            window = f"{f.window_days} d" if f.window_days else "-"
            lines.append(f"| `{f.name}` | {window} | {f.unit} | {f.risk_when} | {f.description} | {example} |")
        lines.append("")
    return "\n".join(lines)

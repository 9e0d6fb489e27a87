"""The feature catalogue: every feature declared once.

An entry gives the feature's name, family, window, description, unit, the direction that
raises risk and the sentence used to explain a score. ``docs/features.md`` and the
plain-words drivers shown to CS teams are generated from these entries.

Static features are declared once in :data:`CATALOGUE`. A book's catalogue
(:func:`feature_catalogue`) is the static one minus the families whose source the customer
does not have (no surveys: no perception features, never zeros standing in for them), plus
dynamic entries built from the book itself: per-event-type usage counts
(:func:`event_type_features`) and mapped account / subscription attributes
(:func:`attribute_features`). A trained model keeps the catalogue it was built with, so
scoring and explaining need neither the mapping nor the data it was learned from.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from churnflow.vocabulary import FAMILIES, Family

if TYPE_CHECKING:  # churnflow.manifest imports churnflow.schema, which imports this module
    import sqlalchemy as sa

    from churnflow.manifest import AttributeSpec, DataManifest

log = logging.getLogger(__name__)

# The optional canonical table a family's features read; commercial (subscriptions) and
# lifecycle (accounts) read the tables every book has.
FAMILY_SOURCES: dict[str, tuple[str, ...]] = {"usage": ("usage",), "support": ("tickets",), "perception": ("surveys",)}
OPTIONAL_TABLES: tuple[str, ...] = ("usage", "tickets", "surveys")
# risk_when "learned": the direction is not known a priori (a "dislike" count raises risk, a
# "like" count lowers it); the sentence states the fact and the model's SHAP sign decides
# whether it is shown as a risk or a protective driver.
RiskWhen = Literal["higher", "lower", "category", "learned"]
Origin = Literal["static", "event_type", "attribute"]
# What a feature is to a CS team. "signal": a reason, shown only with its direction and a
# baseline. "context": a fact about who the customer is or where they stand (tenure, ARR,
# plan, renewal date): shown as context beside the reasons, never as a reason itself.
Role = Literal["signal", "context"]
# How a signal's sentence says which way it points. "peers": the value against the typical
# value of comparable accounts on the same day ("28%, well below the 65% typical for
# mid-market accounts"). "change": the value is itself a change and its sign is the
# direction ("fell 42%"); the sentence template says it with {direction}.
Comparison = Literal["peers", "change"]

# Relative distance from the baseline that separates "close to" from "below"/"above", and
# "below"/"above" from "well below"/"well above" (docs/health-score.md).
CLOSE_TO, WELL_BEYOND = 0.10, 0.50
# The words that say which way a sentence points or what it is compared with. A reason shown
# to a CS team must contain one (:func:`states_direction`); "Customer for 1,775 days" does not.
DIRECTION_WORDS = re.compile(
    r"\b(fell|rose|dropped|grew|increased|decreased|below|above|close to|typical|than|unlike|like most|compared with)\b",
    re.IGNORECASE,
)


def states_direction(sentence: str) -> bool:
    """Whether a reason says which way it pushes or compared with what (not a bare fact)."""
    return bool(DIRECTION_WORDS.search(sentence))


def compare_word(value: float, baseline: float) -> str:
    """Where ``value`` sits against ``baseline``: well below, below, close to, above, well above.

    Relative to the baseline's size (or the value's when the baseline is 0), so 3 tickets
    against a typical 0 are "well above" and a sentiment of -0.30 against -0.25 "below"."""
    scale = abs(baseline) or abs(value) or 1.0
    rel = (value - baseline) / scale
    if abs(rel) < CLOSE_TO:
        return "close to"
    if rel < 0:
        return "well below" if rel <= -WELL_BEYOND else "below"
    return "well above" if rel >= WELL_BEYOND else "above"


def format_amount(value: float, unit: str) -> str:
    """A baseline written the way the feature's sentence writes values of its unit."""
    if unit == "ratio":
        pct = abs(value) * 100
        return f"{pct:.1f}%" if 0 < pct < 10 else f"{pct:.0f}%"
    if unit in ("score", "points") and abs(value) < 10 and value != round(value):
        return f"{value:+.2f}" if abs(value) <= 1 else f"{value:.1f}"
    return f"{value:,.0f}" if abs(value) >= 10 or value == round(value) else f"{value:,.1f}"


@dataclass(frozen=True)
class Feature:
    name: str
    family: Family
    description: str
    unit: str
    risk_when: RiskWhen
    # str.format template: {value}; also {abs_pct} and {direction} (fell/rose) for ratios and
    # {onoff} for flags. For categorical features {value} is the label.
    sentence: str
    window_days: int | None = None
    # Categorical features: the values churnflow itself produces, in display order (used to
    # validate playbooks). Empty for values that come from the customer's data (plan,
    # segment, mapped attributes): the model learns those categories at training.
    categories: tuple[str, ...] = ()
    # Optional canonical tables the feature reads; empty: its family's (FAMILY_SOURCES).
    requires: tuple[str, ...] = ()
    origin: Origin = "static"
    # Dynamic features: the usage.feature value or the attribute name the feature reads.
    key: str = ""
    # Attributes: the canonical table the attribute belongs to (accounts or subscriptions).
    table: str = ""
    role: Role = "signal"
    compare: Comparison = "peers"

    @property
    def is_categorical(self) -> bool:
        return self.risk_when == "category"

    @property
    def sources(self) -> tuple[str, ...]:
        return self.requires or FAMILY_SOURCES.get(self.family, ())

    @property
    def is_context(self) -> bool:
        return self.role == "context"

    def explain(self, value: object, baseline: object = None, peers: str | None = None) -> str:
        """The plain-words sentence for this feature at ``value``: the catalogue's sentence,
        then, for a signal compared with peers and a ``baseline`` given, where the value sits
        against the typical value of ``peers`` ("..., well below the 65% typical for
        mid-market accounts")."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{self.description}: no data"
        if self.is_categorical:
            fact = self.sentence.format(value=value)
        else:
            number = float(value)  # type: ignore[arg-type]
            fact = self.sentence.format(
                value=number, abs_value=abs(number), abs_pct=abs(number) * 100,
                direction="fell" if number < 0 else "rose", onoff="on" if number else "off",
            )
        comparison = self.versus(value, baseline, peers)
        return f"{fact}, {comparison}" if comparison else fact

    def versus(self, value: object, baseline: object, peers: str | None) -> str | None:
        """The comparison clause of :meth:`explain`, or None when there is nothing to compare."""
        if self.is_context or self.compare != "peers" or baseline is None or peers is None or value is None:
            return None
        if self.is_categorical:
            return f"like most {peers}" if value == baseline else f"unlike most {peers} ({baseline})"
        number, typical = float(value), float(baseline)  # type: ignore[arg-type]
        if math.isnan(number) or math.isnan(typical):
            return None
        if self.unit == "flag":
            return f"like most {peers}" if (number >= 0.5) == (typical >= 0.5) else f"unlike most {peers}"
        return f"{compare_word(number, typical)} the {format_amount(typical, self.unit)} typical for {peers}"

    def risky_side(self, value: object, baseline: object) -> bool | None:
        """Whether ``value`` lies on the side that raises risk for this feature (True), the
        side that lowers it (False), or neither / unknown (None: a learned or categorical
        feature, no baseline, or a value close to the baseline). A rise in usage is never on
        the risky side; a fall never on the protective one."""
        if self.risk_when not in ("higher", "lower") or value is None:
            return None
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number):
            return None
        if self.compare == "change":
            delta = number
        else:
            if baseline is None or math.isnan(float(baseline)):  # type: ignore[arg-type]
                return None
            if self.unit == "flag":
                delta = (number >= 0.5) - (float(baseline) >= 0.5)  # type: ignore[arg-type]
            else:
                word = compare_word(number, float(baseline))  # type: ignore[arg-type]
                delta = 0.0 if word == "close to" else number - float(baseline)  # type: ignore[arg-type]
        if delta == 0:
            return None
        return (delta > 0) == (self.risk_when == "higher")


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
      "Product usage {direction} {abs_pct:.0f}% over the last 30 days", 60, compare="change"),
    F("active_users_trend_30d", "usage", "Change in active users, last 30 days vs the 30 before", "ratio", "lower",
      "Active users {direction} {abs_pct:.0f}% over the last 30 days", 60, compare="change"),
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
      "NPS {direction} {abs_value:.0f} points since the previous answer", 365, compare="change"),
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
      "ARR is {value:,.0f}", role="context"),
    F("seats", "commercial", "Licensed seats", "seats", "lower",
      "{value:.0f} licensed seats", role="context"),
    F("plan", "commercial", "Current plan", "category", "category",
      "On the {value} plan", role="context"),
    F("segment", "commercial", "Customer segment", "category", "category",
      "A {value} customer", role="context"),
    F("days_to_renewal", "commercial", "Days until the next renewal (renewal date, term end or billing-cycle anniversary; empty when unknown)", "days", "lower",
      "Renewal is due in {value:.0f} days", role="context"),
    F("auto_renew", "commercial", "Whether the current term renews automatically (1 yes, 0 no)", "flag", "lower",
      "Auto-renew is {onoff}"),
    F("downgrades_365d", "commercial", "Renewals at lower ARR in the last 365 days", "renewals", "higher",
      "{value:.0f} downgrades in the last year", 365),
    # -- lifecycle -------------------------------------------------------------------
    F("tenure_days", "lifecycle", "Days since the account became a customer", "days", "lower",
      "Customer for {value:,.0f} days", role="context"),
    F("journey_stage", "lifecycle", "Onboarding (first 90 days), renewal window (90 days to renewal) or adoption", "category", "category",
      "In the {value} stage", None, ("onboarding", "adoption", "renewal_window"), role="context"),
    F("days_to_first_value", "lifecycle", "Calendar days from becoming a customer to the first day of product activity", "days", "higher",
      "Took {value:.0f} days to first product use", requires=("usage",), role="context"),
)

BY_NAME: dict[str, Feature] = {f.name: f for f in CATALOGUE}
FEATURE_NAMES: list[str] = [f.name for f in CATALOGUE]
CATEGORICAL: list[str] = [f.name for f in CATALOGUE if f.is_categorical]
# Bump when a feature's meaning changes. 2: day-granular activity dates. 3: optional families,
# per-event-type usage, mapped attributes, raw plan/segment values (categories learned at fit).
FEATURE_SET_VERSION = "3"

SLUG_MAX = 40  # characters of a customer value kept in a feature name (names stay < 63, PostgreSQL's limit)


def current_entry(feature: Feature) -> Feature:
    """An entry as this churnflow words it, for a catalogue stored with an older model: a
    static feature's entry from :data:`CATALOGUE` (sentence, role, comparison); a dynamic one
    pickled before roles and comparisons existed gets them (a per-event-type trend is a
    change, a category attribute is context). Wording only: which features exist is the
    model's."""
    if feature.origin == "static" and feature.name in BY_NAME:
        return BY_NAME[feature.name]
    if "role" in feature.__dict__:
        return feature
    trend = feature.origin == "event_type" and feature.unit == "ratio"
    return replace(feature, role="context" if feature.origin == "attribute" and feature.is_categorical else "signal",
                   compare="change" if trend else "peers")


def family_of(name: str, catalogue: Iterable[Feature] = CATALOGUE) -> str:
    """The family of a feature of ``catalogue`` (default: the static one); "other" if unknown."""
    for feature in catalogue:
        if feature.name == name:
            return feature.family
    return "other"


def slugify(value: str, max_length: int = SLUG_MAX) -> str:
    """A customer value as part of a column name: lowercase ``[a-z0-9_]``, bounded length."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(value).strip().lower()).strip("_")[:max_length].strip("_")
    return slug or "x"


def _unique(base: str, names: Callable[[str], list[str]], taken: set[str]) -> list[str]:
    """The first ``names(candidate)`` (candidate = base, base_2, base_3, ...) none of which is taken."""
    k = 1
    while True:
        candidate = base if k == 1 else f"{base}_{k}"
        out = names(candidate)
        if not taken.intersection(out) and len(set(out)) == len(out):
            return out
        k += 1


def event_type_features(event_types: Sequence[str], taken: Iterable[str] = FEATURE_NAMES) -> tuple[Feature, ...]:
    """Per-event-type usage features: counts over 30 and 90 days and the 30-day trend.

    Names are slugs of the event type; slugs that collide (with each other or ``taken``)
    are resolved deterministically by suffixing ``_2``, ``_3``, ... in sorted order of the raw
    values, so the same types always give the same names whatever their frequency order.
    Direction is not known a priori (likes are good, dislikes bad): risk_when is "learned"
    and the sentences state the fact.
    """
    used = set(taken)
    named: dict[str, list[str]] = {}
    for raw in sorted(set(event_types)):
        names = _unique(slugify(raw), lambda s: [f"events_{s}_30d", f"events_{s}_trend_30d", f"events_{s}_90d"], used)
        used.update(names)
        named[raw] = names
    out: list[Feature] = []
    for raw in dict.fromkeys(event_types):  # caller's order (frequency), duplicates dropped
        n30, trend, n90 = named[raw]
        label = raw.replace("{", "(").replace("}", ")")
        common = {"origin": "event_type", "key": raw}
        out += [
            Feature(n30, "usage", f"'{label}' events in the last 30 days", "events", "learned",
                    f"{{value:,.0f}} '{label}' events in the last 30 days", 30, **common),
            Feature(trend, "usage", f"Change in '{label}' events, last 30 days vs the 30 before", "ratio", "learned",
                    f"'{label}' events {{direction}} {{abs_pct:.0f}}% over the last 30 days", 60, compare="change", **common),
            Feature(n90, "usage", f"'{label}' events in the last 90 days", "events", "learned",
                    f"{{value:,.0f}} '{label}' events in the last 90 days", 90, **common),
        ]
    return tuple(out)


def _sentence_works(feature: Feature) -> bool:
    try:
        feature.explain("x" if feature.is_categorical else 1.0)
        return True
    except (KeyError, IndexError, ValueError, AttributeError):
        return False


def attribute_features(attributes: Sequence[AttributeSpec], taken: Iterable[str] = FEATURE_NAMES) -> tuple[Feature, ...]:
    """Mapped attributes as features: numbers as floats, categories as learned categoricals.

    Account attributes are lifecycle features (who the customer is), subscription attributes
    commercial ones (what they bought); the families stay the five of :data:`FAMILIES`. A name
    that collides with another feature gets an ``attr_`` prefix. A sentence the spec gives
    that does not format is replaced by a plain one (logged), never a failure at scoring.
    """
    used = set(taken)
    out: list[Feature] = []
    for spec in attributes:
        slug = slugify(spec.name)
        name = _unique(slug if slug not in used else f"attr_{slug}", lambda s: [s], used)[0]
        used.add(name)
        categorical = spec.kind == "category"
        label = spec.name.replace("{", "(").replace("}", ")")
        description = spec.description or f"{label} (mapped from {spec.table})"
        default_sentence = f"{label} is {{value}}" if categorical else f"{label} is {{value:,.4g}}"
        risk: RiskWhen = "category" if categorical else (spec.risk_when if spec.risk_when in ("higher", "lower") else "learned")
        feature = Feature(
            name, "commercial" if spec.table == "subscriptions" else "lifecycle", description,
            "category" if categorical else "value", risk, spec.sentence or default_sentence,
            origin="attribute", key=spec.name, table=spec.table,
            # A category attribute says who the customer is (industry, channel): context.
            role="context" if categorical else "signal",
        )
        if not _sentence_works(feature):
            log.warning("attribute %r: sentence %r does not format; using %r", spec.name, spec.sentence, default_sentence)
            feature = Feature(**{**feature.__dict__, "sentence": default_sentence})
        out.append(feature)
    return tuple(out)


def feature_catalogue(source: sa.Engine | DataManifest, event_types: Sequence[str] = ()) -> tuple[Feature, ...]:
    """The catalogue of a book: the static features whose sources exist, then one set of
    usage features per event type, then the mapped attributes.

    ``source`` is the warehouse (its manifest and the tables it holds) or a manifest alone
    (every table not declared absent counts as available).
    """
    from churnflow.manifest import DataManifest, available_tables, read_manifest
    from churnflow.schema import CANONICAL

    if isinstance(source, DataManifest):
        manifest, available = source, frozenset(t for t in CANONICAL if t not in source.absent)
    else:
        manifest, available = read_manifest(source), available_tables(source)
    static = tuple(f for f in CATALOGUE if set(f.sources) <= available)
    dynamic = event_type_features(event_types) if "usage" in available else ()
    attributes = attribute_features(manifest.attributes, [*FEATURE_NAMES, *(f.name for f in dynamic)])
    return static + dynamic + attributes


def families_of(catalogue: Iterable[Feature]) -> tuple[str, ...]:
    """The families present in ``catalogue``, in :data:`FAMILIES` order."""
    present = {f.family for f in catalogue}
    return tuple(f for f in FAMILIES if f in present)


_EXAMPLE_LABELS = {"plan": "growth", "segment": "mid_market"}  # docs only: values come from the book
_EXAMPLE_PEERS = "mid-market accounts"


def _example(feature: Feature) -> str:
    """The docs' example sentence: a change of -42%, else a value against a typical one."""
    if feature.is_categorical:
        label = feature.categories[0] if feature.categories else _EXAMPLE_LABELS.get(feature.name, "x")
        return feature.explain(label, label, _EXAMPLE_PEERS)
    if feature.compare == "change":
        return feature.explain(-0.42)
    value, typical = (0.28, 0.65) if feature.unit == "ratio" else (0.0, 1.0) if feature.unit == "flag" else (3, 5)
    return feature.explain(value, typical, _EXAMPLE_PEERS)


def _shown_as(feature: Feature) -> str:
    return "context" if feature.is_context else "reason: vs peers" if feature.compare == "peers" else "reason: change"


def features_markdown() -> str:
    """The text of docs/features.md."""
    lines = [
        "# Feature catalogue",
        "",
        "Generated from `features/catalogue.py` by `churnflow docs`; do not edit by hand.",
        "Every feature as of date D uses only rows stamped before D (see `docs/data-model.md`).",
        "",
        "A book's features are the static ones below whose source it has (a family whose table the",
        "mapping declares `absent`, or that is not in the warehouse, is left out: its features are",
        "neither computed nor given to the model), plus the dynamic ones at the end. At training,",
        "features that are constant or all missing on the fit slice are dropped and reported.",
        "",
        "*Shown as*: a **reason** says which way it points and compared with what: against the",
        "typical (median) value of the account's peers on the same as-of date (*vs peers*), or by",
        "the sign of a change (*change*); a **context** fact (tenure, ARR, plan, renewal date) is",
        "shown beside the reasons, never as one. See `docs/health-score.md`.",
        "",
    ]
    for family in FAMILIES:
        source = ", ".join(FAMILY_SOURCES.get(family, ())) or ("subscriptions" if family == "commercial" else "accounts")
        lines += [f"## {family}", "", f"Source: `{source}`.", "",
                  "| feature | window | unit | risk rises when | shown as | description | example sentence |", "|---|---|---|---|---|---|---|"]
        for f in CATALOGUE:
            if f.family != family:
                continue
            example = _example(f)
            window = f"{f.window_days} d" if f.window_days else "-"
            extra = [t for t in f.sources if t not in FAMILY_SOURCES.get(f.family, ())]
            description = f.description + (f" (needs `{'`, `'.join(extra)}`)" if extra else "")
            lines.append(f"| `{f.name}` | {window} | {f.unit} | {f.risk_when} | {_shown_as(f)} | {description} | {example} |")
        lines.append("")
    example = event_type_features(["unfriend"])
    lines += [
        "## Per-book features",
        "",
        "**Per event type** (family usage). For the event types named in the mapping",
        "(`usage_event_types`) or, by default, the `usage_event_types_top` (8) most frequent",
        "`usage.feature` values in the year before the as-of date (learned once at training and",
        "stored with the model, so scoring builds the same columns), three features read from the",
        "`usage_daily` rollup with the same windows as the totals. `<type>` is the value in",
        "lowercase `[a-z0-9_]`, at most 40 characters; values that collide get `_2`, `_3`, ... in",
        "sorted order of the raw values. Whether more events mean more or less risk is not known",
        "in advance (likes and dislikes), so risk rises when is *learned*: the sentence states the",
        "fact and the model's SHAP sign decides if it is shown as a risk or a protective driver.",
        "",
        "| feature | window | unit | risk rises when | shown as | description | example sentence (type `unfriend`) |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, pattern in zip(example, ("events_<type>_30d", "events_<type>_trend_30d", "events_<type>_90d")):
        lines.append(f"| `{pattern}` | {f.window_days} d | {f.unit} | {f.risk_when} | {_shown_as(f)} | {f.description.replace('unfriend', '<type>')} | {_example(f)} |")
    lines += [
        "",
        "**Mapped attributes** (`attributes:` in the mapping, values in `account_attributes`). An",
        "account attribute is a lifecycle feature, a subscription attribute (the value on the",
        "account's main active subscription at D) a commercial one. `kind: number` gives a float,",
        "`kind: category` a categorical; the sentence and `risk_when` come from the mapping",
        "(numbers without `risk_when` are *learned*). A name taken by another feature gets an",
        "`attr_` prefix. A number is a reason compared with peers; a category is context.",
        "",
        "**Categories** of categorical features (plan, segment, NPS category, journey stage,",
        "category attributes) are the values seen in the fit slice on at least max(20, 1% of its",
        "rows) rows; rarer values, missing ones (`none`) that are rare, and values first seen at",
        "scoring are `other`.",
        "",
    ]
    return "\n".join(lines)

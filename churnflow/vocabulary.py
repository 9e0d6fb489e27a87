"""The shared words of churnflow, each spelled once.

Several stages speak of the same things: the schema declares a column per feature family and
per verbatim topic, scoring assigns bands, outreach and the CRM push read and write task
statuses, the digest counts all of them. When each stage spelled these out for itself they
drifted (one place called a Deferred task closed, another did not), so they live here, in the
core, where every stage may import them and none has to import another stage to agree.
"""

from __future__ import annotations

from typing import Literal

# -- health bands --------------------------------------------------------------------------
Band = Literal["green", "yellow", "red"]
#: From healthiest to most at risk.
BANDS: tuple[Band, ...] = ("green", "yellow", "red")
#: Most at risk first: the order the digest and the CRM page list them in.
BANDS_BY_RISK: tuple[Band, ...] = ("red", "yellow", "green")
#: Bands on which outreach is considered (a green account gets no risk task).
AT_RISK_BANDS: tuple[Band, ...] = ("red", "yellow")


def band_label(band: str) -> str:
    """The band as the CRM picklist and people spell it ("Red")."""
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}: expected one of {', '.join(BANDS)}")
    return band.capitalize()


# -- feature families ----------------------------------------------------------------------
Family = Literal["usage", "support", "perception", "commercial", "lifecycle"]
#: The five families every feature belongs to; a sub-score and a schema column each.
FAMILIES: tuple[Family, ...] = ("usage", "support", "perception", "commercial", "lifecycle")

# -- verbatim topics -----------------------------------------------------------------------
#: Topic -> the words that flag it in a survey comment. The lexicon is the model: small on
#: purpose, so a data scientist can read and extend it (features.text applies it).
TOPICS: dict[str, tuple[str, ...]] = {
    "wait_time": ("wait", "waiting", "slow response", "no response", "days to respond", "took forever", "still waiting", "response time", "slow support", "hours"),
    "billing": ("billing", "invoice", "price", "pricing", "expensive", "cost", "charged", "overcharged", "renewal price", "budget"),
    "bugs": ("bug", "bugs", "error", "errors", "crash", "crashes", "broken", "outage", "down again", "fails", "failing"),
    "onboarding": ("onboarding", "setup", "set up", "implementation", "training", "getting started", "configure", "confusing to start"),
}

# -- CRM task statuses and priorities -------------------------------------------------------
#: Salesforce's default TaskStatus picklist, as churnflow deploys and reads it:
#: (value, is_closed, is_default). A task is closed exactly when the CRM says IsClosed, which
#: for these values is Completed only (Salesforce ships Deferred as an open status).
TASK_STATUS_VALUES: tuple[tuple[str, bool, bool], ...] = (
    ("Not Started", False, True),
    ("In Progress", False, False),
    ("Completed", True, False),
    ("Waiting on someone else", False, False),
    ("Deferred", False, False),
)
TASK_STATUSES: tuple[str, ...] = tuple(value for value, _closed, _default in TASK_STATUS_VALUES)
CLOSED_TASK_STATUSES: tuple[str, ...] = tuple(value for value, closed, _default in TASK_STATUS_VALUES if closed)
NEW_TASK_STATUS: str = next(value for value, _closed, default in TASK_STATUS_VALUES if default)
#: Salesforce's default Task priorities: (value, is_high, is_default).
TASK_PRIORITY_VALUES: tuple[tuple[str, bool, bool], ...] = (("High", True, False), ("Normal", False, True), ("Low", False, False))
TASK_PRIORITIES: tuple[str, ...] = tuple(value for value, _high, _default in TASK_PRIORITY_VALUES)
DEFAULT_TASK_PRIORITY: str = next(value for value, _high, default in TASK_PRIORITY_VALUES if default)

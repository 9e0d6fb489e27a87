"""The weekly executive risk digest: :func:`build_digest` composes its sections.

One message a week that an executive can read in a minute: where revenue is at risk, what
changed since last week, why, and what the team is doing about it. The digest only *reads*
what earlier stages stored (``account_scores``, ``outreach_tasks``, ``surveys``, ``accounts``,
the churn source of the labels and, when it exists, ``model_monitoring``); it never recomputes
features or retrains, so it always agrees with what CS teams saw in the CRM that week.

The package, by concern: :mod:`digest.data` reads the warehouse, :mod:`digest.sections` does
the section maths, :mod:`digest.charts` draws, :mod:`digest.render` formats (HTML, text,
Markdown) and :mod:`digest.publish` writes files and mails them.

Definitions (all dates are naive UTC days):

* **This week** is the latest ``account_scores.as_of_date`` on or before ``week_ending``;
  **last week** is the latest one on or before ``week_ending - 7 days``. Scores are daily,
  so comparing two score days a week apart is exact and needs no re-aggregation.
* **Event windows** (ARR churned, tasks created, survey responses) are the seven days
  ``week_ending - 6 .. week_ending``; the previous window is the seven days before that.
* **Churned** in a window: the churn rule of ``features.labels`` with the book's churn source
  (subscription coverage, or the ``churn_events`` table): a churn dated in the window that
  counts (the account did not come back within ``churn_grace_days``). With coverage a
  cancellation recorded on day D is a churn dated D + 1 (covered through the day they cancel).
  **ARR churned** adds each churned account's ARR in its last score before the churn. A
  renewal recorded after the digest is not known yet, so a late renewal can make a past
  week's number drop.
* **Portfolio drivers** add up the positive ``top_drivers`` contributions of at-risk (yellow
  and red) accounts (green accounts' drivers are noise for an executive). Shares are of the
  total, grouped by feature family from ``feature_family``; unmapped features fall in ``other``.
* **Outreach** tasks belong to the week of the scoring day that triggered them
  (``outreach_tasks.as_of_date``; ``created_at`` is the run's wall clock, which a backfill
  makes useless for weekly counts). Completion is the last status synced from the CRM
  (completion dates are not stored), counted over all sent tasks up to ``week_ending``.
* **Lift vs holdout** (:mod:`outreach.lift`) compares the churn label of ``features.labels``
  between sent tasks and held-out matches, only for labels matured by ``week_ending``
  (``features.labels.is_matured``: lead + horizon + grace passed). Until both groups of a
  playbook have matured outcomes the section says why instead of showing a number.

Privacy. By default the digest shows **no personal data**: survey verbatims are replaced by
a count, and account owners are shown as **initials derived from the owner's email**
(``jane.doe@corp.com`` -> ``JD``), which lets a CS lead recognise their team without putting
contact details into a mail that is often forwarded. ``include_contacts=True`` shows the
owner email instead; ``include_verbatims=True`` adds up to five of the week's survey
comments (lowest scores first, since those are the actionable ones). Account (company)
names are business data and always shown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa

from digest import data, sections
from digest.charts import CHART_TITLES, build_charts
from digest.report import AccountsSection, Chart, Digest, DriversSection, ModelHealth, MoversSection
from outreach.lift import playbook_lift
from outreach.task_table import tasks_up_to

log = logging.getLogger(__name__)


def build_digest(
    engine: sa.Engine,
    week_ending: date,
    *,
    include_verbatims: bool = False,
    include_contacts: bool = False,
    feature_family: Mapping[str, str] | None = None,
    outcome_horizon_days: int = 90,
    churn_grace_days: int = 30,
    label_lead_days: int = 0,
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
        label_lead_days: Label lead time, as for labels (``Settings.label_lead_days``).
        currency: Symbol for money figures (ARR is in the reporting currency).
        charts: Render the PNG charts (off saves ~0.5 s when only numbers are needed).
    """
    feature_family = dict(feature_family or {})
    generated_at = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    dates = data.score_dates(engine, week_ending)
    this_date = data.latest_on_or_before(dates, week_ending)
    last_date = data.latest_on_or_before(dates, week_ending - timedelta(days=7))
    stale_note: str | None = None
    if this_date is not None and this_date < week_ending - timedelta(days=6):
        stale_note = f"the latest scores are from {this_date.isoformat()}, before this week: scoring may have stopped"
        # Comparing a score day with itself would show "no change"; compare a week back instead.
        last_date = data.latest_on_or_before(dates, this_date - timedelta(days=7))
    accounts = data.accounts(engine)
    names = dict(zip(accounts["account_id"].astype(str), accounts["name"].astype(str)))
    week_start = week_ending - timedelta(days=6)
    churned = data.churned_between(engine, week_start, week_ending, grace_days=churn_grace_days)
    churned_before = data.churned_between(engine, week_start - timedelta(days=7), week_start - timedelta(days=1),
                                          grace_days=churn_grace_days)
    tasks = tasks_up_to(engine, week_ending)
    lift = None if tasks is None else playbook_lift(
        engine, tasks, week_ending, horizon_days=outcome_horizon_days, grace_days=churn_grace_days, lead_days=label_lead_days)
    outreach = sections.outreach_section(tasks, week_ending, lift)
    surveys = sections.survey_section(data.survey_responses(engine, week_ending), week_ending, names, include_verbatims)
    log.info("building digest for week ending %s (scores %s vs %s)", week_ending, this_date, last_date)

    if this_date is None:
        reason = f"no account scores on or before {week_ending.isoformat()}"
        empty_scores = pd.DataFrame(columns=["account_id", "band", "arr", "arr_at_risk", "model_version"])
        return Digest(
            week_ending=week_ending, this_date=None, last_date=None, generated_at=generated_at, currency=currency,
            highlights=[], headline=sections.headline_section(empty_scores, None, churned, churned_before),
            top_accounts=AccountsSection([], reason), movers=MoversSection([], [], reason, reason),
            drivers=DriversSection([], [], 0, reason), outreach=outreach, surveys=surveys,
            model=ModelHealth(None, None, None, None, None, None, None, [], reason),
            charts=[Chart(k, t, t, None, reason) for k, t in CHART_TITLES.items()],
            include_verbatims=include_verbatims, include_contacts=include_contacts, reason=reason,
        )

    scores = data.scores_on(engine, [this_date] + ([last_date] if last_date else []), "*")
    scores = scores.merge(accounts, on="account_id", how="left")
    now = scores[scores["as_of_date"] == this_date].reset_index(drop=True)
    prev = scores[scores["as_of_date"] == last_date].reset_index(drop=True) if last_date else None
    history = data.score_history(engine, data.weekly_dates(dates, week_ending))
    trends: dict[str, list[int]] = {
        str(aid): [int(v) for v in g.sort_values("as_of_date")["health_score"]]
        for aid, g in history.groupby("account_id")
    }
    digest = Digest(
        week_ending=week_ending,
        this_date=this_date,
        last_date=last_date,
        generated_at=generated_at,
        currency=currency,
        highlights=[],
        headline=sections.headline_section(now, prev, churned, churned_before),
        top_accounts=sections.top_accounts_section(now, prev, trends, include_contacts),
        movers=sections.movers_section(now, prev, trends, include_contacts),
        drivers=sections.drivers_section(now, prev, feature_family),
        outreach=outreach,
        surveys=surveys,
        model=sections.model_health(now, data.monitoring_checks(engine, week_ending)),
        charts=[],
        include_verbatims=include_verbatims,
        include_contacts=include_contacts,
    )
    if stale_note:
        digest.highlights.append(stale_note[:1].upper() + stale_note[1:] + ".")
    digest.highlights.extend(sections.highlights(digest))
    if charts:
        digest.charts.extend(build_charts(history, digest))
    return digest

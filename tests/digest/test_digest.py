"""Tests for the weekly executive digest (the digest package: build, sections, render, publish).

The warehouse is a small but realistic DuckDB book written with ``replace_rows``: 60 accounts
scored weekly for 14 weeks, some worsening, a few turning red in the last week, outreach
tasks (some held out), subscriptions with cancellations around the last week, and surveys.
Expectations are computed from the frames in the test, not hard-coded.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
import socket
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnflow.mail import SmtpConfig
from churnflow.manifest import DataManifest
from digest.build import build_digest
from digest.formatting import SPARK_CHARS, SPARK_MIN_SPAN, sparkline
from digest.publish import send_digest, write_digest
from digest.render import render_html, render_markdown, render_text
from digest.report import Digest, Metric
from features.catalogue import FAMILIES
from features.labels import is_matured, labels_for_dates
from churnflow.schema import (
    ACCOUNT_SCORES, ACCOUNTS, CHURN_EVENTS, INGEST_MANIFEST, OUTREACH_TASKS, SUBSCRIPTIONS, SURVEYS, coerce,
)
from churnflow.warehouse import get_engine, replace_rows

WEEK_ENDING = date(2026, 11, 22)  # a Sunday; scores are on Mondays
SCORE_DATES = [date(2026, 11, 16) - timedelta(days=7 * k) for k in range(13, -1, -1)]
THIS, LAST = SCORE_DATES[-1], SCORE_DATES[-2]
FAMILY = {
    "active_users_30d": "usage", "usage_trend_30d": "usage", "days_since_last_activity": "usage",
    "tickets_30d": "support", "reopen_rate_90d": "support", "nps_latest": "perception",
    "csat_top2_box_90d": "perception", "days_to_renewal": "commercial", "tenure_days": "lifecycle",
}
FEATURES = [*FAMILY, "mystery_signal"]  # one unmapped feature falls back to "other"
CSMS = ["jane.doe@example.com", "omar.haddad@example.com", "li.wei@example.com", "sam_okafor@example.com", "r.garcia@example.com"]
COMMENTS_THIS_WEEK = ["Support took three days to answer our ticket", "Exports keep timing out for our finance team"]
COMMENT_LAST_WEEK = "Onboarding the new team was painless"
CHROMIUM = "/usr/bin/chromium"
HISTORIC_TASK_DATES = [date(2026, 5, 4) + timedelta(days=7 * k) for k in range(12)]  # up to 2026-07-20
EARLY_CHURN = {"A057": date(2026, 6, 20), "A058": date(2026, 7, 15), "A059": date(2026, 9, 10)}


@dataclass
class Book:
    accounts: pd.DataFrame
    scores: pd.DataFrame
    subscriptions: pd.DataFrame
    tasks: pd.DataFrame
    surveys: pd.DataFrame


def _band(p: float) -> str:
    return "red" if p >= 0.35 else "yellow" if p >= 0.15 else "green"


def make_book(seed: int = 3) -> Book:
    rng = np.random.default_rng(seed)
    n = 60
    ids = [f"A{i:03d}" for i in range(n)]
    words = ["Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Acme"]
    accounts = pd.DataFrame({
        "account_id": ids,
        "name": [f"{words[i % 10]} {['Labs', 'Retail', 'Health', 'Logistics', 'Bank', 'Media'][i // 10]}" for i in range(n)],
        "industry": "software", "segment": ["smb", "mid_market", "enterprise"] * 20, "country": "DE",
        "created_at": pd.Timestamp("2023-01-01"),
        "owner_email": [CSMS[i % len(CSMS)] for i in range(n)],
        "crm_account_id": [f"001{i:015d}" for i in range(n)],
    })
    arr = rng.uniform(10_000, 300_000, n).round(0)
    base = rng.uniform(0.02, 0.3, n)
    rows = []
    for w, day in enumerate(SCORE_DATES):
        for i, aid in enumerate(ids):
            p = base[i] + rng.normal(0, 0.01)
            if i < 8:  # steadily worsening accounts
                p += 0.035 * w
            if 8 <= i < 11 and day == THIS:  # sudden drops in the last week
                p = 0.55 + 0.05 * (i - 8)
            p = float(np.clip(p, 0.01, 0.97))
            feats = rng.choice(FEATURES, 3, replace=False)
            contrib = sorted(rng.uniform(0.05, 0.8, 3), reverse=True)
            drivers = [{"feature": str(f), "value": float(rng.uniform(0, 50)), "contribution": float(c),
                        "sentence": f"{f.replace('_', ' ').capitalize()} moved the wrong way ({c:.2f})"}
                       for f, c in zip(feats, contrib)]
            rows.append({
                "as_of_date": pd.Timestamp(day), "account_id": aid, "p_churn": p,
                "health_score": int(round(100 * (1 - p))), "band": _band(p),
                "health_change_7d": None, "health_change_30d": None, "arr": arr[i], "arr_at_risk": p * arr[i],
                "top_drivers": json.dumps(drivers), "top_drivers_text": "\n".join(d["sentence"] for d in drivers),
                "protective_driver_text": "Seats are well used", "model_name": "churnflow-churn",
                "model_version": "7" if day == THIS else "6",
                "scored_at": pd.Timestamp(day) + pd.Timedelta(hours=5),
            })
    scores = pd.DataFrame(rows)

    subs = pd.DataFrame({
        "subscription_id": [f"S{i:03d}" for i in range(n)], "account_id": ids, "plan": "growth", "seats": 20,
        "arr": arr, "start_date": pd.Timestamp("2025-12-01"), "end_date": pd.Timestamp("2026-12-01"),
        "cancelled_at": pd.NaT, "auto_renew": True,
    })
    subs.loc[subs.account_id == "A050", "cancelled_at"] = pd.Timestamp("2026-11-18 10:00")  # churned this week
    subs.loc[subs.account_id == "A051", "cancelled_at"] = pd.Timestamp("2026-11-22 23:00")  # last day of week
    subs.loc[subs.account_id == "A052", "cancelled_at"] = pd.Timestamp("2026-11-19 09:00")  # plan change below
    subs.loc[subs.account_id.isin(["A053", "A054"]), "end_date"] = pd.Timestamp("2026-11-20")  # term ended
    subs.loc[subs.account_id == "A055", "cancelled_at"] = pd.Timestamp("2026-11-12 08:00")  # last week
    subs.loc[subs.account_id == "A056", "cancelled_at"] = pd.Timestamp("2026-11-23 08:00")  # after the week
    for aid, day in EARLY_CHURN.items():  # churned within the horizon of the historic tasks
        subs.loc[subs.account_id == aid, "cancelled_at"] = pd.Timestamp(day) + pd.Timedelta(hours=9)
    extra = pd.DataFrame({
        "subscription_id": ["S052b", "S054b"], "account_id": ["A052", "A054"], "plan": "enterprise", "seats": 40,
        "arr": [90_000.0, 120_000.0], "start_date": [pd.Timestamp("2026-11-19"), pd.Timestamp("2026-11-20")],
        "end_date": pd.Timestamp("2027-11-20"), "cancelled_at": pd.NaT, "auto_renew": True,
    })
    subs = pd.concat([subs, extra], ignore_index=True)

    playbooks = ["exec_sponsor_call", "usage_recovery", "renewal_prep"]
    trows = []
    for w, day in enumerate(SCORE_DATES):
        for j, aid in enumerate(ids[:12] + ["A055"]):
            if (j + w) % 3:
                continue
            held = (j + w) % 4 == 0
            trows.append({
                "task_key": f"{aid}-{playbooks[j % 3]}-{day}", "as_of_date": pd.Timestamp(day), "account_id": aid,
                "crm_account_id": None, "playbook": playbooks[j % 3], "subject": "Check in",
                "description": "drivers", "priority": "High", "due_date": pd.Timestamp(day) + pd.Timedelta(days=7),
                "owner_email": CSMS[j % 5], "status": "Held out" if held else ("Completed" if w % 2 else "Not Started"),
                "held_out": held, "crm_task_id": None,
                # like a backfill: one run decides every week's tasks, so created_at is "now"
                "created_at": pd.Timestamp("2026-11-23 07:00"),
            })
    # Older tasks (before the score history) whose 90-day outcome + 30-day grace has matured.
    for w, day in enumerate(HISTORIC_TASK_DATES):
        for j, aid in enumerate(ids[50:60]):
            trows.append({
                "task_key": f"{aid}-old-{day}", "as_of_date": pd.Timestamp(day), "account_id": aid,
                "crm_account_id": None, "playbook": playbooks[(j + w) % 2], "subject": "Check in",
                "description": "drivers", "priority": "Normal", "due_date": pd.Timestamp(day) + pd.Timedelta(days=7),
                "owner_email": CSMS[j % 5], "status": "Completed", "held_out": (j + w) % 3 == 0,
                "crm_task_id": None, "created_at": pd.Timestamp("2026-11-23 07:00"),
            })
    tasks = pd.DataFrame(trows)

    srows = []
    k = 0
    for day_offset in range(14):
        day = pd.Timestamp(WEEK_ENDING) - pd.Timedelta(days=day_offset) + pd.Timedelta(hours=14)
        for kind, lo, hi in (("nps", 0, 10), ("csat", 1, 5), ("ces", 1, 7)):
            for _ in range(2):
                srows.append({"response_id": f"R{k:04d}", "account_id": ids[k % n], "submitted_at": day,
                              "kind": kind, "score": float(rng.integers(lo, hi + 1)), "comment": None})
                k += 1
    surveys = pd.DataFrame(srows)
    surveys.loc[0, "comment"] = COMMENTS_THIS_WEEK[0]
    surveys.loc[5, "comment"] = COMMENTS_THIS_WEEK[1]
    surveys.loc[len(surveys) - 1, "comment"] = COMMENT_LAST_WEEK
    return Book(accounts, scores, subs, tasks, surveys)


def write_book(path: Path, book: Book, *, only_last_date: bool = False, outreach: bool = True,
               surveys: bool = True, monitoring: pd.DataFrame | None = None):
    engine = get_engine(f"duckdb:///{path}")
    scores = book.scores[book.scores.as_of_date == pd.Timestamp(THIS)] if only_last_date else book.scores
    replace_rows(engine, "accounts", coerce(book.accounts, ACCOUNTS), replace_all=True)
    replace_rows(engine, "subscriptions", coerce(book.subscriptions, SUBSCRIPTIONS), replace_all=True)
    # Sub-scores and the model's band are not read by the digest: neutral values.
    scores = scores.assign(model_band=scores["band"], **{f"{f}_score": 90 for f in FAMILIES})
    replace_rows(engine, "account_scores", coerce(scores, ACCOUNT_SCORES), replace_all=True)
    if outreach:
        replace_rows(engine, "outreach_tasks", coerce(book.tasks, OUTREACH_TASKS), replace_all=True)
    if surveys:
        replace_rows(engine, "surveys", coerce(book.surveys, SURVEYS), replace_all=True)
    if monitoring is not None:
        replace_rows(engine, "model_monitoring", monitoring, replace_all=True)
    return engine


@pytest.fixture(scope="module")
def book() -> Book:
    return make_book()


@pytest.fixture(scope="module")
def engine(book, tmp_path_factory):
    return write_book(tmp_path_factory.mktemp("wh") / "warehouse.duckdb", book)


@pytest.fixture(scope="module")
def digest(engine) -> Digest:
    return build_digest(engine, WEEK_ENDING, feature_family=FAMILY)


@pytest.fixture(scope="module")
def open_digest(engine) -> Digest:
    return build_digest(engine, WEEK_ENDING, feature_family=FAMILY, include_verbatims=True,
                           include_contacts=True, charts=False)


def _metric(d: Digest, label: str) -> Metric:
    return next(m for m in d.headline.metrics if m.label == label)


# -- headline ------------------------------------------------------------------------------


def test_week_selection_uses_latest_score_day_on_or_before(digest):
    assert digest.this_date == THIS and digest.last_date == LAST


def test_headline_matches_independent_computation(digest, book):
    now = book.scores[book.scores.as_of_date == pd.Timestamp(THIS)]
    prev = book.scores[book.scores.as_of_date == pd.Timestamp(LAST)]
    assert _metric(digest, "ARR at risk").current == pytest.approx(now.arr_at_risk.sum())
    assert _metric(digest, "ARR at risk").change == pytest.approx(now.arr_at_risk.sum() - prev.arr_at_risk.sum())
    for band in ("red", "yellow", "green"):
        m = _metric(digest, f"{band.capitalize()} accounts")
        assert (m.current, m.previous) == ((now.band == band).sum(), (prev.band == band).sum())
    assert _metric(digest, "Red ARR").current == pytest.approx(now.loc[now.band == "red", "arr"].sum())
    assert digest.headline.total_arr == pytest.approx(now.arr.sum())


def _churned_arr(subs: pd.DataFrame, scores: pd.DataFrame, lo: date, hi: date, grace: int = 30) -> tuple[float, set[str]]:
    """Row-by-row restatement of the labels' coverage rule: a term's coverage ends at its end_date,
    or the day after its cancellation; the account churns that day unless another of its terms
    covers it or starts within the grace period. ARR is the account's last score before the churn."""
    def cover_end(s) -> date:
        end = s.end_date.date()
        return end if pd.isna(s.cancelled_at) else min(end, s.cancelled_at.date() + timedelta(days=1))

    total, accounts = 0.0, set()
    for s in subs.itertuples():
        end = cover_end(s)
        if not lo <= end <= hi:
            continue
        others = subs[(subs.account_id == s.account_id) & (subs.subscription_id != s.subscription_id)]
        if any(cover_end(o) > end and o.start_date.date() <= end + timedelta(days=grace) for o in others.itertuples()):
            continue
        scored = scores[(scores.account_id == s.account_id) & (scores.as_of_date < pd.Timestamp(end))]
        total += float(scored.sort_values("as_of_date").arr.iloc[-1]) if len(scored) else 0.0
        accounts.add(s.account_id)
    return total, accounts


def test_arr_churned_this_week(digest, book):
    expected, accounts = _churned_arr(book.subscriptions, book.scores, WEEK_ENDING - timedelta(days=6), WEEK_ENDING)
    # The fixture's intent: A052/A054 renewed; A051 cancelled late on the last day, so (covered
    # through the day they cancel) it churns the day after, next week; A055/A056 outside.
    assert accounts == {"A050", "A053"}
    m = _metric(digest, "ARR churned this week")
    assert m.current == pytest.approx(expected)
    prev_expected, prev_accounts = _churned_arr(book.subscriptions, book.scores, WEEK_ENDING - timedelta(days=13),
                                                WEEK_ENDING - timedelta(days=7))
    assert prev_accounts == {"A055"}
    assert m.previous == pytest.approx(prev_expected)
    assert set(digest.headline.churned_accounts) == accounts


def _label_churns(engine, first: date, last: date, grace: int = 30) -> set[str]:
    """Accounts the labels of ``features.labels`` call churned in [first, last]: active the day
    before, churned within a horizon that ends on ``last``."""
    day = first - timedelta(days=1)
    horizon = (last - day).days
    labels = labels_for_dates(engine, [day], horizon_days=horizon, grace_days=grace, observed_until=last + timedelta(days=grace))
    return set(labels.loc[labels.churned == 1, "account_id"])


def test_churn_comes_from_the_labels_churn_source(tmp_path, book):
    # A book whose churn is stated by a churn_events table (the mapping says so): the digest must
    # count those churns, not the subscriptions' coverage, exactly as the labels do.
    engine = write_book(tmp_path / "events.duckdb", book)
    events = pd.DataFrame({
        "account_id": ["A020", "A021", "A022", "A023"],
        "churn_date": pd.to_datetime(["2026-11-18", "2026-11-20", "2026-11-10", "2026-11-23"]),
        "reason": "stated by the CRM",
        "reactivated_at": pd.to_datetime([None, "2026-11-27", None, None]),  # A021 came back within the grace
    })
    replace_rows(engine, "churn_events", coerce(events, CHURN_EVENTS), replace_all=True)
    manifest = pd.DataFrame([{
        "run_id": "r1", "run_date": pd.Timestamp(WEEK_ENDING), "started_at": pd.Timestamp(WEEK_ENDING),
        "finished_at": pd.Timestamp(WEEK_ENDING), "mapping": "mapping.yaml",
        "config": json.dumps(DataManifest(churn_source="churn_events").to_config()),
    }])
    replace_rows(engine, "ingest_manifest", coerce(manifest, INGEST_MANIFEST), replace_all=True)
    d = build_digest(engine, WEEK_ENDING, charts=False)
    week_start = WEEK_ENDING - timedelta(days=6)
    assert set(d.headline.churned_accounts) == _label_churns(engine, week_start, WEEK_ENDING) == {"A020"}
    now = book.scores[book.scores.as_of_date == pd.Timestamp(THIS)].set_index("account_id")
    m = _metric(d, "ARR churned this week")
    assert m.current == pytest.approx(now.arr["A020"])
    assert _label_churns(engine, week_start - timedelta(days=7), week_start - timedelta(days=1)) == {"A022"}
    assert m.previous == pytest.approx(book.scores.set_index(["as_of_date", "account_id"]).arr[(pd.Timestamp(LAST), "A022")])
    # The coverage book's churns (the subscriptions are still there) are not this book's.
    assert not {"A050", "A051", "A053"} & set(d.headline.churned_accounts)


def test_top_accounts_by_arr_at_risk(digest, book):
    now = book.scores[book.scores.as_of_date == pd.Timestamp(THIS)]
    expected = now.sort_values("arr_at_risk", ascending=False).account_id.head(10).tolist()
    rows = digest.top_accounts.rows
    assert [r.account_id for r in rows] == expected
    assert all(len(r.trend) == 12 and r.trend[-1] == r.health for r in rows)
    assert all(r.drivers and "@" not in r.owner for r in rows)


# -- movers, new reds, drivers --------------------------------------------------------------


def test_movers_and_new_reds(digest, book):
    now = book.scores[book.scores.as_of_date == pd.Timestamp(THIS)].set_index("account_id")
    prev = book.scores[book.scores.as_of_date == pd.Timestamp(LAST)].set_index("account_id")
    delta = (now.health_score - prev.health_score).sort_values()
    drops = delta[delta < 0]
    got = [r.account_id for r in digest.movers.movers]
    assert len(got) == min(10, len(drops))
    assert [r.health_change for r in digest.movers.movers] == drops.head(len(got)).astype(int).tolist()
    assert {"A008", "A009", "A010"} <= set(got)  # the sudden drops lead
    expected_reds = set(now.index[(now.band == "red") & (prev.band.reindex(now.index) != "red")])
    assert {r.account_id for r in digest.movers.new_reds} == expected_reds
    assert {"A008", "A009", "A010"} <= expected_reds
    assert all(r.band == "red" and r.previous_band != "red" for r in digest.movers.new_reds)


def test_portfolio_drivers_by_family(digest, book):
    now = book.scores[(book.scores.as_of_date == pd.Timestamp(THIS)) & book.scores.band.isin(["red", "yellow"])]
    totals: dict[str, float] = {}
    for raw in now.top_drivers:
        for d in json.loads(raw):
            fam = FAMILY.get(d["feature"], "other")
            totals[fam] = totals.get(fam, 0.0) + d["contribution"]
    grand = sum(totals.values())
    got = {f.name: f.share for f in digest.drivers.families}
    assert got == pytest.approx({k: v / grand for k, v in totals.items()})
    assert "other" in got  # the unmapped feature
    assert all(f.previous_share is not None for f in digest.drivers.families)
    assert digest.drivers.at_risk_accounts == len(now)


# -- outreach, surveys, model ---------------------------------------------------------------


def test_outreach_counts_by_playbook(digest, book):
    t = book.tasks
    week = (t.as_of_date >= pd.Timestamp(WEEK_ENDING - timedelta(days=6))) & (t.as_of_date <= pd.Timestamp(WEEK_ENDING))
    rows = {r.playbook: r for r in digest.outreach.playbooks}
    assert set(rows) == set(t.playbook)
    for pb, r in rows.items():
        g = t[t.playbook == pb]
        assert r.created == int((week[g.index] & ~g.held_out).sum())
        assert r.held_out == int((week[g.index] & g.held_out).sum())
        assert r.sent_to_date == int((~g.held_out).sum())
        assert r.completed_to_date == int(((g.status == "Completed") & ~g.held_out).sum())


def _assert_lift(d: Digest, decided: pd.DataFrame) -> dict:
    """The digest's lift rows are the sent and held-out counts (and churns) of ``decided`` per playbook."""
    rows = {r.playbook: r for r in d.outreach.lift}
    assert set(rows) == set(decided.playbook), d.outreach.lift_reason
    for pb, lift in rows.items():
        g = decided[decided.playbook == pb]
        sent, held = g[~g.held_out], g[g.held_out]
        assert (lift.treated, lift.treated_churned, lift.holdout, lift.holdout_churned) == (
            len(sent), sent.churned.sum(), len(held), held.churned.sum())
    return rows


def test_lift_uses_only_matured_outcomes(digest, engine, book):
    t = book.tasks
    matured = t[t.as_of_date + pd.Timedelta(days=90 + 30) <= pd.Timestamp(WEEK_ENDING)].copy()
    assert set(matured.as_of_date.dt.date) == set(HISTORIC_TASK_DATES)
    # Covered on the task day (not churned before it) -> has an outcome; churned within 90 days -> 1.
    ends = {aid: pd.Timestamp(day) for aid, day in EARLY_CHURN.items()}
    end_of = matured.account_id.map(ends)
    matured = matured[end_of.isna() | (end_of > matured.as_of_date)]
    end_of = matured.account_id.map(ends)
    matured["churned"] = end_of.notna() & (end_of < matured.as_of_date + pd.Timedelta(days=90))
    rows = _assert_lift(digest, matured)
    assert sum(r.treated_churned + r.holdout_churned for r in rows.values()) > 0
    assert all(r.small_sample for r in rows.values())
    later = build_digest(engine, WEEK_ENDING, outcome_horizon_days=365, charts=False)
    assert later.outreach.lift == [] and "no outcomes matured yet" in later.outreach.lift_reason
    assert "no outcomes matured yet" in render_html(later)


def test_lift_waits_for_the_label_lead(engine, book):
    # With a lead time a label is known lead + horizon + grace days after its day: the digest must
    # not count a task's outcome any earlier than the labels would (and must use the same label).
    lead = 60
    d = build_digest(engine, WEEK_ENDING, label_lead_days=lead, charts=False)
    t = book.tasks
    days = sorted({day for day in t.as_of_date.dt.date
                   if is_matured(day, horizon_days=90, grace_days=30, observed_until=WEEK_ENDING, lead_days=lead)})
    assert days and len(days) < len(HISTORIC_TASK_DATES)  # some, not all, of the historic tasks have matured
    labels = labels_for_dates(engine, days, horizon_days=90, grace_days=30, observed_until=WEEK_ENDING, lead_days=lead)
    decided = t[t.as_of_date.dt.date.isin(days)].merge(labels, on=["account_id", "as_of_date"])
    _assert_lift(d, decided)
    none_yet = build_digest(engine, WEEK_ENDING, label_lead_days=200, charts=False)
    assert none_yet.outreach.lift == [] and "(lead + horizon + grace)" in none_yet.outreach.lift_reason


def test_survey_pulse(digest, book):
    s = book.surveys
    lo = pd.Timestamp(WEEK_ENDING - timedelta(days=6))
    now = s[s.submitted_at >= lo]
    nps = now[now.kind == "nps"].score
    expected_nps = ((nps >= 9).mean() - (nps <= 6).mean()) * 100
    got = {m.label.split(" ")[0]: m for m in digest.surveys.metrics}
    assert got["NPS"].current == pytest.approx(expected_nps)
    assert got["CSAT"].current == pytest.approx((now[now.kind == "csat"].score >= 4).mean())
    assert got["CES"].current == pytest.approx(now[now.kind == "ces"].score.mean())
    assert digest.surveys.responses == len(now)
    assert digest.surveys.comments_withheld == 2 and digest.surveys.verbatims == []


def test_model_health_without_monitoring_table(digest):
    assert digest.model.champion == "7"
    assert "no model_monitoring table" in digest.model.reason
    assert "model monitoring has not run yet" in render_text(digest)


def test_model_health_with_monitoring(tmp_path, book):
    mon = pd.DataFrame({
        # The 11-16 checks ran later (a re-run): the day they are about decides their week.
        "checked_at": pd.to_datetime(["2026-11-09 06:00", "2026-12-05 06:00", "2026-12-05 06:00", "2026-12-05 06:00", "2026-11-30 06:00"]),
        "as_of_date": pd.to_datetime(["2026-11-09", "2026-11-16", "2026-11-16", "2026-11-16", "2026-11-30"]),
        "model_version": ["7", "7", "7", "7", "7"],
        "metric": ["realized_auc", "realized_auc", "psi_score", "psi:tickets_30d", "realized_auc"],
        "value": [0.81, 0.78, 0.08, 0.31, 0.5],
        "breached": [False, False, False, True, True],
        "detail": ["", "", "", "tickets_30d distribution shifted", "future row, ignored"],
    })
    engine = write_book(tmp_path / "wh.duckdb", book, monitoring=mon)
    d = build_digest(engine, WEEK_ENDING, charts=False)
    assert d.model.realized_auc == pytest.approx(0.78) and d.model.previous_auc == pytest.approx(0.81)
    assert d.model.psi_score == pytest.approx(0.08)
    assert [f.metric for f in d.model.drift] == ["psi:tickets_30d"]
    assert d.model.reason is None
    assert "psi:tickets_30d" in render_html(d) and "0.780" in render_markdown(d)


# -- empty sections -------------------------------------------------------------------------


def test_empty_sections_render_their_reason(tmp_path, book):
    engine = write_book(tmp_path / "thin.duckdb", book, only_last_date=True, outreach=False, surveys=False)
    d = build_digest(engine, WEEK_ENDING)
    assert d.last_date is None and d.movers.movers_reason == "no scores a week earlier"
    reasons = ["no scores a week earlier", "no outreach has run yet", "no surveys are configured",
               "model monitoring has not run yet", "no trend to draw yet"]
    for text in (render_html(d), render_text(d), render_markdown(d)):
        for reason in reasons:
            assert reason in text, reason
    nothing = build_digest(engine, date(2020, 1, 5))
    assert nothing.reason and "no account scores" in nothing.reason
    assert "no account scores" in render_html(nothing) and "no account scores" in render_text(nothing)


# -- rendering and privacy ------------------------------------------------------------------


SECTION_IDS = ["summary", "headline", "trend", "top-accounts", "movers", "new-reds", "drivers", "outreach", "lift", "surveys", "model"]


def test_html_is_self_contained_and_has_every_section(digest):
    page = render_html(digest)
    assert '<meta name="color-scheme" content="light dark">' in page
    assert "prefers-color-scheme: dark" in page and "max-width: 640px" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page and "url(" not in page
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page, sid
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(c.png and c.png.startswith(b"\x89PNG") for c in digest.charts)
    cid_page = render_html(digest, images="cid")
    assert sorted(re.findall(r'src="cid:([^"]+)"', cid_page)) == sorted(c.cid for c in digest.charts)


def test_text_and_markdown_cover_the_sections(digest):
    text, md = render_text(digest), render_markdown(digest)
    for heading in ("HEADLINE", "TOP ACCOUNTS BY ARR AT RISK", "BIGGEST MOVERS", "NEW RED ACCOUNTS",
                    "WHAT DRIVES RISK", "OUTREACH", "SURVEY PULSE", "MODEL HEALTH"):
        assert heading in text and f"## {heading}".lower() in md.lower()
    assert max(len(line) for line in text.splitlines()) <= 72


def test_privacy_defaults_hide_contacts_and_verbatims(digest, book):
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", render_html(digest))  # base64 can spell anything
    outputs = [page, render_text(digest), render_markdown(digest), digest.subject]
    for out in outputs:
        for mail in set(book.accounts.owner_email) | set(book.tasks.owner_email):
            assert mail not in out
        for comment in [*COMMENTS_THIS_WEEK, COMMENT_LAST_WEEK]:
            assert comment not in out and html.escape(comment) not in out
        assert "Jane" not in out and "Doe" not in out
    assert {r.owner for r in digest.top_accounts.rows} <= {"JD", "OH", "LW", "SO", "RG"}


def test_privacy_flags_show_contacts_and_verbatims(open_digest, book):
    for out in (render_html(open_digest), render_text(open_digest), render_markdown(open_digest)):
        for row in open_digest.top_accounts.rows:
            assert book.accounts.set_index("account_id").owner_email[row.account_id] in out
        for comment in COMMENTS_THIS_WEEK:
            assert html.escape(comment) in out or comment in out
        assert COMMENT_LAST_WEEK not in out  # last week's comment is not this week's pulse


def test_html_escapes_stored_text(digest):
    from dataclasses import replace

    row = replace(digest.top_accounts.rows[0], name="Acme & Co <script>alert(1)</script>", drivers=['Usage fell "a lot" <50%'])
    page = render_html(replace(digest, top_accounts=replace(digest.top_accounts, rows=[row])))
    assert "<script>alert(1)</script>" not in page and "Acme &amp; Co &lt;script&gt;" in page
    assert "&lt;50%" in page


def test_charts_are_phone_sized_pngs(digest):
    import struct

    for chart in digest.charts:
        width, height = struct.unpack(">II", chart.png[16:24])  # PNG IHDR
        assert width == 960 and 300 < height < 1600, (chart.key, width, height)  # 4.8 in at 200 dpi
        assert chart.alt and chart.title


def test_stale_scores_compare_a_week_back(engine):
    later = WEEK_ENDING + timedelta(days=10)  # no scoring since THIS
    d = build_digest(engine, later, charts=False)
    assert d.this_date == THIS and d.last_date == LAST
    assert any("scoring may have stopped" in h for h in d.highlights)


def test_sparkline_spans_the_accounts_own_range():
    assert sparkline([70, 32]) == SPARK_CHARS[-1] + SPARK_CHARS[0]
    flat = sparkline([80, 81, 80, 79])
    assert len(set(flat)) <= 2 and SPARK_CHARS[0] not in flat and SPARK_CHARS[-1] not in flat  # noise stays a flat line
    assert sparkline([]) == ""


def test_rendered_sparklines_follow_each_trend(digest):
    # A solid bar is the same glyph (or neighbouring ones) on every account whatever its trend.
    page = render_html(digest)
    sparks = re.findall(r'<span class="spark"[^>]*>([^<]*)</span>', page)
    rows = digest.top_accounts.rows
    assert len(sparks) == len(rows)
    for spark, row in zip(sparks, rows):
        levels = [SPARK_CHARS.index(c) for c in spark]
        assert len(levels) == len(row.trend)
        pairs = list(zip(row.trend, levels))
        assert all((a - b) * (la - lb) >= 0 for a, la in pairs for b, lb in pairs), (row.trend, spark)  # never drawn upside down
        if max(row.trend) - min(row.trend) >= SPARK_MIN_SPAN:  # a real slide fills the glyphs' height
            assert min(levels) == 0 and max(levels) == len(SPARK_CHARS) - 1, (row.trend, spark)
    assert sum(max(row.trend) - min(row.trend) >= SPARK_MIN_SPAN for row in rows) >= 3  # the fixture has slides
    style = re.search(r"\.spark \{([^}]*)\}", page).group(1)
    assert not re.search(r"letter-spacing:\s*-", style)  # glyphs pushed into each other read as one bar


def test_write_digest(digest, tmp_path):
    path = write_digest(digest, tmp_path / "digests")
    assert path.name == f"digest-{WEEK_ENDING}.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert path.with_suffix(".txt").read_text().startswith(digest.title)


# -- SMTP -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_send_digest_over_smtp(digest, caplog):
    from aiosmtpd.controller import Controller

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        config = SmtpConfig(host="127.0.0.1", port=controller.port, security="none", sender="digest@churnflow.test",
                               recipients=("ceo@churnflow.test", "cro@churnflow.test"), password="hunter2-secret")
        caplog.set_level("DEBUG", logger="digest.publish")
        send_digest(digest, config)
    finally:
        controller.stop()
    assert len(received) == 1
    env = received[0]
    assert sorted(env.rcpt_tos) == ["ceo@churnflow.test", "cro@churnflow.test"]
    assert env.mail_from == "digest@churnflow.test"
    msg = email.message_from_bytes(env.original_content, policy=email.policy.default)
    assert msg["Subject"] == digest.subject and "ARR at risk" in msg["Subject"]
    assert msg.get_content_type() == "multipart/alternative"
    text_part, related = msg.get_payload()
    assert text_part.get_content_type() == "text/plain" and "HEADLINE" in text_part.get_content()
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    body = html_part.get_content()
    assert "data:image" not in body
    assert len(images) == 3 and all(i.get_content_type() == "image/png" for i in images)
    for img in images:
        cid = img["Content-ID"].strip("<>")
        assert f'src="cid:{cid}"' in body
        assert img.get_content_disposition() == "inline"
        assert img.get_content().startswith(b"\x89PNG")
    assert "hunter2-secret" not in caplog.text and "hunter2-secret" not in repr(config)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, so TLS is tested with verification on."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_send_digest_over_tls_with_login(digest, tmp_path, security, caplog):
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    received, logins = [], []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope, session.authenticated))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-pw")

    tls = {"tls_context": server_ctx, "require_starttls": True} if security == "starttls" else {"ssl_context": server_ctx}
    controller = Controller(Handler(), hostname="127.0.0.1", port=_free_port(), authenticator=authenticator,
                            auth_require_tls=security == "starttls", **tls)
    controller.start()
    try:
        config = SmtpConfig(host="127.0.0.1", port=controller.port, security=security, username="digest-bot",
                               password="s3cret-pw", sender="digest@churnflow.test",
                               recipients=("board@churnflow.test",), ca_file=cert)
        caplog.set_level("DEBUG")
        send_digest(digest, config)
        with pytest.raises(ssl.SSLCertVerificationError):  # an unknown CA is refused, never ignored
            send_digest(digest, SmtpConfig(**{**config.__dict__, "ca_file": None}))
    finally:
        controller.stop()
    assert logins and logins[0] == (b"digest-bot", b"s3cret-pw")
    assert len(received) == 1 and received[0][1] is True
    assert received[0][0].rcpt_tos == ["board@churnflow.test"]
    assert "s3cret-pw" not in caplog.text


def test_smtp_config_validation():
    with pytest.raises(ValueError, match="security"):
        SmtpConfig(host="h", security="tls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recipients"):
        SmtpConfig(host="h")
    assert SmtpConfig(host="h", recipients="a@b.c").recipients == ("a@b.c",)  # type: ignore[arg-type]


# -- rendered check in a real browser ---------------------------------------------------------

# Chromium clamps headless windows to >= 500 px wide, so the digest is loaded into a 375 px
# iframe (srcdoc keeps it same-origin): inside it, viewport width and media queries are 375 px.
HOST = """<!DOCTYPE html><html><head><meta charset="utf-8"></head>
<body style="margin:0"><iframe id="f" style="border:0;width:375px;height:1900px" srcdoc="{srcdoc}"></iframe>
<script>
window.addEventListener('load', function () {{
  var w = document.getElementById('f').contentWindow, doc = w.document;
  var imgs = Array.prototype.slice.call(doc.images);
  var probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({{
    scrollWidth: doc.documentElement.scrollWidth,
    innerWidth: w.innerWidth,
    images: imgs.length,
    broken: imgs.filter(function (i) {{ return !i.complete || i.naturalWidth === 0; }}).length,
    widest: imgs.reduce(function (m, i) {{ return Math.max(m, i.getBoundingClientRect().right); }}, 0),
    sections: doc.querySelectorAll('.card').length
  }});
  document.body.appendChild(probe);
}});
</script></body></html>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed: apt-get update && apt-get install -y chromium")
@pytest.mark.parametrize("variant", ["private", "open"])
def test_renders_at_phone_width_in_chromium(digest, open_digest, tmp_path, variant):
    # "open" shows owner emails and verbatims (long unbreakable strings) and has no charts.
    d = digest if variant == "private" else open_digest
    page = tmp_path / "host.html"
    page.write_text(HOST.format(srcdoc=html.escape(render_html(d), quote=True)), encoding="utf-8")
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=375,2000",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, f"probe missing; chromium stderr: {dom.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    assert probe["innerWidth"] == 375, probe
    assert probe["scrollWidth"] <= 375, f"horizontal overflow at 375 px: {probe}"
    assert probe["images"] == len([c for c in d.charts if c.png]) and probe["broken"] == 0, probe
    assert probe["widest"] <= 375, probe
    assert probe["sections"] == 9, probe
    shot = tmp_path / "digest-375.png"
    subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=90)
    assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG")

"""The digest's section maths: frames in, section dataclasses out, no warehouse access.

Definitions are in :mod:`digest.build`; what is read is :mod:`digest.data`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import date, timedelta

import pandas as pd

from churnflow.vocabulary import AT_RISK_BANDS, BANDS_BY_RISK, CLOSED_TASK_STATUSES, band_label
from digest.formatting import fmt_delta, fmt_money, humanize_feature, owner_label
from digest.report import (
    AccountRow, AccountsSection, Digest, DriftFlag, DriversSection, DriverShare, Headline, Metric, ModelHealth,
    MoversSection, OutreachSection, PlaybookRow, SurveySection, Verbatim,
)
from outreach.lift import PlaybookLift

log = logging.getLogger(__name__)

TOP_ACCOUNTS = 10
TOP_MOVERS = 10
MAX_VERBATIMS = 5
#: The band whose arrivals the digest lists ("new red accounts").
WORST_BAND = BANDS_BY_RISK[0]


def _band_counts(scores: pd.DataFrame) -> dict[str, int]:
    counts = scores["band"].value_counts() if not scores.empty else pd.Series(dtype=int)
    return {b: int(counts.get(b, 0)) for b in BANDS_BY_RISK}


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


def headline_section(now: pd.DataFrame, prev: pd.DataFrame | None, churned: pd.DataFrame, churned_before: pd.DataFrame) -> Headline:
    """ARR at risk, ARR churned, accounts per band and the worst band's ARR, each with last week's value.

    ``churned`` / ``churned_before`` are this and last week's churns with their ARR
    (:func:`digest.data.churned_between`)."""
    counts = _band_counts(now)
    prev_counts = _band_counts(prev) if prev is not None else None
    worst = band_label(WORST_BAND)
    metrics = [
        Metric("ARR at risk", float(now["arr_at_risk"].sum()),
               None if prev is None else float(prev["arr_at_risk"].sum()), "money", False),
        Metric("ARR churned this week", float(churned["arr"].sum()), float(churned_before["arr"].sum()), "money", False),
        *(Metric(f"{band_label(b)} accounts", counts[b], None if prev_counts is None else prev_counts[b], "count",
                 b not in AT_RISK_BANDS) for b in BANDS_BY_RISK),
        Metric(f"{worst} ARR", float(now.loc[now["band"] == WORST_BAND, "arr"].sum()),
               None if prev is None else float(prev.loc[prev["band"] == WORST_BAND, "arr"].sum()), "money", False),
    ]
    return Headline(
        metrics=metrics,
        total_arr=float(now["arr"].sum()) if "arr" in now else 0.0,
        churned_accounts=sorted(set(churned["account_id"].astype(str))),
        note=None if prev is not None else "no scores a week earlier: changes are not shown",
    )


def top_accounts_section(now: pd.DataFrame, prev: pd.DataFrame | None, trends: Mapping[str, list[int]],
                         include_contacts: bool) -> AccountsSection:
    """The accounts with the most ARR at risk this week."""
    prev_by_id = prev.set_index("account_id") if prev is not None else None
    rows = []
    for rec in now.sort_values(["arr_at_risk", "account_id"], ascending=[False, True]).head(TOP_ACCOUNTS).to_dict("records"):
        previous = None
        if prev_by_id is not None and rec["account_id"] in prev_by_id.index:
            previous = prev_by_id.loc[rec["account_id"]].to_dict()
        rows.append(_account_row(rec, previous, trends.get(str(rec["account_id"]), []), include_contacts))
    return AccountsSection(rows, None if rows else "no scored accounts this week")


def movers_section(
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

    new_red = merged[(merged["band"] == WORST_BAND) & (merged["band_prev"] != WORST_BAND)]
    new_red = new_red.sort_values("arr_at_risk", ascending=False)
    movers = build(drops)
    reds = build(new_red)
    return MoversSection(
        movers=movers,
        new_reds=reds,
        movers_reason=None if movers else "no account's health dropped since last week",
        new_reds_reason=None if reds else f"no account turned {WORST_BAND} this week",
    )


def _driver_shares(
    scores: pd.DataFrame, feature_family: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float], dict[str, int], dict[str, int], int]:
    """Positive contributions of at-risk accounts, summed by feature and by family."""
    at_risk = scores[scores["band"].isin(AT_RISK_BANDS)]
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


def drivers_section(now: pd.DataFrame, prev: pd.DataFrame | None, feature_family: Mapping[str, str]) -> DriversSection:
    feature_family = _driver_families(feature_family, now, prev)
    feats, fams, feat_n, fam_n, n_at_risk = _driver_shares(now, feature_family)
    if not feats:
        return DriversSection([], [], n_at_risk, reason=f"no {' or '.join(reversed(AT_RISK_BANDS))} accounts with risk drivers this week")
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


def outreach_section(tasks: pd.DataFrame | None, week_ending: date, lift: PlaybookLift | None) -> OutreachSection:
    """Tasks created and held out per playbook this week, completion to date, and the lift.

    Tasks belong to the week of the scoring day that triggered them (``as_of_date``), not to
    ``created_at`` (the run's wall clock): a backfill decides months of tasks in one run. A
    task is completed when its last synced status is a closed one."""
    if tasks is None:
        return OutreachSection([], [], reason="no outreach has run yet", lift_reason="no outreach has run yet")
    if tasks.empty:
        return OutreachSection([], [], reason="no outreach tasks up to this week", lift_reason="no outreach tasks yet")
    completed = tasks["status"].isin(CLOSED_TASK_STATUSES)
    this_lo = pd.Timestamp(week_ending - timedelta(days=6))
    prev_lo = this_lo - pd.Timedelta(days=7)
    this_week = tasks["as_of_date"] >= this_lo
    prev_week = (tasks["as_of_date"] >= prev_lo) & (tasks["as_of_date"] < this_lo)
    rows = []
    for playbook, g in tasks.groupby("playbook", sort=True):
        sent = ~g["held_out"]
        rows.append(PlaybookRow(
            playbook=str(playbook),
            created=int((sent & this_week[g.index]).sum()),
            held_out=int((g["held_out"] & this_week[g.index]).sum()),
            previous_created=int((sent & prev_week[g.index]).sum()),
            sent_to_date=int(sent.sum()),
            completed_to_date=int((sent & completed[g.index]).sum()),
        ))
    rows.sort(key=lambda r: (-r.created - r.held_out, r.playbook))
    lift = lift or PlaybookLift([], "no outreach tasks yet")
    return OutreachSection(rows, lift.rows, None, lift.reason)


def _nps(scores: pd.Series) -> float | None:
    if scores.empty:
        return None
    return float(((scores >= 9).mean() - (scores <= 6).mean()) * 100)


def survey_section(frame: pd.DataFrame | None, week_ending: date, names: Mapping[str, str], include_verbatims: bool) -> SurveySection:
    """NPS, CSAT top-2-box and CES this week against last week; comments only when allowed.

    ``frame`` holds the two weeks' responses (:func:`digest.data.survey_responses`)."""
    if frame is None:
        return SurveySection([], 0, 0, [], 0, reason="no surveys are configured for this book")
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


def model_health(now: pd.DataFrame, checks: pd.DataFrame | None) -> ModelHealth:
    """The champion that scored this week and its latest monitoring results (:func:`digest.data.monitoring_checks`)."""
    champion = model_name = None
    scored_at = None
    if not now.empty:
        champion = str(now["model_version"].mode().iloc[0])
        model_name = str(now["model_name"].mode().iloc[0])
        scored_at = pd.Timestamp(now["scored_at"].max()).to_pydatetime()
    empty = dict(realized_auc=None, previous_auc=None, psi_score=None, checked_at=None, drift=[])
    if checks is None:
        return ModelHealth(champion, model_name, scored_at, **empty,
                           reason="model monitoring has not run yet (no model_monitoring table)")
    mon = checks
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


def highlights(d: Digest) -> list[str]:
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
        out.append(f"{len(d.movers.new_reds)} account(s) turned {WORST_BAND}: {names}{more}.")
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

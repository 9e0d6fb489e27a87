"""The temporal split and the churner counts the gate judges: which as-of dates the trainer
fits, calibrates and holds out on, and whether each slice has enough churned accounts.

Its own module because training (to refuse) and the readiness profile (to say what each
option would give) both plan splits, and readiness also suggests the fix a refusal prints:
with the split here, training imports readiness and readiness imports neither back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from churnflow.errors import ChurnflowError
from churnflow.settings import Settings
from features.labels import label_wait_days, training_dates


class InsufficientDataError(ChurnflowError, ValueError):
    """Training refused before fitting: the data cannot support a model that can be judged.

    ``cause`` says what is short (snapshots, or churners in a slice, with the counts),
    ``fix`` what would help (weekly snapshots, a shorter horizon, more history), computed
    from the data when possible. ``counts`` holds the churners per slice when known."""

    def __init__(self, cause: str, fix: str, counts: dict[str, int] | None = None) -> None:
        self.cause, self.fix, self.counts = cause, fix, dict(counts or {})
        super().__init__(f"not enough data to train: {cause}. Fix: {fix}")


SLICES = ("fit", "calibration", "holdout")
MIN_HISTORY_DAYS = 90  # the longest feature window before the first snapshot


@dataclass
class SplitPlan:
    """Which as-of dates the trainer uses, and for what (see the module docstring)."""

    cadence: str
    fit_dates: list[date]
    calibration_date: date
    holdout_dates: list[date]
    matured: int  # matured snapshots available at this cadence (before taking the newest)

    @property
    def used(self) -> list[date]:
        return [*self.fit_dates, self.calibration_date, *self.holdout_dates]

    def slice_of(self) -> dict[date, str]:
        return {**{d: "fit" for d in self.fit_dates}, self.calibration_date: "calibration", **{d: "holdout" for d in self.holdout_dates}}


def snapshots_in(months: int, cadence: str) -> int:
    """``training_snapshots`` / ``holdout_snapshots`` are months: as many snapshots at the cadence."""
    return months if cadence == "monthly" else int(round(months * 52 / 12))


def matured_dates(data_start: date, observed_until: date, *, cadence: str, horizon_days: int, grace_days: int, lead_days: int) -> list[date]:
    """Every as-of date at the cadence (month starts, or Mondays) with MIN_HISTORY_DAYS of
    history behind it and a label matured by ``observed_until``."""
    if cadence == "monthly":
        return training_dates(
            data_start=data_start, observed_until=observed_until, horizon_days=horizon_days, grace_days=grace_days,
            snapshots=10_000, min_history_days=MIN_HISTORY_DAYS, lead_days=lead_days,
        )
    first = data_start + timedelta(days=MIN_HISTORY_DAYS)
    last = observed_until - timedelta(days=label_wait_days(horizon_days=horizon_days, grace_days=grace_days, lead_days=lead_days))
    if last < first:
        return []
    return [d.date() for d in pd.date_range(first, last, freq="W-MON")]


def plan_split(
    data_start: date, observed_until: date, settings: Settings, *, cadence: str | None = None, horizon_days: int | None = None,
    lead_days: int | None = None,
) -> SplitPlan:
    """The trainer's split for these settings (cadence / horizon / lead overridable, for the
    readiness profile's what-ifs). Raises InsufficientDataError when the history is too
    short for holdout + gap + calibration + fit."""
    cadence = cadence or settings.snapshot_cadence
    horizon = settings.horizon_days if horizon_days is None else horizon_days
    lead = settings.label_lead_days if lead_days is None else lead_days
    everything = matured_dates(data_start, observed_until, cadence=cadence, horizon_days=horizon, grace_days=settings.churn_grace_days, lead_days=lead)
    dates = everything[-snapshots_in(settings.training_snapshots, cadence) :]
    n_hold = snapshots_in(settings.holdout_snapshots, cadence)
    gap = timedelta(days=lead + horizon)
    holdout = dates[-n_hold:] if len(dates) > n_hold else []
    earlier = [d for d in dates[:-n_hold] if holdout and d + gap <= holdout[0]]
    if len(earlier) < 2:
        need = MIN_HISTORY_DAYS + 2 * (lead + horizon) + settings.churn_grace_days + 31 * (settings.holdout_snapshots + 1)
        raise InsufficientDataError(
            f"only {len(dates)} matured {cadence} snapshots between {data_start} and {observed_until} at a {horizon}-day horizon: "
            f"too few for {n_hold} holdout + a {lead + horizon}-day gap + calibration + fit",
            f"more history (about {need} days for this horizon; the data spans {(observed_until - data_start).days}), "
            f"or a shorter horizon (horizon_days); `churnflow profile` shows what each option gives",
        )
    return SplitPlan(cadence, earlier[:-1], earlier[-1], holdout, len(everything))


def slice_churners(labels: pd.DataFrame, plan: SplitPlan) -> dict[str, dict[str, int]]:
    """Per slice: rows, positive rows, and distinct churned accounts (what the gate counts:
    an account churning in three overlapping monthly windows is one churner, not three)."""
    role = labels["as_of_date"].dt.date.map(plan.slice_of())
    out: dict[str, dict[str, int]] = {}
    for name in SLICES:
        part = labels[role == name]
        out[name] = {
            "rows": int(len(part)),
            "positive_rows": int(part["churned"].sum()),
            "churners": int(part.loc[part["churned"] == 1, "account_id"].nunique()),
        }
    return out


def churner_shortfalls(counts: dict[str, dict[str, int]], settings: Settings) -> list[str]:
    """'<slice> has N churned accounts (needs M)' for each slice below its minimum, or with no
    retained accounts (one class cannot calibrate nor be evaluated)."""
    minimum = {"fit": settings.min_churners_fit, "calibration": settings.min_churners_calibration, "holdout": settings.min_churners_holdout}
    short = []
    for name in SLICES:
        c = counts[name]
        if c["churners"] < minimum[name]:
            short.append(f"{name} has {c['churners']} churned accounts (needs {minimum[name]})")
        elif c["rows"] - c["positive_rows"] == 0:
            short.append(f"{name} has no retained accounts (one class)")
    return short

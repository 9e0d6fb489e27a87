"""Model quality metrics and the oracle from a demo book's ``truth`` table."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean prediction| over equal-count bins, weighted by bin size."""
    order = np.argsort(p)
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(float(y[chunk].mean()) - float(p[chunk].mean()))
    return total / len(p)


def top_decile(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(lift, recall) of the 10% highest-risk accounts."""
    k = max(1, int(round(len(p) * 0.1)))
    top = np.argsort(-p)[:k]
    base = y.mean()
    lift = float(y[top].mean() / base) if base > 0 else float("nan")
    recall = float(y[top].sum() / y.sum()) if y.sum() > 0 else float("nan")
    return lift, recall


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    lift, recall = top_decile(y, p)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "top_decile_lift": lift,
        "recall_top_10pct": recall,
        "churn_rate": float(y.mean()),
        "rows": float(len(y)),
    }


def oracle_probability(truth: pd.DataFrame, as_of: date, horizon_days: int) -> pd.Series:
    """The generator's true P(churn in [as_of, as_of + horizon)), per account.

    ``truth`` holds monthly hazards; the months whose start falls in the window count, so
    the horizon is rounded to whole months (90 days -> 3 months).
    """
    start = pd.Timestamp(as_of)
    months = max(1, int(round(horizon_days / 30.4)))
    periods = pd.to_datetime(truth["period_start"])
    first = start.to_period("M").to_timestamp()
    if first < start:
        first = first + pd.offsets.MonthBegin(1)
    window = truth[(periods >= first) & (periods < first + pd.offsets.MonthBegin(months))]
    survival = (1 - window["hazard"]).groupby(window["account_id"]).prod()
    return (1 - survival).rename("p_oracle")


# -- uncertainty: bootstrap over accounts ----------------------------------------------------

BOOTSTRAP_CHUNK = 50  # resamples per weight matrix (bounds memory on large holdouts)


def _weighted_auc(y: np.ndarray, p_rank: np.ndarray, n_values: int, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of ``weights`` (resamples x rows), ties counted half.

    ``p_rank`` is each row's dense rank among the distinct scores: per resample the
    weighted positives and negatives are summed per distinct score, then AUC = P(score of
    a positive > score of a negative) from cumulative sums, without materialising rows."""
    pos = weights * y
    neg = weights * (1 - y)
    out = np.empty(len(weights))
    for i in range(len(weights)):
        pos_v = np.bincount(p_rank, weights=pos[i], minlength=n_values)
        neg_v = np.bincount(p_rank, weights=neg[i], minlength=n_values)
        below = np.cumsum(neg_v) - neg_v
        w_pos, w_neg = pos_v.sum(), neg_v.sum()
        out[i] = float((pos_v * (below + 0.5 * neg_v)).sum() / (w_pos * w_neg)) if w_pos > 0 and w_neg > 0 else np.nan
    return out


def _weighted_top_decile_lift(y: np.ndarray, order: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Churn rate of the riskiest 10% of (weighted) rows over the overall churn rate, per resample."""
    w = weights[:, order]
    yw = w * y[order]
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1:]
    top = cum <= 0.1 * total
    top[:, 0] = True
    rate_top = (yw * top).sum(axis=1) / (w * top).sum(axis=1)
    base = yw.sum(axis=1) / total[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, rate_top / base, np.nan)


def account_resample_weights(groups: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Resamples x rows weights: accounts drawn with replacement, stratified by whether the
    account churned in any of its rows (so every resample keeps the holdout's churners
    count), each drawn account bringing all its rows (an account in two holdout snapshots
    is one unit, not two independent ones)."""
    codes, uniques = pd.factorize(pd.Series(groups), sort=False)
    churned_account = np.zeros(len(uniques), dtype=bool)
    np.logical_or.at(churned_account, codes, np.asarray(y, dtype=int) == 1)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(uniques)))
    for stratum in (churned_account, ~churned_account):
        members = np.flatnonzero(stratum)
        if len(members):
            counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
    return counts[:, codes]


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, *, resamples: int = 500, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Percentile intervals of ROC AUC and top-decile lift from a stratified account bootstrap.

    Why: on a thin holdout a point AUC of 0.91 can come from four churners; the lower
    bound is what the gate trusts. Returns ``roc_auc_ci_low/high``, ``top_decile_lift_ci_low/high``,
    ``positives``, ``negatives`` (rows) and ``churned_accounts``."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    groups = np.asarray(groups)
    _, p_rank = np.unique(p, return_inverse=True)
    n_values = int(p_rank.max()) + 1 if len(p) else 0
    order = np.argsort(-p, kind="stable")
    aucs, lifts = [], []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        weights = account_resample_weights(groups, y, min(BOOTSTRAP_CHUNK, resamples - start), seed + start)
        aucs.append(_weighted_auc(y, p_rank, n_values, weights))
        lifts.append(_weighted_top_decile_lift(y, order, weights))
    tail = 100 * (1 - level) / 2
    out = {
        "positives": float(y.sum()),
        "negatives": float(len(y) - y.sum()),
        "churned_accounts": float(pd.Series(groups[y == 1]).nunique()),
    }
    for name, values in (("roc_auc", np.concatenate(aucs)), ("top_decile_lift", np.concatenate(lifts))):
        finite = values[np.isfinite(values)]
        low, high = (np.percentile(finite, [tail, 100 - tail]) if len(finite) else (np.nan, np.nan))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(low), float(high)
    return out


def paired_auc_gain(
    y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, groups: np.ndarray, *, resamples: int = 500, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(gain, ci_low, ci_high) of AUC(new) - AUC(old) on the same rows, with the same
    account resamples for both models (paired), so shared noise cancels."""
    y = np.asarray(y, dtype=int)
    groups = np.asarray(groups)
    ranks = []
    for p in (np.asarray(p_new, dtype=float), np.asarray(p_old, dtype=float)):
        _, r = np.unique(p, return_inverse=True)
        ranks.append((r, int(r.max()) + 1))
    gains = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        weights = account_resample_weights(groups, y, min(BOOTSTRAP_CHUNK, resamples - start), seed + start)
        gains.append(_weighted_auc(y, *ranks[0], weights) - _weighted_auc(y, *ranks[1], weights))
    values = np.concatenate(gains)
    values = values[np.isfinite(values)]
    full = np.ones((1, len(y)))
    gain = float(_weighted_auc(y, *ranks[0], full)[0] - _weighted_auc(y, *ranks[1], full)[0])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
    return gain, float(low), float(high)

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

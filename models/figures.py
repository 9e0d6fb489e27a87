"""Figures logged with every training run (matplotlib, no display needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.churn_model import ChurnModel
from models.explain import contributions


def calibration_figure(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Figure:
    """Observed churn rate vs mean prediction in equal-count bins."""
    order = np.argsort(p)
    groups = [g for g in np.array_split(order, bins) if len(g)]
    mean_p = [float(p[g].mean()) for g in groups]
    rate = [float(y[g].mean()) for g in groups]
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    top = max(max(mean_p), max(rate), 0.05) * 1.1
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect calibration")
    ax.plot(mean_p, rate, marker="o", label="model")
    ax.set(xlabel="mean predicted p_churn", ylabel="observed churn rate", title="Calibration (holdout)", xlim=(0, top), ylim=(0, top))
    ax.legend()
    fig.tight_layout()
    return fig


def lift_figure(y: np.ndarray, p: np.ndarray) -> Figure:
    """Churn rate by risk decile relative to the base rate (decile 1 = riskiest)."""
    order = np.argsort(-p)
    base = y.mean() if y.mean() > 0 else 1.0
    lifts = [float(y[g].mean() / base) for g in np.array_split(order, 10)]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.bar(range(1, 11), lifts)
    ax.axhline(1.0, color="grey", linestyle="--")
    ax.set(xlabel="risk decile (1 = riskiest)", ylabel="lift over base rate", title="Lift by decile (holdout)", xticks=range(1, 11))
    fig.tight_layout()
    return fig


def shap_summary_figure(model: ChurnModel, rows: pd.DataFrame, top: int = 15) -> Figure:
    """Mean |SHAP| per feature: what the model leans on."""
    values = contributions(model, rows)[:, :-1]
    importance = pd.Series(np.abs(values).mean(axis=0), index=model.feature_names).sort_values().tail(top)
    fig = Figure(figsize=(7, 0.35 * len(importance) + 1.2))
    ax = fig.subplots()
    ax.barh(importance.index, importance.to_numpy())
    ax.set(xlabel="mean |SHAP| (log-odds)", title="SHAP summary (holdout)")
    fig.tight_layout()
    return fig

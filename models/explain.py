"""Explaining scores: exact tree SHAP values and plain-words drivers.

The values are exactly those of ``shap.TreeExplainer`` on the LightGBM model (which
delegates to ``Booster.predict(pred_contrib=True)``), computed faster by
:mod:`models.fast_shap` and in bounded chunks. Contributions are on the model's margin (log-odds) scale; calibration is monotone, so the
ranking of drivers is the same on the probability scale.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from features.catalogue import FAMILIES
from models.churn_model import ChurnModel
from models.fast_shap import tree_shap


def contributions(model: ChurnModel, features: pd.DataFrame, chunk_rows: int = 20000) -> np.ndarray:
    """Exact SHAP values, shape (rows, features + 1); the last column is the expected value.

    Computed by :func:`models.fast_shap.tree_shap` in bounded chunks: the same values as
    ``shap.TreeExplainer`` / ``pred_contrib``, several times faster (``churnflow bench explain``).
    """
    if len(features) == 0:
        return np.empty((0, len(model.feature_names) + 1))
    return tree_shap(model.booster, model.matrix(features), chunk_rows=chunk_rows)


def _driver(model: ChurnModel, name: str, value: object, contribution: float) -> dict[str, object]:
    """One driver, worded by the model's own catalogue entry (dynamic features included)."""
    feature = model.feature(name)
    plain = value.item() if isinstance(value, np.generic) else value
    if isinstance(plain, float) and np.isnan(plain):
        plain = None
    return {"feature": name, "family": feature.family, "value": plain, "contribution": round(float(contribution), 6),
            "sentence": feature.explain(plain)}


def drivers(model: ChurnModel, features: pd.DataFrame, shap_values: np.ndarray, top: int = 3) -> pd.DataFrame:
    """Per account: top risk drivers (largest positive contributions) and the top protective one.

    Only the model's own features can be drivers (a family the book lacks was never given to
    the model, so it is never cited). A feature of "learned" direction is a risk driver when
    its contribution raises risk for this account, protective when it lowers it."""
    values = shap_values[:, :-1]
    names = model.feature_names
    raw = features[names].to_numpy(dtype=object)
    order = np.argsort(-values, axis=1)
    rows = []
    for i in range(len(values)):
        risk = [_driver(model, names[j], raw[i, j], values[i, j]) for j in order[i, :top] if values[i, j] > 0]
        j = order[i, -1]
        protective = _driver(model, names[j], raw[i, j], values[i, j]) if values[i, j] < 0 else None
        rows.append(
            {
                "top_drivers": json.dumps(risk),
                "top_drivers_text": "\n".join(d["sentence"] for d in risk),
                "protective_driver": json.dumps(protective) if protective else None,
                "protective_driver_text": protective["sentence"] if protective else None,
            }
        )
    return pd.DataFrame(rows, index=features.index)


def family_scores(model: ChurnModel, shap_values: np.ndarray) -> pd.DataFrame:
    """Sub-scores per feature family, from the same SHAP values as the overall score.

    For family f with summed contribution c_f and the model's expected margin m0, the
    sub-score is the health score an account would have if only f's signals differed from
    the average account: round(100 * (1 - calibrate(m0 + c_f))). Families that pull risk
    up score below the average account's health, protective ones above. (docs/health-score.md)
    A family the model does not have (its source is absent) has no sub-score (missing), not
    the average account's health: there is nothing to score it on.
    """
    base = shap_values[:, -1]
    families = np.array([model.feature(name).family for name in model.feature_names])
    present = set(model.families)
    out = {}
    for family in FAMILIES:
        if family not in present:
            out[f"{family}_score"] = pd.array([pd.NA] * len(shap_values), dtype="Int64")
            continue
        c = shap_values[:, :-1][:, families == family].sum(axis=1)
        out[f"{family}_score"] = np.rint(100 * (1 - model.calibrator(base + c))).astype(int)
    return pd.DataFrame(out)

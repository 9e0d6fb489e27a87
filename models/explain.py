"""Explaining scores: exact tree SHAP values and plain-words drivers.

A driver shown to a CS team is a *reason*: it says which way it pushes and compared with
what. Signals are compared with the typical value of the account's peers on the same as-of
date (:func:`peer_baselines`: the median over accounts of the same segment), or, for a
change, by its sign. A reason appears on the side its value lies: a risk reason only when
the value is on the risky side of its baseline (a rise in usage is never a risk reason), a
protective one only on the other side. Context facts (tenure, ARR, plan...) are listed
apart, as context (docs/health-score.md).

The values are exactly those of ``shap.TreeExplainer`` on the LightGBM model (which
delegates to ``Booster.predict(pred_contrib=True)``), computed faster by
:mod:`models.fast_shap` and in bounded chunks. Contributions are on the model's margin (log-odds) scale; calibration is monotone, so the
ranking of drivers is the same on the probability scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.catalogue import FAMILIES, Feature
from models.churn_model import ChurnModel
from models.fast_shap import tree_shap

# Peers of an account: the accounts of its segment (its size) on the same as-of date. A
# segment with fewer accounts than this, or an account without one, is compared with all
# accounts of the day. A baseline needs at least MIN_PEER_VALUES known values.
PEER_COLUMN = "segment"
MIN_PEERS = 30
MIN_PEER_VALUES = 10
ALL_PEERS = "all accounts"
MAX_CONTEXT = 2  # context facts kept per account


def contributions(model: ChurnModel, features: pd.DataFrame, chunk_rows: int = 20000) -> np.ndarray:
    """Exact SHAP values, shape (rows, features + 1); the last column is the expected value.

    Computed by :func:`models.fast_shap.tree_shap` in bounded chunks: the same values as
    ``shap.TreeExplainer`` / ``pred_contrib``, several times faster (``churnflow bench explain``).
    """
    if len(features) == 0:
        return np.empty((0, len(model.feature_names) + 1))
    return tree_shap(model.booster, model.matrix(features), chunk_rows=chunk_rows)


def _plain(value: object) -> object:
    plain = value.item() if isinstance(value, np.generic) else value
    if isinstance(plain, float) and np.isnan(plain):
        return None
    return plain


def _label(group: object) -> str:
    """A segment as people say it: ``mid_market`` -> "mid-market accounts", ``smb`` -> "SMB accounts"."""
    text = str(group).replace("_", "-")
    return f"{text.upper() if len(text) <= 3 else text} accounts"


@dataclass(frozen=True)
class PeerBaselines:
    """The typical value of every feature among an account's peers on one as-of date.

    ``groups`` maps a peer group (a segment) to feature -> typical value; ``overall`` holds
    the typical values over all accounts of the day, used for accounts without a group of
    their own. Computed once per day from every active account's features, so a partition
    of the accounts is explained against the same baselines as the whole book."""

    overall: dict[str, object]
    groups: dict[str, dict[str, object]] = field(default_factory=dict)

    def of(self, group: object, name: str) -> tuple[object, str | None]:
        """(typical value, who the peers are) of feature ``name`` for an account of ``group``."""
        typical = self.groups.get(str(group), {}).get(name) if group is not None else None
        if typical is not None:
            return typical, _label(group)
        typical = self.overall.get(name)
        return (typical, ALL_PEERS) if typical is not None else (None, None)


def _typical(feature: Feature, column: pd.Series) -> object:
    """Median of a number, share of a flag, most common label of a category; None when too
    few accounts have a value to call anything typical."""
    known = column.dropna()
    if len(known) < MIN_PEER_VALUES:
        return None
    if feature.is_categorical:
        return str(known.astype(str).value_counts().index[0])
    numbers = pd.to_numeric(known, errors="coerce").dropna()
    if len(numbers) < MIN_PEER_VALUES:
        return None
    return float(numbers.mean()) if feature.unit == "flag" else float(numbers.median())


def peer_baselines(model: ChurnModel, features: pd.DataFrame) -> PeerBaselines:
    """Baselines of the model's features from the feature rows of ONE as-of date (every active
    account of the day, so only data before that date: nothing from the future)."""
    compared = [name for name in model.feature_names if name in features.columns and not model.feature(name).is_context]

    def typical_values(rows: pd.DataFrame) -> dict[str, object]:
        out = {}
        for name in compared:
            value = _typical(model.feature(name), rows[name])
            if value is not None:
                out[name] = value
        return out

    groups: dict[str, dict[str, object]] = {}
    if PEER_COLUMN in features.columns:
        for group, rows in features.groupby(features[PEER_COLUMN].astype("string"), dropna=True):
            if len(rows) >= MIN_PEERS:
                groups[str(group)] = typical_values(rows)
    return PeerBaselines(typical_values(features), groups)


def _driver(feature: Feature, value: object, contribution: float, kind: str,
            baseline: object = None, peers: str | None = None) -> dict[str, object]:
    """One driver, worded by the model's own catalogue entry (dynamic features included).

    Fields: feature, family, value, contribution, sentence (as before), and kind (risk,
    protective or context), baseline (the typical value it is compared with) and peers (who
    the typical value is of)."""
    compared = feature.versus(value, baseline, peers) is not None
    return {"feature": feature.name, "family": feature.family, "value": value, "contribution": round(float(contribution), 6),
            "sentence": feature.explain(value, baseline, peers), "kind": kind,
            "baseline": baseline if compared else None, "peers": peers if compared else None}


def _as_reason(feature: Feature, value: object, baseline: object, peers: str | None, risk: bool) -> bool:
    """Whether this driver may be shown as a risk (``risk``) or protective reason: it says
    which way it points (a change, or a comparison with peers) and its value lies on that
    side (for features whose risky direction is known)."""
    if feature.is_context or value is None:
        return False
    if feature.compare == "peers" and feature.versus(value, baseline, peers) is None:
        return False  # nothing typical to compare with: it would be a bare fact
    if feature.compare == "change" and not feature.is_categorical and round(abs(float(value)) * 100) == 0:  # type: ignore[arg-type]
        return False  # "rose 0%": no change is no direction, whatever the model made of it
    side = feature.risky_side(value, baseline)
    if feature.risk_when in ("higher", "lower"):
        return side is risk
    return True  # learned or categorical: the account's own SHAP sign is the direction


def explain_account(
    catalogue: list[Feature], names: list[str], values: np.ndarray, contrib: np.ndarray,
    baselines: PeerBaselines, group: object, top: int,
) -> tuple[list[dict[str, object]], dict[str, object] | None, list[dict[str, object]]]:
    """(risk reasons, protective reason, context facts) of one account, strongest first."""
    risk: list[dict[str, object]] = []
    context: list[dict[str, object]] = []
    order = np.argsort(-contrib, kind="stable")
    for j in order:
        if contrib[j] <= 0 or (len(risk) >= top and len(context) >= MAX_CONTEXT):
            break
        feature, value = catalogue[j], _plain(values[j])
        baseline, peers = baselines.of(group, names[j])
        if feature.is_context or value is None:
            if len(context) < MAX_CONTEXT:  # a fact, or a missing value: context, not a reason
                context.append(_driver(feature, value, contrib[j], "context"))
        elif len(risk) < top and _as_reason(feature, value, baseline, peers, risk=True):
            risk.append(_driver(feature, value, contrib[j], "risk", baseline, peers))
    protective = None
    for j in order[::-1]:
        if contrib[j] >= 0:
            break
        feature, value = catalogue[j], _plain(values[j])
        baseline, peers = baselines.of(group, names[j])
        if _as_reason(feature, value, baseline, peers, risk=False):
            protective = _driver(feature, value, contrib[j], "protective", baseline, peers)
            break
    return risk, protective, context


def drivers(model: ChurnModel, features: pd.DataFrame, shap_values: np.ndarray, top: int = 3,
            baselines: PeerBaselines | None = None) -> pd.DataFrame:
    """Per account: the top risk reasons, the strongest protective reason and context facts.

    Only the model's own features can be drivers (a family the book lacks was never given to
    the model, so it is never cited). Reasons are ranked by SHAP contribution; a driver that
    cannot be said with a direction, or whose value lies on the other side of its baseline,
    is passed over for the next one. ``baselines`` default to those of ``features`` itself:
    pass the day's (:func:`peer_baselines` of every account) when explaining a subset."""
    baselines = baselines if baselines is not None else peer_baselines(model, features)
    values = shap_values[:, :-1]
    names = model.feature_names
    catalogue = [model.feature(name) for name in names]
    raw = features[names].to_numpy(dtype=object)
    groups = features[PEER_COLUMN].astype("string").to_numpy(dtype=object) if PEER_COLUMN in features.columns else [None] * len(features)
    rows = []
    for i in range(len(values)):
        group = None if groups[i] is None or groups[i] is pd.NA else groups[i]
        risk, protective, context = explain_account(catalogue, names, raw[i], values[i], baselines, group, top)
        rows.append(
            {
                "top_drivers": json.dumps(risk),
                "top_drivers_text": "\n".join(d["sentence"] for d in risk),
                "protective_driver": json.dumps(protective) if protective else None,
                "protective_driver_text": protective["sentence"] if protective else None,
                "context_drivers": json.dumps(context),
                "context_text": "\n".join(d["sentence"] for d in context),
            }
        )
    return pd.DataFrame(rows, index=features.index)


def family_scores(model: ChurnModel, shap_values: np.ndarray, to_health: Callable[[np.ndarray], np.ndarray]) -> pd.DataFrame:
    """Sub-scores per feature family, from the same SHAP values as the overall score.

    For family f with summed contribution c_f and the model's expected margin m0, the
    sub-score is the health score an account would have if only f's signals differed from
    the average account: to_health(calibrate(m0 + c_f)), on the same scale as the overall
    score (``to_health``: probability -> health, models.score). Families that pull risk
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
        out[f"{family}_score"] = to_health(model.calibrator(base + c))
    return pd.DataFrame(out)

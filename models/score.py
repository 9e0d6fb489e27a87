"""Scoring: champion model -> p_churn, health score, band, trend, ARR at risk, drivers.

Scores are appended to the ``account_scores`` history; re-scoring a day replaces that
day's rows and never touches other days.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow.schema import ACCOUNT_SCORES, BAND_OVERRIDES
from churnflow.settings import Settings
from churnflow.warehouse import read_sql, replace_rows, table_exists
from features.build import FEATURE_TABLE, build_features
from models.explain import contributions, drivers, family_scores
from models.registry import LoadedModel, load_model

log = logging.getLogger(__name__)

SCORES_TABLE = ACCOUNT_SCORES.name
BANDS = ("green", "yellow", "red")


def health_score(p_churn: np.ndarray) -> np.ndarray:
    """0-100, higher is healthier."""
    return np.rint(100 * (1 - np.asarray(p_churn))).astype(int)


def band(p_churn: np.ndarray, settings: Settings) -> np.ndarray:
    p = np.asarray(p_churn)
    return np.select([p >= settings.red_threshold, p >= settings.yellow_threshold], ["red", "yellow"], default="green")


def load_features(engine: sa.Engine, as_of: date) -> pd.DataFrame:
    """Materialized features for ``as_of`` if present, else built now."""
    if table_exists(engine, FEATURE_TABLE):
        frame = read_sql(engine, f"SELECT * FROM {FEATURE_TABLE} WHERE as_of_date = :d", {"d": datetime(as_of.year, as_of.month, as_of.day)})
        if len(frame):
            return frame
    return build_features(engine, as_of)


def _previous_health(engine: sa.Engine, as_of: date, days: int) -> pd.Series:
    if not table_exists(engine, SCORES_TABLE):
        return pd.Series(dtype=float)
    then = datetime.combine(as_of - timedelta(days=days), datetime.min.time())
    prev = read_sql(engine, f"SELECT account_id, health_score FROM {SCORES_TABLE} WHERE as_of_date = :d", {"d": then})
    return prev.set_index("account_id")["health_score"].astype(float)


def active_overrides(engine: sa.Engine, as_of: date) -> pd.DataFrame:
    """The latest band override per account that has not expired by ``as_of``."""
    if not table_exists(engine, BAND_OVERRIDES.name):
        return pd.DataFrame(columns=BAND_OVERRIDES.column_names)
    day = datetime(as_of.year, as_of.month, as_of.day)
    # An override applies to every day scored before it expires, including a re-score of
    # the day the CSM looked at (often earlier than the moment they pinned it).
    rows = read_sql(engine, f"SELECT * FROM {BAND_OVERRIDES.name} WHERE expires_on > :d", {"d": day})
    return rows.sort_values("created_at").groupby("account_id").tail(1)


def apply_overrides(scores: pd.DataFrame, overrides: pd.DataFrame) -> pd.DataFrame:
    """Pinned bands win over the model's; the model's band and the reason stay visible."""
    out = scores.copy()
    out["model_band"] = out["band"]
    pinned = out["account_id"].map(overrides.set_index("account_id")["band"]) if len(overrides) else pd.Series(None, index=out.index)
    reason = out["account_id"].map(overrides.set_index("account_id")["reason"]) if len(overrides) else pd.Series(None, index=out.index)
    out["band"] = pinned.where(pinned.notna(), out["band"])
    out["band_override_reason"] = reason.where(pinned.notna(), None)
    return out


def set_override(engine: sa.Engine, account_id: str, band: str, *, reason: str, set_by: str, expires_on: date) -> None:
    """Pin an account's band until ``expires_on`` (a CSM knows something the model does not)."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if not reason.strip():
        raise ValueError("an override needs a reason")
    known = read_sql(engine, "SELECT COUNT(*) AS n FROM accounts WHERE account_id = :a", {"a": account_id}).loc[0, "n"]
    if not known:
        raise LookupError(f"table 'accounts' has no account_id {account_id!r}")
    row = pd.DataFrame([{
        "account_id": account_id, "band": band, "reason": reason.strip(), "set_by": set_by,
        "expires_on": pd.Timestamp(expires_on), "created_at": pd.Timestamp(datetime.now().replace(microsecond=0)),
    }])
    replace_rows(engine, BAND_OVERRIDES.name, row)


def score_accounts(
    engine: sa.Engine, settings: Settings, as_of: date, *, features: pd.DataFrame | None = None, loaded: LoadedModel | None = None
) -> pd.DataFrame:
    """Score and explain every active account as of ``as_of`` and store the rows."""
    loaded = loaded or load_model(settings)
    features = load_features(engine, as_of) if features is None else features
    model = loaded.model
    p = model.predict_proba(features) if len(features) else np.empty(0)
    shap_values = contributions(model, features, settings.explain_chunk_rows)
    explained = drivers(model, features, shap_values, settings.top_drivers)
    scores = pd.DataFrame(
        {
            "as_of_date": pd.Timestamp(as_of),
            "account_id": features["account_id"].to_numpy(),
            "p_churn": p,
            "health_score": health_score(p),
            "band": band(p, settings),
            "arr": features["arr"].fillna(0).to_numpy(),
        }
    )
    scores["arr_at_risk"] = scores["p_churn"] * scores["arr"]
    for days in (7, 30):
        prev = _previous_health(engine, as_of, days)
        scores[f"health_change_{days}d"] = scores["health_score"] - scores["account_id"].map(prev)
    scores = pd.concat([scores, explained.reset_index(drop=True), family_scores(model, shap_values)], axis=1)
    scores = apply_overrides(scores, active_overrides(engine, as_of))
    scores["model_name"] = loaded.name
    scores["model_version"] = loaded.version
    scores["scored_at"] = pd.Timestamp(datetime.now().replace(microsecond=0))
    scores = scores[ACCOUNT_SCORES.column_names]
    replace_rows(engine, SCORES_TABLE, scores, where={"as_of_date": datetime(as_of.year, as_of.month, as_of.day)})
    counts = scores["band"].value_counts().to_dict()
    log.info("scored %d accounts as of %s with %s v%s: %s (%d overridden)", len(scores), as_of, loaded.name, loaded.version, counts, int(scores["band_override_reason"].notna().sum()))
    return scores

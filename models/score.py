"""Scoring: champion model -> p_churn, health score, band, trend, ARR at risk, drivers.

Scores are appended to the ``account_scores`` history; re-scoring a day replaces that
day's rows and never touches other days. Re-scoring a subset of accounts replaces only
their rows. Computing (:func:`compute_scores`, pure) and storing (:func:`store_scores`)
are separate so the flow can score stable-hash partitions (:func:`partition_of`)
concurrently and store once. A day re-scored from exactly the same inputs (same
:func:`scoring_fingerprint`) reuses its stored rows instead of explaining every account again.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow.errors import InvalidValueError, UnknownAccountError
from churnflow.fingerprint import frame_digest, source_version
from churnflow.schema import ACCOUNT_SCORES, BAND_OVERRIDES, SCORE_BUILDS
from churnflow.settings import Settings
from churnflow.vocabulary import BANDS, FAMILIES
from churnflow.warehouse import ensure_table, insert_frame, read_sql, replace_rows, table_exists
from features.build import DEFAULT_EVENT_TYPES_TOP, features_for, materialize_features
from models.explain import PeerBaselines, contributions, drivers, family_scores, peer_baselines
from models.registry import LoadedModel, load_model, version_base_rate

log = logging.getLogger(__name__)

SCORES_TABLE = ACCOUNT_SCORES.name
TREND_DAYS = (7, 30)
DELETE_BATCH = 500  # account ids per DELETE ... IN (...) statement


# The health scale (docs/health-score.md). Version 1, stored before the scale had a
# version (health_scale empty), was round(100 * (1 - p_churn)): "health 80" could be red.
HEALTH_SCALE = 2
# Health at the probability anchors p = 0, yellow cut-off, red cut-off, 1; linear between.
HEALTH_ANCHORS = (100.0, 70.0, 40.0, 0.0)
# The whole numbers each band's health lies in: the number and the colour never disagree.
BAND_HEALTH: dict[str, tuple[int, int]] = {"green": (70, 100), "yellow": (40, 69), "red": (0, 39)}


def band_of(p_churn: np.ndarray, red: float, yellow: float) -> np.ndarray:
    """green, yellow or red: p_churn at or above ``red`` is red, at or above ``yellow`` yellow."""
    p = np.asarray(p_churn, dtype=float)
    return np.select([p >= red, p >= yellow], ["red", "yellow"], default="green")


def health_score(p_churn: np.ndarray, red: float | np.ndarray, yellow: float | np.ndarray) -> np.ndarray:
    """0-100, higher is healthier: a monotone transform of the calibrated probability whose
    band cut-offs land at fixed points, so "health 80" is green wherever the bands are.

    Piecewise linear in p_churn through (0, 100), (yellow, 70), (red, 40), (1, 0), rounded
    to the nearest whole number inside the account's band (green 70-100, yellow 40-69,
    red 0-39): an account exactly at a cut-off gets its band's edge (yellow at p = yellow:
    69). Non-increasing in p_churn for any thresholds 0 < yellow <= red < 1. The thresholds
    may be arrays (one pair per row, e.g. history scored by several models).
    """
    p = np.clip(np.asarray(p_churn, dtype=float), 0.0, 1.0)
    red, yellow = np.asarray(red, dtype=float), np.asarray(yellow, dtype=float)
    top, at_yellow, at_red, bottom = HEALTH_ANCHORS
    raw = np.where(p < yellow, _ramp(p, 0.0, yellow, top, at_yellow),
                   np.where(p < red, _ramp(p, yellow, red, at_yellow, at_red), _ramp(p, red, 1.0, at_red, bottom)))
    bands = band_of(p, red, yellow)
    low = np.select([bands == b for b in BAND_HEALTH], [lo for lo, _ in BAND_HEALTH.values()])
    high = np.select([bands == b for b in BAND_HEALTH], [hi for _, hi in BAND_HEALTH.values()])
    return np.clip(np.rint(raw), low, high).astype(int)


def band_thresholds(settings: Settings, base_rate: float | None) -> tuple[float, float]:
    """(red, yellow) p_churn cut-offs: the absolute override when set, else multiples of the
    model's training base rate, so a book churning 1% a quarter is not all green and one
    churning 20% is not all red."""
    if settings.red_threshold is not None and settings.yellow_threshold is not None:
        return settings.red_threshold, settings.yellow_threshold
    if base_rate is None or not 0 < base_rate < 1:
        raise ValueError(
            "the model carries no training base rate to set bands from: retrain it with `churnflow train`, "
            "or set absolute bands (red_threshold and yellow_threshold)"
        )
    return min(settings.red_base_rate_multiple * base_rate, 0.999), min(settings.yellow_base_rate_multiple * base_rate, 0.999)


def _ramp(x: np.ndarray, x0: np.ndarray | float, x1: np.ndarray | float, h0: float, h1: float) -> np.ndarray:
    """Linear from (x0, h0) to (x1, h1); h0 on an empty segment."""
    x0, x1 = np.asarray(x0, dtype=float), np.asarray(x1, dtype=float)
    span = np.where(x1 > x0, x1 - x0, 1.0)
    return h0 + (h1 - h0) * np.clip((x - x0) / span, 0.0, 1.0)


def band(p_churn: np.ndarray, settings: Settings, base_rate: float | None = None) -> np.ndarray:
    red, yellow = band_thresholds(settings, base_rate)
    return band_of(p_churn, red, yellow)


def load_features(engine: sa.Engine, as_of: date, event_types_top: int = DEFAULT_EVENT_TYPES_TOP) -> pd.DataFrame:
    """Features for ``as_of``: the stored ones while every input they read is unchanged,
    else rebuilt (and stored)."""
    return materialize_features(engine, [as_of], event_types_top=event_types_top)


TREND_TOLERANCE_DAYS = 6


def _previous_health(engine: sa.Engine, as_of: date, days: int) -> pd.Series:
    """Health ``days`` before ``as_of``: from that day's scores, or, when that day was not
    scored (weekly scoring, a missed run), from the latest scored day up to six days earlier."""
    if not table_exists(engine, SCORES_TABLE) or not _has_scale_column(engine):
        return pd.Series(dtype=float)
    then = datetime.combine(as_of - timedelta(days=days), datetime.min.time())
    day = read_sql(
        engine,
        f"SELECT MAX(as_of_date) AS d FROM {SCORES_TABLE} WHERE as_of_date <= :then AND as_of_date >= :earliest",
        {"then": then, "earliest": then - timedelta(days=TREND_TOLERANCE_DAYS)},
    ).loc[0, "d"]
    if day is None or pd.isna(day):
        return pd.Series(dtype=float)
    # Only health on today's scale: a row not yet re-expressed gives no trend rather than a jump.
    prev = read_sql(engine, f"SELECT account_id, health_score FROM {SCORES_TABLE} WHERE as_of_date = :d AND health_scale = :scale",
                    {"d": pd.Timestamp(day).to_pydatetime(), "scale": HEALTH_SCALE})
    return prev.set_index("account_id")["health_score"].astype(float)


def _has_scale_column(engine: sa.Engine) -> bool:
    return "health_scale" in {c["name"] for c in sa.inspect(engine).get_columns(SCORES_TABLE)}


def reexpress_old_scores(engine: sa.Engine, settings: Settings, loaded: LoadedModel) -> int:
    """Re-express history stored on the old scale (health_scale empty) on today's, so trends,
    sparklines and every other reader compare like with like. Returns the rows rewritten.

    Stored rows keep p_churn, so health is recomputed from it with the thresholds the row was
    banded with: its own (when stored), else those of the model version that scored it (its
    base rate in the registry, today's multiples), else the serving model's. The health is then
    kept inside the band the model gave the row (``model_band``), so a re-expressed row never
    disagrees with its stored colour. Sub-scores were stored rounded: they are re-expressed
    from the probability their value stands for (1 - score / 100), within a point or two.
    """
    if not table_exists(engine, SCORES_TABLE):
        return 0
    ensure_table(engine, SCORES_TABLE, pd.DataFrame(columns=ACCOUNT_SCORES.column_names))  # adds the scale columns
    old = read_sql(engine, f"SELECT * FROM {SCORES_TABLE} WHERE health_scale IS NULL")
    if old.empty:
        return 0
    serving = band_thresholds(settings, loaded.base_rate)
    by_version: dict[tuple[str, str], tuple[float, float]] = {}
    for name, version in old[["model_name", "model_version"]].drop_duplicates().itertuples(index=False):
        rate = loaded.base_rate if (name, str(version)) == (loaded.name, loaded.version) else version_base_rate(settings, name, str(version))
        by_version[(name, version)] = band_thresholds(settings, rate) if rate is not None else serving
    thresholds = np.array([by_version[(n, v)] for n, v in zip(old["model_name"], old["model_version"])], dtype=float)
    stored = old[["red_threshold", "yellow_threshold"]].to_numpy(dtype=float)
    thresholds = np.where(np.isnan(stored), thresholds, stored)
    red, yellow = thresholds[:, 0], thresholds[:, 1]
    out = old.copy()
    out["health_score"] = _health_in_band(old["p_churn"].to_numpy(dtype=float), red, yellow, old["model_band"])
    for family in FAMILIES:
        column = f"{family}_score"
        known = old[column].notna().to_numpy()
        if known.any():
            p_family = 1 - old.loc[known, column].to_numpy(dtype=float) / 100
            out.loc[known, column] = health_score(p_family, red[known], yellow[known])
    out["red_threshold"], out["yellow_threshold"], out["health_scale"] = red, yellow, HEALTH_SCALE
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {SCORES_TABLE} WHERE health_scale IS NULL"))
        insert_frame(conn, SCORES_TABLE, out[ACCOUNT_SCORES.column_names])
    log.info("re-expressed %d stored scores on health scale %d (were round(100 * (1 - p_churn)))", len(out), HEALTH_SCALE)
    return len(out)


def _health_in_band(p: np.ndarray, red: np.ndarray, yellow: np.ndarray, bands: pd.Series) -> np.ndarray:
    """health_score per row with per-row thresholds, kept inside the row's stored band."""
    health = health_score(p, red, yellow)
    low = bands.map({b: lo for b, (lo, _) in BAND_HEALTH.items()}).fillna(0).to_numpy(dtype=int)
    high = bands.map({b: hi for b, (_, hi) in BAND_HEALTH.items()}).fillna(100).to_numpy(dtype=int)
    return np.clip(health, low, high)


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
        raise InvalidValueError(f"--band must be one of {', '.join(BANDS)}, got {band!r}")
    if not reason.strip():
        raise InvalidValueError("an override needs a reason (--reason)")
    known = read_sql(engine, "SELECT COUNT(*) AS n FROM accounts WHERE account_id = :a", {"a": account_id}).loc[0, "n"]
    if not known:
        raise UnknownAccountError(f"table 'accounts' has no account_id {account_id!r}")
    row = pd.DataFrame([{
        "account_id": account_id, "band": band, "reason": reason.strip(), "set_by": set_by,
        "expires_on": pd.Timestamp(expires_on), "created_at": pd.Timestamp(datetime.now().replace(microsecond=0)),
    }])
    replace_rows(engine, BAND_OVERRIDES.name, row)


def partition_of(account_id: str, partitions: int) -> int:
    """Stable partition of an account: sha256 of its id modulo ``partitions``.

    The same on every machine, process and run (unlike Python's salted ``hash()``).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    digest = hashlib.sha256(str(account_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


def split_partitions(features: pd.DataFrame, partitions: int) -> list[pd.DataFrame]:
    """The feature rows split by :func:`partition_of`; empty partitions are left out."""
    if not len(features):
        return []
    keys = features["account_id"].map(lambda a: partition_of(a, partitions))
    return [features[keys == k].reset_index(drop=True) for k in range(partitions) if (keys == k).any()]


def previous_health(engine: sa.Engine, as_of: date) -> dict[int, pd.Series]:
    """Stored health scores 7 and 30 days before ``as_of`` (for the trend columns)."""
    return {days: _previous_health(engine, as_of, days) for days in TREND_DAYS}


def compute_scores(
    engine: sa.Engine | None,
    settings: Settings,
    as_of: date,
    features: pd.DataFrame,
    loaded: LoadedModel,
    previous_health: dict[int, pd.Series] | None = None,
    *,
    overrides: pd.DataFrame | None = None,
    scored_at: pd.Timestamp | None = None,
    baselines: PeerBaselines | None = None,
) -> pd.DataFrame:
    """Score and explain the given feature rows. Pure: reads (only when ``engine`` is given
    and ``previous_health`` / ``overrides`` are not), never writes.

    Each row depends only on its own features, the model, its own previous health, its own
    override and the day's peer ``baselines``, so scoring any partition of the accounts gives
    the same rows as scoring all of them at once when the day's baselines are passed
    (:func:`models.explain.peer_baselines` of every account; default: of ``features``).
    Pass ``engine=None`` with ``previous_health`` and ``overrides`` (e.g. on a remote worker
    without warehouse access).
    """
    features = features.reset_index(drop=True)
    if previous_health is None:
        previous_health = _previous_health_or_empty(engine, as_of)
    if overrides is None:
        overrides = active_overrides(engine, as_of) if engine is not None else pd.DataFrame(columns=BAND_OVERRIDES.column_names)
    if not len(features):
        return pd.DataFrame(columns=ACCOUNT_SCORES.column_names)
    model = loaded.model
    red, yellow = band_thresholds(settings, loaded.base_rate)
    p = model.predict_proba(features)
    shap_values = contributions(model, features, settings.explain_chunk_rows)
    explained = drivers(model, features, shap_values, settings.top_drivers, baselines)
    scores = pd.DataFrame(
        {
            "as_of_date": pd.Timestamp(as_of),
            "account_id": features["account_id"].to_numpy(),
            "p_churn": p,
            "health_score": health_score(p, red, yellow),
            "band": band_of(p, red, yellow),
            "arr": features["arr"].fillna(0).to_numpy(),
        }
    )
    scores["arr_at_risk"] = scores["p_churn"] * scores["arr"]
    for days in TREND_DAYS:
        prev = previous_health.get(days, pd.Series(dtype=float))
        scores[f"health_change_{days}d"] = scores["health_score"] - scores["account_id"].map(prev).astype(float)
    to_health = partial(health_score, red=red, yellow=yellow)  # sub-scores on the same scale
    scores = pd.concat([scores, explained.reset_index(drop=True), family_scores(model, shap_values, to_health)], axis=1)
    scores["health_scale"], scores["red_threshold"], scores["yellow_threshold"] = HEALTH_SCALE, red, yellow
    scores = apply_overrides(scores, overrides)
    scores["model_name"] = loaded.name
    scores["model_version"] = loaded.version
    scores["scored_at"] = scored_at if scored_at is not None else pd.Timestamp(datetime.now().replace(microsecond=0))
    return scores[ACCOUNT_SCORES.column_names]


def _previous_health_or_empty(engine: sa.Engine | None, as_of: date) -> dict[int, pd.Series]:
    return previous_health(engine, as_of) if engine is not None else {}


def merge_partitions(parts: list[pd.DataFrame], account_order: pd.Series | None = None) -> pd.DataFrame:
    """Concatenate partition scores, in ``account_order`` (e.g. the features' order) when given."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=ACCOUNT_SCORES.column_names)
    scores = pd.concat(parts, ignore_index=True)
    if account_order is not None:
        rank = pd.Series(np.arange(len(account_order)), index=pd.Index(account_order))
        scores = scores.iloc[np.argsort(scores["account_id"].map(rank).to_numpy(), kind="stable")].reset_index(drop=True)
    return scores


# The code a day's scores are a function of (part of their fingerprint).
SCORING_MODULES = ("models.score", "models.explain", "models.fast_shap", "models.churn_model", "outreach.playbooks")


def scoring_fingerprint(
    settings: Settings, as_of: date, features: pd.DataFrame, loaded: LoadedModel,
    previous_health: dict[int, pd.Series], overrides: pd.DataFrame,
) -> str:
    """Everything a day's scores are a function of: the model (registry name, version and
    training run), the feature rows, the health 7 and 30 days back, the active overrides,
    the settings and the scoring code. Not when they are computed."""
    digest = hashlib.sha256()
    for part in (
        source_version(*SCORING_MODULES), str(as_of), settings.model_dump_json(), f"{loaded.name}:{loaded.version}:{loaded.run_id}",
        frame_digest(features.reset_index(drop=True)), frame_digest(overrides.reset_index(drop=True)),
        *[f"{days}:{frame_digest(series)}" for days, series in sorted(previous_health.items())],
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def stored_scores_if_current(engine: sa.Engine, as_of: date, fingerprint: str, account_order: pd.Series) -> pd.DataFrame | None:
    """The day's stored scores, in ``account_order``, if they were computed from exactly the
    inputs ``fingerprint`` names and are all still there; else None."""
    if not table_exists(engine, SCORE_BUILDS.name) or not table_exists(engine, SCORES_TABLE):
        return None
    day = datetime(as_of.year, as_of.month, as_of.day)
    record = read_sql(engine, "SELECT input_fingerprint, scored_rows FROM score_builds WHERE as_of_date = :d", {"d": as_of})
    if record.empty or record.loc[0, "input_fingerprint"] != fingerprint or int(record.loc[0, "scored_rows"]) != len(account_order):
        return None
    stored = read_sql(engine, f"SELECT * FROM {SCORES_TABLE} WHERE as_of_date = :d", {"d": day})
    if len(stored) != len(account_order) or set(stored["account_id"]) != set(account_order):
        return None
    return merge_partitions([stored[ACCOUNT_SCORES.column_names]], account_order)


def store_scores(engine: sa.Engine, scores: pd.DataFrame, as_of: date, *, accounts: list[str] | None = None,
                 fingerprint: str | None = None) -> int:
    """Replace the day's stored rows by ``scores``, in one transaction.

    ``accounts=None`` replaces every row of the day, and records ``fingerprint`` (the
    inputs they were computed from) so an identical re-run can reuse them. With
    ``accounts``, only the rows of those accounts (and of any account in ``scores``) are
    deleted, by bound parameters in batches; other accounts' rows of the day stay as they
    were, and the day's record is dropped. Returns rows inserted.
    """
    day = datetime(as_of.year, as_of.month, as_of.day)
    builds = SCORE_BUILDS.name
    record = pd.DataFrame({"as_of_date": [pd.Timestamp(as_of)], "input_fingerprint": [fingerprint or ""],
                           "scored_rows": [len(scores)], "scored_at": [pd.Timestamp(datetime.now())]})
    replace_rows(engine, builds, record.iloc[:0], where={"as_of_date": as_of})  # stale until the rows are in
    if accounts is None:
        written = replace_rows(engine, SCORES_TABLE, scores, where={"as_of_date": day})
        if fingerprint:
            replace_rows(engine, builds, record, where={"as_of_date": as_of})
        return written
    ids = sorted({str(a) for a in accounts} | {str(a) for a in scores["account_id"]})
    ensure_table(engine, SCORES_TABLE, scores)
    delete = sa.text(f"DELETE FROM {SCORES_TABLE} WHERE as_of_date = :d AND account_id IN :ids").bindparams(sa.bindparam("ids", expanding=True))
    with engine.begin() as conn:
        for start in range(0, len(ids), DELETE_BATCH):
            conn.execute(delete, {"d": day, "ids": ids[start : start + DELETE_BATCH]})
        if len(scores):
            insert_frame(conn, SCORES_TABLE, scores)
    return len(scores)


def log_scores(scores: pd.DataFrame, as_of: date) -> None:
    counts = scores["band"].value_counts().to_dict()
    version = f"{scores['model_name'].iloc[0]} v{scores['model_version'].iloc[0]}" if len(scores) else "no model output"
    log.info("scored %d accounts as of %s with %s: %s (%d overridden)", len(scores), as_of, version, counts, int(scores["band_override_reason"].notna().sum()))


def score_accounts(
    engine: sa.Engine,
    settings: Settings,
    as_of: date,
    *,
    features: pd.DataFrame | None = None,
    loaded: LoadedModel | None = None,
    accounts: list[str] | None = None,
) -> pd.DataFrame:
    """Score and explain the active accounts as of ``as_of`` and store the rows.

    Every active account by default (the day's rows are replaced). With ``accounts``, only
    those accounts are scored and only their rows of the day are replaced; the other
    accounts' stored rows are left untouched.
    """
    loaded = loaded or load_model(settings)
    features = load_features(engine, as_of, settings.usage_event_types_top) if features is None else features
    features = features_for(engine, as_of, features, loaded.model.catalogue, loaded.model.feature_names)
    baselines = peer_baselines(loaded.model, features)  # of every account, also when scoring a few
    reexpress_old_scores(engine, settings, loaded)
    health, overrides, fingerprint = previous_health(engine, as_of), active_overrides(engine, as_of), None
    if accounts is not None:
        wanted = {str(a) for a in accounts}
        features = features[features["account_id"].astype(str).isin(wanted)]
        missing = len(wanted) - len(features)
        if missing:
            log.info("%d of the %d requested accounts have no features as of %s (not active): nothing to score", missing, len(wanted), as_of)
    else:
        fingerprint = scoring_fingerprint(settings, as_of, features, loaded, health, overrides)
        reused = stored_scores_if_current(engine, as_of, fingerprint, features["account_id"])
        if reused is not None:
            log.info("scores as of %s: %d accounts, reused (computed from the same inputs)", as_of, len(reused))
            return reused
    scores = compute_scores(engine, settings, as_of, features, loaded, health, overrides=overrides, baselines=baselines)
    store_scores(engine, scores, as_of, accounts=accounts, fingerprint=fingerprint)
    log_scores(scores, as_of)
    return scores

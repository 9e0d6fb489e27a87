"""Benchmarks that print figures (not timed tests): ``churnflow bench explain``."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import date, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow.settings import Settings
from features.build import build_features, default_as_of
from features.catalogue import Feature
from models.fast_shap import tree_shap
from models.registry import load_model


def distinct_rows(engine: sa.Engine, rows: int, as_of: date | None = None, catalogue: Sequence[Feature] | None = None) -> pd.DataFrame:
    """At least ``rows`` real, distinct feature rows: the active accounts at weekly as-of
    dates going back from ``as_of`` (no duplicated rows, which would flatter the explainer),
    all with the same columns (``catalogue``: e.g. the model's)."""
    day = as_of or default_as_of(engine)
    frames, total = [], 0
    while total < rows:
        frame = build_features(engine, day, catalogue=catalogue)
        if frame.empty:
            break
        frames.append(frame)
        total += len(frame)
        day -= timedelta(days=7)
    return pd.concat(frames, ignore_index=True).head(rows)


def _measure(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak


def bench_explain(engine: sa.Engine, settings: Settings, rows: int = 20000) -> dict[str, object]:
    """Explain the same rows with shap.TreeExplainer and with churnflow's explainer."""
    import shap

    loaded = load_model(settings)
    features = distinct_rows(engine, rows, catalogue=loaded.model.catalogue)
    X = loaded.model.matrix(features)
    booster = loaded.model.booster

    def reference() -> np.ndarray:
        values = shap.TreeExplainer(booster).shap_values(X)
        return np.asarray(values[1] if isinstance(values, list) else values)

    ref, ref_s, ref_peak = _measure(reference)
    ours, ours_s, ours_peak = _measure(lambda: tree_shap(booster, X, chunk_rows=settings.explain_chunk_rows))
    return {
        "rows": len(X),
        "features": X.shape[1],
        "trees": booster.best_iteration if booster.best_iteration > 0 else booster.num_trees(),
        "shap_tree_explainer": {"seconds": round(ref_s, 3), "rows_per_s": round(len(X) / ref_s), "peak_mb": round(ref_peak / 2**20, 1)},
        "churnflow": {"seconds": round(ours_s, 3), "rows_per_s": round(len(X) / ours_s), "peak_mb": round(ours_peak / 2**20, 1),
                      "chunk_rows": settings.explain_chunk_rows},
        "speedup": round(ref_s / ours_s, 2),
        "max_abs_diff": float(np.max(np.abs(ours[:, :-1] - ref))),
    }

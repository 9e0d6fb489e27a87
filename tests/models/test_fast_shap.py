"""Fast exact TreeSHAP equals LightGBM's own contributions on every split kind."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from models.fast_shap import _explain_chunk, numeric_matrix, tree_shap, tree_splits


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "with_nan": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
        "zeros": np.where(rng.random(n) < 0.3, 0.0, rng.exponential(size=n)),
        "plain": rng.normal(size=n),
        "category": pd.Categorical(rng.choice(["a", "b", "c", "d", "e", None], size=n), categories=["a", "b", "c", "d", "e"]),
    })
    logit = np.nan_to_num(X["with_nan"], nan=1.5) + (X["zeros"] == 0) * 1.0 - 0.5 * X["plain"] + X["category"].isin(["b", "d"]) * 1.2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_fast_tree_shap_is_exact(zero_as_missing: bool) -> None:
    X, y = synthetic(3000, 1)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 20, "verbose": -1, "seed": 1,
              "zero_as_missing": zero_as_missing, "max_cat_to_onehot": 2, "num_threads": 2}
    booster = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=60)
    kinds = {(s.categorical, s.missing) for tree in tree_splits(booster, booster.num_trees()) for s in tree}
    assert (True, "None") in kinds or any(c for c, _ in kinds)  # categorical splits are exercised
    assert any(m != "None" for _, m in kinds)  # and missing-value handling
    fresh, _ = synthetic(2000, 2)
    reference = booster.predict(fresh, pred_contrib=True)
    # The raw algorithm, without the self-check's fallback, must already be exact.
    raw = _explain_chunk(booster, tree_splits(booster, booster.num_trees()), numeric_matrix(booster, fresh))
    np.testing.assert_allclose(raw, reference, atol=1e-9)
    np.testing.assert_allclose(tree_shap(booster, fresh, chunk_rows=512), reference, atol=1e-9)


def test_early_stopped_models_use_the_best_iteration() -> None:
    X, y = synthetic(3000, 3)
    valid_X, valid_y = synthetic(1000, 4)
    train = lgb.Dataset(X, label=y)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 2, "learning_rate": 0.3}, train, num_boost_round=300,
                        valid_sets=[lgb.Dataset(valid_X, label=valid_y, reference=train)], callbacks=[lgb.early_stopping(5, verbose=False)],
                        keep_training_booster=True)
    assert 0 < booster.best_iteration < booster.num_trees()
    np.testing.assert_allclose(tree_shap(booster, valid_X), booster.predict(valid_X, pred_contrib=True), atol=1e-9)

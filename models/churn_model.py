"""The churn model as one object: LightGBM booster + probability calibration.

It is logged to MLflow as a pyfunc, so ``models:/<name>@champion`` loads everything
scoring needs: besides the booster and the calibrator, the catalogue the model was built
with (event types and attributes learned at training), the categories it learned for each
categorical feature, and what it dropped. Scoring and explaining therefore need neither
the mapping nor the data the lists were learned from. Scoring and explaining use the
booster directly (exact tree SHAP values come from the booster), and probabilities go
through the calibrator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

from features.build import as_model_frame
from features.catalogue import CATALOGUE, Feature, current_entry, families_of


@dataclass
class PlattCalibrator:
    """p = sigmoid(a * margin + b): monotone, so driver rankings are unchanged."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(margin) + self.b)))


def _generic_feature(name: str) -> Feature:
    """An entry for a column outside any catalogue (a data scientist's candidate feature)."""
    return Feature(name, "other", name.replace("_", " "), "value", "learned", f"{name.replace('_', ' ')} is {{value:,.4g}}")  # type: ignore[arg-type]


class ChurnModel(mlflow.pyfunc.PythonModel):
    def __init__(
        self,
        booster: lgb.Booster,
        calibrator: PlattCalibrator,
        feature_names: list[str],
        feature_set_version: str,
        *,
        catalogue: Sequence[Feature] | None = None,
        categories: dict[str, list[str]] | None = None,
        dropped_features: dict[str, str] | None = None,
    ):
        self.booster = booster
        self.calibrator = calibrator
        self.feature_names = feature_names
        self.feature_set_version = feature_set_version
        # The book's catalogue at training: what the builder must produce for this model.
        self.catalogue: tuple[Feature, ...] = tuple(catalogue) if catalogue is not None else tuple(f for f in CATALOGUE if f.name in feature_names)
        # Categorical feature -> categories learned on the fit slice (last: "other").
        self.categories: dict[str, list[str]] | None = categories
        # Features of the catalogue left out at fit time, with the reason.
        self.dropped_features: dict[str, str] = dict(dropped_features or {})
        # Training-window distributions (models.monitor.reference_profile), for drift checks.
        self.reference: dict[str, object] = {}

    def __setstate__(self, state: dict) -> None:
        """A model pickled before catalogues and learned categories were stored: the static
        entries of its features, and the booster's own categories (see :meth:`_categories`)."""
        state.setdefault("catalogue", tuple(f for f in CATALOGUE if f.name in state.get("feature_names", [])))
        state["catalogue"] = tuple(current_entry(f) for f in state["catalogue"])  # today's wording, roles and comparisons
        state.setdefault("categories", None)
        state.setdefault("dropped_features", {})
        self.__dict__.update(state)

    def feature(self, name: str) -> Feature:
        """The catalogue entry of one of the model's features."""
        for f in self.catalogue:
            if f.name == name:
                return f
        return _generic_feature(name)

    @property
    def families(self) -> tuple[str, ...]:
        """The feature families the model uses (an absent source's family is not among them)."""
        return families_of(self.feature(name) for name in self.feature_names)

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        missing = [name for name in self.feature_names if name not in features.columns]
        if missing:
            raise KeyError(f"the feature rows lack {len(missing)} of the model's features ({', '.join(missing[:5])}"
                           f"{', ...' if len(missing) > 5 else ''}): build them with the model's catalogue (features.build.features_for)")
        return as_model_frame(features, self.feature_names, self._categories())

    def _categories(self) -> dict[str, list[str]]:
        """Learned categories; for a model pickled before they were stored, the booster's own
        (LightGBM keeps the pandas categories it was trained on, in column order)."""
        if self.categories is not None:
            return self.categories
        categorical = [name for name in self.feature_names if self.feature(name).is_categorical]
        return {name: list(cats) for name, cats in zip(categorical, self.booster.pandas_categorical or [])}

    def margin(self, features: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(features), raw_score=True)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.calibrator(self.margin(features))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: D401 - MLflow API
        return self.predict_proba(model_input)

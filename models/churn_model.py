"""The churn model as one object: LightGBM booster + probability calibration.

It is logged to MLflow as a pyfunc, so ``models:/<name>@champion`` loads everything
scoring needs. Scoring and explaining use the booster directly (exact tree SHAP values
come from the booster), and probabilities go through the calibrator.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

from features.build import as_model_frame


@dataclass
class PlattCalibrator:
    """p = sigmoid(a * margin + b): monotone, so driver rankings are unchanged."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(margin) + self.b)))


class ChurnModel(mlflow.pyfunc.PythonModel):
    def __init__(self, booster: lgb.Booster, calibrator: PlattCalibrator, feature_names: list[str], feature_set_version: str):
        self.booster = booster
        self.calibrator = calibrator
        self.feature_names = feature_names
        self.feature_set_version = feature_set_version
        # Training-window distributions (models.monitor.reference_profile), for drift checks.
        self.reference: dict[str, object] = {}

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        return as_model_frame(features, self.feature_names)

    def margin(self, features: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(features), raw_score=True)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.calibrator(self.margin(features))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: D401 - MLflow API
        return self.predict_proba(model_input)

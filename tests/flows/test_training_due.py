"""The retrain check compares exactly the settings training records (models.train.training_settings)."""

from __future__ import annotations

import typing

import pytest
from mlflow import MlflowClient

from churnflow.settings import Settings
from flows.tasks import training_due
from models.registry import configure_mlflow
from models.train import training_settings


def _other_value(name: str, current: object) -> object:
    """A different valid value of the setting ``name``."""
    annotation = Settings.model_fields[name].annotation
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if choices:
        return next(c for c in choices if c != current)
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + 1
    if isinstance(current, float):
        return current * 1.5
    raise AssertionError(f"no other value known for {name}={current!r}")


def test_training_records_every_setting_the_retrain_check_compares(trained_home: Settings) -> None:
    client = configure_mlflow(trained_home)
    newest = max(client.search_model_versions(f"name = '{trained_home.model_name}'"), key=lambda v: int(v.version))
    params = MlflowClient().get_run(newest.run_id).data.params
    recorded = training_settings(trained_home)
    assert {k: params.get(k) for k in recorded} == recorded


def test_unchanged_settings_and_data_are_not_due(trained_home: Settings) -> None:
    due, reason, summary = training_due.fn(trained_home)
    assert not due, reason
    assert summary is not None and summary["model_version"]


@pytest.mark.parametrize("name", [k for k in training_settings(Settings()) if k in Settings.model_fields])
def test_changing_any_recorded_setting_makes_training_due(trained_home: Settings, name: str) -> None:
    changed = trained_home.model_copy(update={name: _other_value(name, getattr(trained_home, name))})
    due, reason, _ = training_due.fn(changed)
    assert due and name in reason, reason


def test_the_settings_that_shape_the_model_are_all_recorded() -> None:
    """The labels, snapshots, features and LightGBM settings: the ones whose change makes another model."""
    shaping = {"horizon_days", "label_lead_days", "churn_grace_days", "training_snapshots", "holdout_snapshots", "snapshot_cadence",
               "usage_event_types_top", "num_boost_round", "learning_rate", "num_leaves", "min_data_in_leaf", "seed"}
    assert shaping <= set(training_settings(Settings()))

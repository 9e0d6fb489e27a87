"""One typed settings object for every stage.

Defaults serve the embedded setup (a DuckDB warehouse, an SQLite MLflow store and the
local Salesforce-compatible server, all under one home directory). Environment variables
with the ``CHURNFLOW_`` prefix override them, and so does an optional ``churnflow.toml``
(path in ``CHURNFLOW_CONFIG``, else ``./churnflow.toml``). Config text is parsed as TOML,
never executed.
"""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("CHURNFLOW_CONFIG", "churnflow.toml"))


class Settings(BaseSettings):
    """Everything churnflow can be told. See the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="CHURNFLOW_", extra="ignore")

    # -- where things live -------------------------------------------------------------
    home: Path = Field(Path(".churnflow"), description="Directory for the embedded warehouse, MLflow store, CRM state and outputs.")
    warehouse_url: str | None = Field(None, description="SQLAlchemy URL of the warehouse. Default: DuckDB file <home>/warehouse.duckdb. PostgreSQL: postgresql+psycopg://user@host:5432/db.")
    warehouse_lock_wait_seconds: float = Field(600.0, ge=0, description="DuckDB: how long a run waits for a warehouse file another process is using (one process per file) before failing with a clear message.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking and registry URI. Default: sqlite:///<home>/mlflow.db.")
    mlflow_experiment: str = Field("churnflow", description="MLflow experiment that holds training runs.")
    model_name: str = Field("churnflow-churn", description="Registered model name in the MLflow registry.")

    # -- labels ----------------------------------------------------------------------
    horizon_days: int = Field(90, ge=7, description="Churn is predicted within this many days after the as-of date.")
    label_lead_days: int = Field(0, ge=0, description="Lead time: predict churn in [D + lead, D + lead + horizon); churn sooner than the lead is excluded from training.")
    churn_grace_days: int = Field(30, ge=0, description="An account whose coverage ends is churned only if nothing renews within this many days.")
    training_snapshots: int = Field(12, ge=4, description="Months of the newest matured as-of dates used (fit + calibration + holdout): 12 monthly snapshots, or 52 weekly ones with snapshot_cadence='weekly'.")
    holdout_snapshots: int = Field(2, ge=1, description="Months of the newest matured as-of dates held out for evaluation: 2 monthly snapshots, or 9 weekly ones.")
    snapshot_cadence: Literal["monthly", "weekly"] = Field("monthly", description="As-of dates of the training snapshots: first of each month, or every Monday (more matured snapshots and holdout churners from the same history; the calibration slice stays one snapshot).")
    min_churners_fit: int = Field(50, ge=1, description="Gate: training refuses before fitting when the fit slice has fewer distinct churned accounts.")
    min_churners_calibration: int = Field(20, ge=1, description="Gate: training refuses before fitting when the calibration snapshot has fewer distinct churned accounts (Platt scaling and early stopping need positives).")
    min_churners_holdout: int = Field(30, ge=1, description="Gate: training refuses before fitting when the holdout has fewer distinct churned accounts (below that the AUC's 95% interval is wider than about +-0.1).")
    bootstrap_resamples: int = Field(500, ge=50, description="Resamples of holdout accounts for the confidence intervals of AUC and lift, and for the paired champion comparison.")
    observation_end: date | None = Field(None, description="The day observation ends (labels mature against it). Default: the day after the newest event in any present source (usage, tickets, surveys, churn events, subscription starts). Set it when a source holds events past the data's end (e.g. scheduled cancellations).")

    # -- features --------------------------------------------------------------------
    feature_reuse: bool = Field(True, description="Reuse a day's stored features when every input row they read is unchanged (set false if another tool rewrites canonical tables behind churnflow's back).")
    usage_event_types_top: int = Field(8, ge=0, le=50, description="Per-event-type usage features for this many most frequent usage.feature values (learned at training, stored with the model); 0 turns them off. The mapping's usage_event_types wins when set.")
    rollup_recheck_days: int = Field(3, ge=1, description="Usage rollups: the last rolled days re-read on every refresh, for rows that arrive late without going through churnflow.")

    # -- model -----------------------------------------------------------------------
    num_boost_round: int = Field(300, ge=10, description="Maximum LightGBM boosting rounds (early stopping may use fewer).")
    learning_rate: float = Field(0.05, gt=0, description="LightGBM learning rate.")
    num_leaves: int = Field(7, ge=2, description="LightGBM num_leaves.")
    min_data_in_leaf: int = Field(80, ge=1, description="LightGBM min_data_in_leaf.")
    seed: int = Field(7, description="Seed for model training and stable hashing.")
    promotion_margin: float = Field(0.005, ge=0, description="A challenger becomes champion only if its holdout AUC beats the champion's by this much on the same rows AND the paired-bootstrap 95% lower bound of the gain is above 0.")
    explain_chunk_rows: int = Field(20000, ge=100, description="Rows explained per chunk (bounds memory while explaining every account).")
    gate_min_auc: float = Field(0.6, ge=0.5, le=1, description="Gate: a model whose holdout AUC 95% lower bound (bootstrap) is below this is refused (also the realized-AUC floor).")
    gate_max_ece: float = Field(0.05, gt=0, le=1, description="Gate: a model whose holdout expected calibration error exceeds this is refused.")
    gate_max_feature_share: float = Field(0.7, gt=0, le=1, description="Gate: refuse if one feature carries more than this share of total gain (a leakage smell).")
    psi_threshold: float = Field(0.25, gt=0, description="Monitoring: PSI above this is a drift breach.")
    auc_drop_threshold: float = Field(0.05, gt=0, description="Monitoring: realized AUC this far below the holdout AUC is a breach.")
    top_drivers: int = Field(3, ge=1, le=10, description="How many risk drivers are kept per account.")

    # -- health score -------------------------------------------------------------------
    # Bands are multiples of the model's training base rate (the fit slice's churn rate at
    # the horizon, stored with the model): absolute cut-offs tuned on one book made almost
    # every account green on a book with a 1% base rate.
    red_base_rate_multiple: float = Field(3.0, gt=0, description="An account is red when p_churn >= this many times the model's training base rate.")
    yellow_base_rate_multiple: float = Field(1.0, gt=0, description="An account is yellow when p_churn >= this many times the model's training base rate.")
    red_threshold: float | None = Field(None, gt=0, lt=1, description="Absolute override: p_churn at or above which an account is red (set together with yellow_threshold; unset = base-rate multiples).")
    yellow_threshold: float | None = Field(None, gt=0, lt=1, description="Absolute override: p_churn at or above which an account is yellow (set together with red_threshold).")

    # -- outreach --------------------------------------------------------------------
    playbooks_file: Path | None = Field(None, description="YAML file of outreach playbooks. Default: the playbooks shipped with churnflow.")

    # -- CRM -------------------------------------------------------------------------
    crm: Literal["local", "salesforce"] = Field("local", description="'local' talks to churnflow's own Salesforce-compatible server; 'salesforce' to a real org.")
    local_crm_port: int = Field(8765, ge=0, le=65535, description="Port of the local CRM server (HTTPS on 127.0.0.1). 0 picks a free port.")
    sf_username: str | None = Field(None, description="Salesforce username (real org).")
    sf_password: SecretStr | None = Field(None, description="Salesforce password (real org). Never logged.")
    sf_security_token: SecretStr | None = Field(None, description="Salesforce security token (real org). Never logged.")
    sf_domain: str = Field("login", description="'login' for production, 'test' for a sandbox, or a My Domain prefix.")
    sf_consumer_key: str | None = Field(None, description="Connected app consumer key, for JWT bearer login.")
    sf_privatekey_file: Path | None = Field(None, description="Private key file for JWT bearer login.")
    sf_account_match_field: str = Field("Id", description="Account field that matches accounts.crm_account_id ('Id' or an external-id field).")
    sf_renewal_date_field: str | None = Field(None, description="Account date field holding the renewal date, read back by `churnflow crm-pull` (e.g. Renewal_Date__c).")
    sf_secret_block: str | None = Field(None, description="Name of a Prefect Secret block holding the Salesforce password (used when sf_password is unset).")
    crm_min_health_change: float = Field(1.0, ge=0, description="Health points (= churn risk percentage points, unrounded) an account must move before it is written to the CRM again; band, drivers and ARR changes always count.")
    crm_min_trend_change: float = Field(3.0, ge=0, description="Points the 30-day health trend must move before an account is written to the CRM again (the trend also moves when the day 30 days back drops out).")
    crm_task_settle_seconds: float = Field(600.0, ge=0, description="How long a Task create whose response was lost may still land in Salesforce: its key is not re-sent before (Salesforce ends requests after 10 minutes).")

    # -- digest ----------------------------------------------------------------------
    digest_dir: Path | None = Field(None, description="Where digest files are written. Default: <home>/digests.")

    # -- operations --------------------------------------------------------------------
    mlflow_ui_url: str = Field("http://127.0.0.1:5000", description="Base URL of the MLflow UI, for the link artifact of each training run.")
    notify_webhook_url: SecretStr | None = Field(None, description="Webhook (Slack-compatible JSON {'text': ...}) called when a flow run fails or crashes. Never logged.")
    notify_recipients: list[str] = Field(default_factory=list, description="Who gets failure e-mails (JSON list in env), through the smtp_* relay.")
    digest_include_verbatims: bool = Field(False, description="Show survey comments in the digest (off: only counts).")
    digest_include_contacts: bool = Field(False, description="Show owner emails in the digest (off: initials).")
    currency: str = Field("$", description="Currency symbol used in the digest.")
    smtp_host: str | None = Field(None, description="SMTP server for the digest email; unset = no email.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_security: Literal["none", "starttls", "ssl"] = Field("starttls", description="SMTP transport security.")
    smtp_username: str | None = Field(None, description="SMTP login user.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password. Never logged.")
    smtp_sender: str = Field("churnflow@localhost", description="From address of the digest.")
    smtp_recipients: list[str] = Field(default_factory=list, description="Digest recipients (JSON list in env, e.g. '[\"ceo@x.com\"]').")
    smtp_ca_file: Path | None = Field(None, description="CA bundle for an SMTP relay with a private CA.")

    # -- scale-out ---------------------------------------------------------------------
    task_runner: Literal["thread", "dask"] = Field("thread", description="Task runner for the daily flow's scoring partitions: 'thread' (Prefect's ThreadPoolTaskRunner) or 'dask' (prefect-dask's DaskTaskRunner).")
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster (e.g. tcp://scheduler:8786) for task_runner='dask'. Unset: a temporary local cluster per run.")
    dask_workers: int = Field(2, ge=1, description="Workers of the temporary local Dask cluster (when dask_address is unset).")
    score_partitions: int = Field(4, ge=1, description="The daily flow scores accounts in this many stable-hash partitions, as concurrent tasks.")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> "Settings":
        if (self.red_threshold is None) != (self.yellow_threshold is None):
            raise ValueError("set both red_threshold and yellow_threshold (absolute bands), or neither (bands as multiples of the base rate)")
        if self.red_threshold is not None and self.yellow_threshold is not None and self.yellow_threshold >= self.red_threshold:
            raise ValueError(
                f"yellow_threshold ({self.yellow_threshold}) must be below red_threshold ({self.red_threshold})"
            )
        if self.yellow_base_rate_multiple >= self.red_base_rate_multiple:
            raise ValueError(
                f"yellow_base_rate_multiple ({self.yellow_base_rate_multiple}) must be below red_base_rate_multiple ({self.red_base_rate_multiple})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments > environment > churnflow.toml > defaults.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))

    # -- derived locations (computed, never stored) -------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def warehouse(self) -> str:
        return self.warehouse_url or f"duckdb:///{self.home_dir / 'warehouse.duckdb'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def digests(self) -> Path:
        return (self.digest_dir or self.home_dir / "digests").expanduser().resolve()

    @property
    def crm_dir(self) -> Path:
        return self.home_dir / "crm"

    def ensure_home(self) -> Path:
        self.home_dir.mkdir(parents=True, exist_ok=True)
        return self.home_dir


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment and config file, read once per process."""
    return Settings()

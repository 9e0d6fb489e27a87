"""The canonical data model: the input contract every stage reads, and every other table.

Each table and column is declared once here, with its key (a test fails on a table created
anywhere else). The same declaration creates the warehouse
tables (SQLAlchemy Core), coerces incoming frames, and generates ``docs/data-model.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import sqlalchemy as sa

from churnflow.vocabulary import FAMILIES, TOPICS

Kind = Literal["str", "int", "float", "bool", "date", "timestamp"]

SA_TYPES: dict[str, sa.types.TypeEngine] = {
    "str": sa.String(),
    "int": sa.BigInteger(),
    "float": sa.Double(),
    "bool": sa.Boolean(),
    "date": sa.Date(),
    "timestamp": sa.DateTime(),
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    description: str
    required: bool = True
    default: object | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = field(default=())
    # Created on PostgreSQL only: DuckDB prunes range scans with its zone maps instead.
    indexes: tuple[tuple[str, ...], ...] = field(default=())
    # Derived state kept elsewhere that must learn which days each write touched: one reader
    # name per consumer; the writes are journaled in ``table_changes`` (churnflow.warehouse).
    journal_readers: tuple[str, ...] = field(default=())
    journal_day: str | None = None  # the column whose day a journaled write is recorded by
    # Columns beyond ``columns`` that the writing stage decides at run time (e.g. one per
    # catalogue feature); None: the table has exactly the declared columns.
    extra_columns: str | None = None

    @property
    def key_is_primary(self) -> bool:
        """Whether the key is a primary key (every key column required) rather than a unique constraint."""
        required = {c.name for c in self.columns if c.required}
        return bool(self.key) and set(self.key) <= required

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def sa_table(self, metadata: sa.MetaData, *, name: str | None = None, extra: tuple[sa.Column, ...] = ()) -> sa.Table:
        """The table with its key enforced by the database, so it refuses a second copy: a primary
        key, or a unique constraint when a key column may be empty (empty values never collide).

        ``name`` creates the same table under another name (a ledger kept beside the default
        one); ``extra`` adds the run-time columns of a table declared with ``extra_columns``."""
        table_name = name or self.name
        optional = {c.name for c in self.columns if not c.required}
        if not self.key:
            key: tuple[sa.Constraint, ...] = ()
        elif self.key_is_primary:
            key = (sa.PrimaryKeyConstraint(*self.key, name=f"pk_{table_name}"),)
        else:
            key = (sa.UniqueConstraint(*self.key, name=f"uq_{table_name}"),)
        return sa.Table(
            table_name,
            metadata,
            *[sa.Column(c.name, SA_TYPES[c.kind], nullable=c.name in optional) for c in self.columns],
            *extra,
            *key,
        )


ACCOUNTS = TableSpec(
    "accounts",
    "One row per customer account.",
    (
        Column("account_id", "str", "Stable account identifier in your warehouse."),
        Column("name", "str", "Account (company) name."),
        Column("industry", "str", "Industry, free text.", required=False),
        Column("segment", "str", "Customer segment, e.g. smb, mid_market, enterprise."),
        Column("country", "str", "Country code or name.", required=False),
        Column("created_at", "timestamp", "When the account became a customer."),
        Column("owner_email", "str", "Email of the account owner (CSM); tasks are assigned to this user.", required=False),
        Column("crm_account_id", "str", "The Salesforce Account Id (or external id) scores are written to.", required=False),
    ),
    key=("account_id",),
)

SUBSCRIPTIONS = TableSpec(
    "subscriptions",
    "Subscriptions or contract terms, as the billing system holds them: fixed terms (a renewal is a new row) "
    "or open-ended (evergreen, auto-renewing) subscriptions without an end date. Churn is derived from the "
    "coverage they give unless the mapping names a `churn_events` source (see Churn and labels below).",
    (
        Column("subscription_id", "str", "Stable subscription identifier."),
        Column("account_id", "str", "The account that holds the subscription."),
        Column("plan", "str", "Plan name, e.g. starter, growth, enterprise."),
        Column("seats", "int", "Licensed seats."),
        Column("arr", "float", "Annual recurring revenue of this subscription, in the reporting currency."),
        Column("start_date", "date", "First day covered."),
        Column("end_date", "date", "Contractual end of the term as known when the term was signed: the day after the last "
               "day covered (exclusive). Empty for an open-ended subscription (coverage runs until `cancelled_at`, or is "
               "ongoing). Never the date the customer left: a column filled only for customers who left is an outcome, "
               "not a term (`churnflow validate` warns).", required=False),
        Column("cancelled_at", "timestamp", "When a cancellation was recorded. Coverage ends at the end of that day "
               "(or at `end_date` if earlier); empty while the subscription is not cancelled.", required=False),
        Column("auto_renew", "bool", "Whether the term renews automatically, as signed (not rewritten on cancellation).", default=False),
        Column("billing_period", "str", "The renewal cycle: month, quarter or year (an annual contract invoiced monthly "
               "is year). Places the next renewal of an open-ended subscription.", required=False),
        Column("renewal_date", "date", "The next renewal as the billing system states it. With `billing_period` it anchors "
               "the renewal cycle (the next renewal after a date D is this date plus or minus whole periods), so an "
               "export taken today still gives the right renewal for any earlier D.", required=False),
    ),
    key=("subscription_id",),
)

USAGE = TableSpec(
    "usage",
    "Product usage: raw events or pre-aggregated daily rows (quantity = count).",
    (
        Column("account_id", "str", "The account the activity belongs to."),
        Column("occurred_at", "timestamp", "When the activity happened (a day for daily rows)."),
        Column("feature", "str", "Product feature or event name."),
        Column("quantity", "float", "Number of events represented by the row.", required=False, default=1.0),
        Column("duration_s", "float", "Time spent, in seconds.", required=False, default=0.0),
        Column("errors", "int", "Errors the user hit.", required=False, default=0),
        Column("user_id", "str", "The acting user (for active-user counts).", required=False),
    ),
    indexes=(("occurred_at",),),
    # the usage rollups (features.rollups) and the ingest's per-day hashes (ingest.usage_days)
    journal_readers=("usage_rollups", "usage_ingest_days"),
    journal_day="occurred_at",
)

TICKETS = TableSpec(
    "tickets",
    "Support tickets.",
    (
        Column("ticket_id", "str", "Stable ticket identifier."),
        Column("account_id", "str", "The account that raised the ticket."),
        Column("opened_at", "timestamp", "When the ticket was opened."),
        Column("closed_at", "timestamp", "When the ticket was closed; empty while open.", required=False),
        Column("priority", "str", "low, normal, high or urgent."),
        Column("channel", "str", "email, chat, phone or web.", required=False),
        Column("first_response_minutes", "float", "Minutes until the first agent response.", required=False),
        Column("reopened", "bool", "Whether the ticket was reopened after being solved.", default=False),
        Column("csat", "int", "Ticket CSAT score 1-5, if the customer answered.", required=False),
    ),
    key=("ticket_id",),
    indexes=(("opened_at",),),
)

SURVEYS = TableSpec(
    "surveys",
    "Survey responses: NPS (0-10), CSAT (1-5) and CES (1-7), with optional comments.",
    (
        Column("response_id", "str", "Stable response identifier."),
        Column("account_id", "str", "The responding account."),
        Column("submitted_at", "timestamp", "When the response was submitted."),
        Column("kind", "str", "nps, csat or ces."),
        Column("score", "float", "The score on the kind's scale."),
        Column("comment", "str", "Free-text verbatim.", required=False),
    ),
    key=("response_id",),
    indexes=(("submitted_at",),),
)

CHURN_EVENTS = TableSpec(
    "churn_events",
    "Churn as the customer's own system of record states it (optional; used when the mapping says "
    "`churn: {source: churn_events}`). One row per churn; a status/date field on an accounts export maps here "
    "with `keep_rows`.",
    (
        Column("account_id", "str", "The account that churned."),
        Column("churn_date", "date", "First day the account is no longer a customer (a churn at midnight of that day)."),
        Column("reason", "str", "Churn reason, free text.", required=False),
        Column("reactivated_at", "date", "First day the account is a customer again, if it came back; a reactivation "
               "within the grace period cancels the churn.", required=False),
    ),
    key=("account_id", "churn_date"),
)

TRUTH = TableSpec(
    "truth",
    "Demo books only: the generator's true monthly churn hazard per account, for oracle comparisons.",
    (
        Column("account_id", "str", "The account."),
        Column("period_start", "date", "First day of the month."),
        Column("hazard", "float", "True probability that the account churns in this month, given it is a customer at its start."),
    ),
    key=("account_id", "period_start"),
)

ACCOUNT_SCORES = TableSpec(
    "account_scores",
    "Daily score history, one row per active account and as-of date. Re-scoring a day replaces that day.",
    (
        Column("as_of_date", "date", "The day the score is for (features use only data before it)."),
        Column("account_id", "str", "The account."),
        Column("p_churn", "float", "Calibrated probability of churn within the horizon."),
        Column("health_score", "int", "0-100, higher is healthier: p_churn on a scale whose band cut-offs sit at fixed points (green 70-100, yellow 40-69, red 0-39; docs/health-score.md)."),
        Column("band", "str", "green, yellow or red: p_churn against multiples of the model's training base rate (or the absolute thresholds when set); a pinned override wins."),
        Column("health_change_7d", "float", "Health score now minus 7 days earlier (empty if not scored then).", required=False),
        Column("health_change_30d", "float", "Health score now minus 30 days earlier (empty if not scored then).", required=False),
        Column("arr", "float", "Current ARR of the account."),
        Column("arr_at_risk", "float", "p_churn x ARR."),
        Column("top_drivers", "str", "JSON list of the top risk reasons: feature, family, value, contribution, sentence, kind (risk), baseline and peers (the typical value it is compared with, and whose)."),
        Column("top_drivers_text", "str", "The risk reasons as plain sentences, one per line; each says its direction and compared with what."),
        Column("protective_driver", "str", "JSON of the strongest protective reason: the fields of a top driver, kind protective.", required=False),
        Column("protective_driver_text", "str", "The strongest protective reason as a sentence.", required=False),
        Column("context_drivers", "str", "JSON list of context facts the model leaned on (tenure, ARR, plan, renewal date; missing values): the fields of a top driver, kind context. Context, not reasons.", required=False),
        Column("context_text", "str", "The context facts as plain sentences, one per line.", required=False),
        *[
            Column(f"{family}_score", "int", f"0-100 {family} sub-score: the health score if only {family} signals differed from the average account (docs/health-score.md); empty when the model has no {family} feature (its source is absent).", required=False)
            for family in FAMILIES
        ],
        Column("model_band", "str", "The band the model gave, before any manual override."),
        Column("health_scale", "int", "Version of the health scale: 2 = banded scale (docs/health-score.md). Rows scored on the old scale (1 = round(100 * (1 - p_churn))) are re-expressed on the next scoring run.", required=False),
        Column("red_threshold", "float", "The p_churn cut-off for red this row was banded and scaled with.", required=False),
        Column("yellow_threshold", "float", "The p_churn cut-off for yellow this row was banded and scaled with.", required=False),
        Column("band_override_reason", "str", "Why a CSM pinned the band (empty when not overridden).", required=False),
        Column("model_name", "str", "Registered model name."),
        Column("model_version", "str", "Registered model version that produced the score."),
        Column("scored_at", "timestamp", "When the score was computed."),
    ),
    key=("as_of_date", "account_id"),
)

OUTREACH_TASKS = TableSpec(
    "outreach_tasks",
    "Outreach tasks decided by playbooks; held-out matches are recorded with held_out = true and no CRM task.",
    (
        Column("task_key", "str", "Deterministic key: account, playbook and period. Dedupes tasks across runs."),
        Column("as_of_date", "date", "The scoring day that triggered the task."),
        Column("account_id", "str", "The account."),
        Column("crm_account_id", "str", "Salesforce Account the task is attached to (WhatId).", required=False),
        Column("playbook", "str", "Name of the playbook that matched."),
        Column("subject", "str", "Task subject."),
        Column("description", "str", "Task description with the drivers in plain words."),
        Column("priority", "str", "High, Normal or Low."),
        Column("due_date", "date", "When the task is due."),
        Column("owner_email", "str", "Who the task is for.", required=False),
        Column("status", "str", "Not Started, In Progress, Completed..., as last known."),
        Column("held_out", "bool", "True when the account fell in the playbook's holdout: no task is sent."),
        Column("crm_task_id", "str", "Salesforce Task Id once pushed.", required=False),
        Column("created_at", "timestamp", "When churnflow decided the task."),
    ),
    key=("task_key",),
)

BAND_OVERRIDES = TableSpec(
    "band_overrides",
    "Bands pinned by CSMs (churnflow override). Scoring applies the latest unexpired one per account.",
    (
        Column("account_id", "str", "The account."),
        Column("band", "str", "green, yellow or red."),
        Column("reason", "str", "Why, in the CSM's words."),
        Column("set_by", "str", "Who pinned it."),
        Column("expires_on", "date", "First day the override no longer applies."),
        Column("created_at", "timestamp", "When it was set."),
    ),
    key=("account_id", "created_at"),
)

OUTPUTS: dict[str, TableSpec] = {t.name: t for t in (ACCOUNT_SCORES, OUTREACH_TASKS, BAND_OVERRIDES)}

# -- derived tables: materialized once per day by features.rollups, read by the feature builder

USAGE_DAILY = TableSpec(
    "usage_daily",
    "Usage rolled up per account, day, user and product feature (features.rollups). Windows read this, never raw usage.",
    (
        Column("account_id", "str", "The account."),
        Column("activity_date", "date", "The day of the activity."),
        Column("user_id", "str", "The acting user (empty when the source has none).", required=False),
        Column("feature", "str", "Product feature or event name."),
        Column("events", "float", "Sum of quantity."),
        Column("errors", "int", "Sum of errors."),
        Column("duration_s", "float", "Sum of time spent, in seconds."),
        Column("source_rows", "int", "Raw usage rows rolled into this row."),
    ),
    indexes=(("activity_date",),),
)

USAGE_ACCOUNT_DAILY = TableSpec(
    "usage_account_daily",
    "Usage rolled up per account and day (features.rollups): event sums and the activity span.",
    (
        Column("account_id", "str", "The account."),
        Column("activity_date", "date", "The day of the activity."),
        Column("events", "float", "Sum of quantity."),
        Column("errors", "int", "Sum of errors."),
        Column("source_rows", "int", "Raw usage rows rolled into this row."),
    ),
    key=("account_id", "activity_date"),
    indexes=(("activity_date",),),
)

USAGE_ROLLUP_DAYS = TableSpec(
    "usage_rollup_days",
    "Which days the usage rollups hold and whether a write to usage has made a day stale (dirty).",
    (
        Column("activity_date", "date", "The day."),
        Column("source_rows", "int", "Raw usage rows the day had when it was rolled."),
        Column("events", "float", "Sum of quantity that day."),
        Column("content_hash", "str", "Order-independent hash of the day's rolled rows (feature cache keys use it).", required=False),
        Column("dirty", "bool", "True when usage rows of that day were written after the roll."),
        Column("rolled_at", "timestamp", "When the day was last rolled.", required=False),
    ),
    key=("activity_date",),
)

USAGE_INGEST_DAYS = TableSpec(
    "usage_ingest_days",
    "Per-day content hash of the usage ingest loaded last, so the next ingest rewrites only changed days.",
    (
        Column("activity_date", "date", "The day."),
        Column("content_hash", "str", "Order-independent hash of that day's canonical usage rows."),
        Column("source_rows", "int", "Rows of that day."),
    ),
    key=("activity_date",),
)

SURVEY_TEXT = TableSpec(
    "survey_text",
    "Verbatim comments scored once each (sentiment and topic flags from the packaged lexicon).",
    (
        Column("response_id", "str", "The survey response."),
        Column("account_id", "str", "The responding account."),
        Column("submitted_at", "timestamp", "When the response was submitted."),
        Column("comment_md5", "str", "md5 of the comment that was scored; a changed comment is scored again."),
        Column("sentiment", "float", "Lexicon sentiment, -1 (negative) to 1 (positive); empty when no lexicon word appears.", required=False),
        *[Column(f"topic_{topic}", "int", f"1 when the comment mentions {topic.replace('_', ' ')}.") for topic in TOPICS],
    ),
    key=("response_id",),
    indexes=(("submitted_at",),),
)

FEATURE_BUILDS = TableSpec(
    "feature_builds",
    "Which inputs each as-of date's stored features were built from: a re-run with the same inputs reuses them.",
    (
        Column("as_of_date", "date", "The as-of date."),
        Column("input_fingerprint", "str", "Hash of the feature-set version and of every row the features as of that date read."),
        Column("feature_rows", "int", "Accounts featured."),
        Column("built_at", "timestamp", "When they were built."),
    ),
    key=("as_of_date",),
)

SCORE_BUILDS = TableSpec(
    "score_builds",
    "Which inputs each day's stored scores were computed from: a re-run with the same inputs reuses them.",
    (
        Column("as_of_date", "date", "The scoring day."),
        Column("input_fingerprint", "str", "Hash of the model, the features, the previous health, the overrides, the settings and the scoring code."),
        Column("scored_rows", "int", "Accounts scored."),
        Column("scored_at", "timestamp", "When they were computed."),
    ),
    key=("as_of_date",),
)

# -- written by ingest: attribute values and the manifest of each load

ACCOUNT_ATTRIBUTES = TableSpec(
    "account_attributes",
    "Extra account / subscription columns declared under `attributes:` in the mapping, one row per value (written by ingest).",
    (
        Column("account_id", "str", "The account."),
        Column("subscription_id", "str", "The subscription, for attributes read from subscriptions.", required=False),
        Column("name", "str", "The attribute's name in the mapping."),
        Column("value_number", "float", "The value of a number attribute.", required=False),
        Column("value_text", "str", "The value of a category attribute.", required=False),
    ),
    key=("account_id", "subscription_id", "name"),
)

INGEST_MANIFEST = TableSpec(
    "ingest_manifest",
    "One row per ingest run: what the mapping declared (absent tables, churn source, attributes, usage event types).",
    (
        Column("run_id", "str", "The ingest run."),
        Column("run_date", "date", "The run date (rows stamped after it were rejected)."),
        Column("started_at", "timestamp", "When the run started."),
        Column("finished_at", "timestamp", "When its load committed; empty for a run that failed or died.", required=False),
        Column("mapping", "str", "Path of the mapping file."),
        Column("config", "str", "JSON: absent, churn_source, attributes, usage_event_types."),
    ),
    key=("run_id",),
)

# -- written by the stages for themselves (monitoring, CRM sync, quarantine) and by the core

ACCOUNT_FEATURES = TableSpec(
    "account_features",
    "Point-in-time features per account and as-of date (features.build), read by training and scoring. "
    "Re-building a day replaces that day.",
    (
        Column("as_of_date", "timestamp", "The as-of date (midnight): features use only data before it."),
        Column("account_id", "str", "The account."),
    ),
    key=("as_of_date", "account_id"),
    extra_columns="One column per feature of the book's catalogue (docs/features.md): a number, or text for a category. "
                  "The set follows the book (absent sources, attributes, event types): columns are added as features appear.",
)

MODEL_MONITORING = TableSpec(
    "model_monitoring",
    "Drift and realized-performance checks of a model version (models.monitor), read by the digest. "
    "Re-checking a day replaces that day's rows for the version.",
    (
        Column("checked_at", "timestamp", "When the check ran."),
        Column("as_of_date", "timestamp", "The day checked (midnight)."),
        Column("model_version", "str", "Registered model version checked."),
        Column("metric", "str", "psi:<feature>, psi_score, realized_auc or realized_ece."),
        Column("value", "float", "The metric's value.", required=False),
        Column("breached", "bool", "True when the value crossed its threshold."),
        Column("detail", "str", "The threshold and what was compared, in words.", required=False),
    ),
    key=("as_of_date", "model_version", "metric"),
)

CRM_SYNC_LEDGER = TableSpec(
    "crm_sync_ledger",
    "What churnflow intended and sent to the CRM per record (crm_sync.ledger): re-sends only what changed, "
    "retries what failed, and never creates a Task twice.",
    (
        Column("kind", "str", "account (health fields) or task."),
        Column("record_key", "str", "churnflow's key of the record: the account, or the task key."),
        Column("status", "str", "intended, sent, failed or in_doubt (a Task create whose outcome is unknown)."),
        Column("intended_hash", "str", "Hash of the values last intended.", required=False),
        Column("sent_hash", "str", "Hash of the values the CRM last accepted.", required=False),
        Column("crm_id", "str", "The CRM record Id once known.", required=False),
        Column("error", "str", "The CRM's error for a failed write.", required=False),
        Column("run_id", "str", "The sync run that last touched the record.", required=False),
        Column("updated_at", "timestamp", "When the entry last changed.", required=False),
        Column("intended_state", "str", "JSON of the values last intended.", required=False),
        Column("sent_state", "str", "JSON of the values the CRM last accepted.", required=False),
        Column("intended_as_of", "date", "The scoring day of the intended values.", required=False),
        Column("sent_as_of", "date", "The scoring day of the sent values.", required=False),
        Column("seen_as_of", "date", "The last scoring day that still wanted the record.", required=False),
    ),
    key=("kind", "record_key"),
)

CRM_ACCOUNTS = TableSpec(
    "crm_accounts",
    "Owners and renewal dates read back from the CRM (churnflow crm-pull); replaced on every pull.",
    (
        Column("crm_account_id", "str", "The Account's value of the match field (Id or external id)."),
        Column("owner_email", "str", "Email of the Account owner in the CRM.", required=False),
        Column("renewal_date", "timestamp", "The renewal date field, when configured (midnight).", required=False),
        Column("pulled_at", "timestamp", "When the pull ran."),
    ),
    key=("crm_account_id",),
)

QUARANTINE = TableSpec(
    "quarantine",
    "Rows the last ingest rejected, one record per (rejected row, broken rule), replaced per canonical table on every "
    "ingest (ingest.contracts). No key: a log of rejects, where one source row may break one rule in several chunks.",
    (
        Column("table_name", "str", "The canonical table the row was for."),
        Column("source", "str", "File name, `query`, or the source table.", required=False),
        Column("source_row", "int", "1-based data row of the file (the first row after the header is 1) or of the result.", required=False),
        Column("source_key", "str", "The row's key value(s), when the table has a key.", required=False),
        Column("field", "str", "The canonical column that broke the rule.", required=False),
        Column("value", "str", "The offending value, as read.", required=False),
        Column("reason", "str", "The rule broken, in words."),
        Column("run_id", "str", "The ingest run."),
        Column("quarantined_at", "timestamp", "When the row was rejected."),
    ),
)

TABLE_CHANGES = TableSpec(
    "table_changes",
    "The write journal (churnflow.warehouse): which days of a journaled table each write touched, per reader of "
    "derived state, until that reader catches up. An empty day means the whole table was replaced.",
    (
        Column("reader", "str", "Who catches up from the entry (declared with the table: `journal_readers`)."),
        Column("table_name", "str", "The table written."),
        Column("day", "date", "A day whose rows changed; empty: the whole table was replaced.", required=False),
    ),
    key=("reader", "table_name", "day"),
)

STAGE_TABLES: dict[str, TableSpec] = {t.name: t for t in (ACCOUNT_FEATURES, MODEL_MONITORING, CRM_SYNC_LEDGER, CRM_ACCOUNTS, QUARANTINE,
                                                          TABLE_CHANGES)}

DERIVED: dict[str, TableSpec] = {
    t.name: t for t in (USAGE_DAILY, USAGE_ACCOUNT_DAILY, USAGE_ROLLUP_DAYS, USAGE_INGEST_DAYS, SURVEY_TEXT, FEATURE_BUILDS, SCORE_BUILDS,
                        ACCOUNT_ATTRIBUTES, INGEST_MANIFEST)
}

CANONICAL: dict[str, TableSpec] = {t.name: t for t in (ACCOUNTS, SUBSCRIPTIONS, USAGE, TICKETS, SURVEYS, CHURN_EVENTS)}
ALL_INPUTS: dict[str, TableSpec] = {**CANONICAL, TRUTH.name: TRUTH}
DECLARED: dict[str, TableSpec] = {**ALL_INPUTS, **OUTPUTS, **DERIVED, **STAGE_TABLES}

# -- history of the state tables (churnflow.history) ------------------------------------
# Sources that overwrite rows (a ticket reopened, a term extended, a segment changed) keep
# every loaded version here, so features as of D read the version known at D. Generated
# from the state tables' own specs: a column added there is versioned without an edit here.

STATE_TABLES = ("accounts", "subscriptions", "tickets", "account_attributes")


def history_spec(spec: TableSpec) -> TableSpec:
    """``<table>_history``: the table's columns (all optional: they are copies) plus the
    version's validity; key: the table's key and ``valid_from``."""
    return TableSpec(
        f"{spec.name}_history",
        f"Every loaded version of the rows of `{spec.name}` (churnflow.history); features as of D read the version valid at D.",
        (
            *[Column(c.name, c.kind, c.description, required=c.required and c.name in spec.key) for c in spec.columns],
            Column("valid_from", "timestamp", "When this version became known: the end of the ingest's run date (a demo book: its end)."),
            Column("valid_to", "timestamp", "When a later load changed or dropped the row; empty while this version is current.", required=False),
            Column("first_version", "bool", "True for the earliest version of the key: it also stands for every date before it was loaded."),
        ),
        key=(*spec.key, "valid_from"),
    )


HISTORY: dict[str, TableSpec] = {
    f"{name}_history": history_spec(DECLARED[name]) for name in STATE_TABLES if name in DECLARED and DECLARED[name].key
}
DECLARED = {**DECLARED, **HISTORY}

# -- event intake (events/, flows/react.py) -------------------------------------------------
# Webhook events are committed here before they are acknowledged, then applied to the
# canonical tables by the reaction they trigger.

EVENT_INBOX = TableSpec(
    "event_inbox",
    "Every accepted webhook event (events.intake), committed before the HTTP acknowledgement: the canonical row it "
    "carries, and whether a reaction has applied it to its canonical table yet.",
    (
        Column("event_id", "str", "The sender's event id (Zendesk `id`, Typeform `event_id`, churnflow `event_id`); a second delivery is a duplicate."),
        Column("source", "str", "The payload shape it came in: survey, ticket, failure (churnflow's own), zendesk or typeform."),
        Column("kind", "str", "What happened: survey, ticket.created, ticket.updated, ticket.closed or failure."),
        Column("table_name", "str", "The canonical table the row goes to: surveys, tickets or usage."),
        Column("account_id", "str", "The account the event is about."),
        Column("occurred_at", "timestamp", "When it happened, as the sender says (naive UTC)."),
        Column("received_at", "timestamp", "When churnflow committed it (naive UTC)."),
        Column("row_json", "str", "The canonical row (JSON), mapped and checked by the table's contract."),
        Column("status", "str", "received (not applied yet) or applied."),
        Column("applied_at", "timestamp", "When a reaction applied it to the canonical table.", required=False),
        Column("reaction_run", "str", "The Prefect flow run (react) that applied it.", required=False),
    ),
    key=("event_id",),
    indexes=(("account_id", "status"),),
)

EVENT_REACTIONS = TableSpec(
    "event_reactions",
    "One row per reaction (flows/react.py): the events it applied, the score before and after, the task it decided.",
    (
        Column("reaction_run", "str", "The Prefect flow run."),
        Column("account_id", "str", "The account."),
        Column("event_ids", "str", "JSON list of the events applied."),
        Column("as_of_date", "date", "The scoring day written (the day after the newest event's day)."),
        Column("health_before", "int", "Health score the account had before (that day's or the latest earlier one).", required=False),
        Column("health_after", "int", "Health score after the reaction.", required=False),
        Column("band_before", "str", "Band before.", required=False),
        Column("band_after", "str", "Band after.", required=False),
        Column("task_keys", "str", "JSON list of the outreach task keys decided (empty list: none).", required=False),
        Column("outcome", "str", "task (a task was sent), held_out, no_task or no_score (account not active)."),
        Column("started_at", "timestamp", "When the reaction started."),
        Column("finished_at", "timestamp", "When it finished."),
    ),
    key=("reaction_run", "account_id"),
)

EVENTS: dict[str, TableSpec] = {t.name: t for t in (EVENT_INBOX, EVENT_REACTIONS)}
DECLARED = {**DECLARED, **EVENTS}


def coerce(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Return ``frame`` with exactly the spec's columns in order and types.

    Optional columns that are missing are filled with their default; a missing required
    column raises with the table and column named.
    """
    missing = [c.name for c in spec.columns if c.required and c.name not in frame.columns and c.default is None]
    if missing:
        raise ValueError(f"table '{spec.name}': missing required column(s) {missing}; got {list(frame.columns)}")
    out = pd.DataFrame(index=frame.index)
    for col in spec.columns:
        values = frame[col.name] if col.name in frame.columns else pd.Series(col.default, index=frame.index)
        if col.default is not None:
            values = values.fillna(col.default)
        out[col.name] = _as_kind(values, col.kind)
    return out.reset_index(drop=True)


def _as_kind(values: pd.Series, kind: Kind) -> pd.Series:
    if kind == "str":
        return values.astype("string").astype(object).where(values.notna(), None)
    if kind == "int":
        return pd.to_numeric(values).astype("Int64")
    if kind == "float":
        return pd.to_numeric(values).astype("float64")
    if kind == "bool":
        return values.astype("boolean")
    if kind == "date":
        return pd.to_datetime(values).dt.normalize().astype("datetime64[ns]")
    return pd.to_datetime(values).astype("datetime64[ns]")


def data_model_markdown() -> str:
    """The text of docs/data-model.md, generated from the declarations above."""
    lines = [
        "# Canonical data model",
        "",
        "Generated from `churnflow/schema.py` by `churnflow docs`; do not edit by hand.",
        "",
        "Every table churnflow keeps in the warehouse is declared here once, with its key: the canonical inputs every "
        "stage reads, the outputs, and the tables the stages keep for themselves. Timestamps are naive UTC. "
        "Which stage writes and reads which table: docs/architecture.md.",
        "",
    ]
    for spec in DECLARED.values():
        lines += [f"## `{spec.name}`", "", spec.description, ""]
        if spec.key:
            lines += [f"Key: `{', '.join(spec.key)}`", ""]
        lines += ["| column | type | required | meaning |", "|---|---|---|---|"]
        for c in spec.columns:
            req = "yes" if c.required else f"no (default {c.default})" if c.default is not None else "no"
            lines.append(f"| `{c.name}` | {c.kind} | {req} | {c.description} |")
        if spec.extra_columns:
            lines.append(f"| *(more)* | | | {spec.extra_columns} |")
        lines.append("")
        if spec.journal_readers:
            lines += [f"Writes are journaled by `{spec.journal_day}` day for: {', '.join(f'`{r}`' for r in spec.journal_readers)} "
                      "(see `table_changes`).", ""]
    return "\n".join(lines)

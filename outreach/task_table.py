"""The outreach task table: what outreach decided, what the CRM push still has to send.

``outreach_tasks`` is written by :mod:`outreach.decisions`, updated by the CRM push (Task Ids,
statuses) and read by the digest. Its I/O lives here, apart from the playbook language, so
every reader and writer goes through one place and none has to load playbooks to read it.
"""

from __future__ import annotations

from datetime import date

import pandas as pd
import sqlalchemy as sa

from churnflow.schema import OUTREACH_TASKS
from churnflow.warehouse import read_sql, table_exists

TASKS_TABLE = OUTREACH_TASKS.name


def existing_tasks(engine: sa.Engine) -> pd.DataFrame:
    """Every row of the task table (an empty frame with its columns before the first run)."""
    if not table_exists(engine, TASKS_TABLE):
        return pd.DataFrame(columns=OUTREACH_TASKS.column_names)
    return read_sql(engine, f"SELECT * FROM {TASKS_TABLE}")


def tasks_up_to(engine: sa.Engine, day: date) -> pd.DataFrame | None:
    """Decisions triggered by scoring days up to ``day``: account_id, playbook, as_of_date, status,
    held_out; None when outreach never ran (no table)."""
    if not table_exists(engine, TASKS_TABLE):
        return None
    tasks = read_sql(
        engine,
        f"SELECT account_id, playbook, as_of_date, status, held_out FROM {TASKS_TABLE} WHERE as_of_date <= :d",
        {"d": day},
    )
    tasks["as_of_date"] = pd.to_datetime(tasks["as_of_date"]).dt.normalize()
    tasks["held_out"] = tasks["held_out"].fillna(False).astype(bool)
    return tasks


def pending_tasks(engine: sa.Engine) -> pd.DataFrame:
    """Tasks decided but not yet confirmed in the CRM (no Task Id): what the next push sends."""
    tasks = existing_tasks(engine)
    return tasks[~tasks["held_out"].astype(bool) & tasks["crm_task_id"].isna()].reset_index(drop=True)


def record_task_ids(engine: sa.Engine, ids: dict[str, str]) -> None:
    """Store Salesforce Task Ids by task key (bound parameters, one transaction)."""
    if not ids:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {TASKS_TABLE} SET crm_task_id = :task_id WHERE task_key = :key"),
            [{"task_id": v, "key": k} for k, v in ids.items()],
        )

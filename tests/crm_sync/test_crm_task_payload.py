"""One task payload: the dry-run plan, the push and reconcile build a task row's fields the same way."""

from __future__ import annotations

from datetime import date

import pandas as pd
import sqlalchemy as sa
from simple_salesforce import Salesforce

from churnflow.vocabulary import DEFAULT_TASK_PRIORITY, NEW_TASK_STATUS
from crm_sync.local.server import LocalSalesforce
from crm_sync.plan import plan_changes
from crm_sync.push.tasks import push_tasks
from crm_sync.repair import reconcile_with
from crm_sync.retry import RetryPolicy

AS_OF = date(2026, 11, 20)


def test_plan_push_and_reconcile_agree_on_a_task_row_with_and_without_priority(
        server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    account = server.seed("Account", [{"Name": f"{uid} acct"}])[0]
    keys = [f"{uid}:save:1", f"{uid}:save:2"]
    tasks = pd.DataFrame({
        "task_key": keys, "account_id": ["a1", "a1"], "crm_account_id": [account[:15], account],
        "owner_email": [None, None], "subject": ["Call about renewal", "Check in"], "description": ["Logins fell", None],
        "priority": ["High", None], "due_date": [date(2026, 12, 1), pd.Timestamp("2026-12-02")], "status": [None, None],
    })
    changes, _, planned_tasks = plan_changes(sa.create_engine("sqlite://"), AS_OF, pd.DataFrame(), tasks, None)
    assert planned_tasks == len(keys)
    planned = {key: {c.field: c.new for c in changes if c.sobject == "Task" and c.record == key} for key in keys}
    assert planned[keys[1]]["Priority"] == DEFAULT_TASK_PRIORITY and planned[keys[1]]["Status"] == NEW_TASK_STATUS

    pushed = push_tasks(sf, tasks, retry=retry)
    assert pushed.created == len(keys) and not pushed.errors
    for key in keys:
        record = server.get_record("Task", pushed.ids[key])
        assert record is not None
        assert {f: record[f] for f in planned[key]} == planned[key]  # the dry run showed what was written
    assert not record["Description"]  # an empty field is neither planned nor written

    # reconcile expects exactly what the push wrote: no difference, the priority-less row included
    assert [d.describe() for d in reconcile_with(sf, pd.DataFrame(), tasks, retry=retry)] == []

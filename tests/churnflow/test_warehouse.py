"""The warehouse: declared tables (also ones an older churnflow created) and the write journal."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow import schema
from churnflow.warehouse import WarehouseError, read_sql, record_write, replace_rows, take_changes, transaction

# Tables the previous release created from a frame's dtypes (no key), as users' warehouses hold them.
_OLD_TABLES = {
    "quarantine": 'CREATE TABLE quarantine (table_name VARCHAR, source VARCHAR, source_row BIGINT, source_key VARCHAR, field VARCHAR, '
                  'value VARCHAR, reason VARCHAR, run_id VARCHAR, quarantined_at TIMESTAMP)',
    "account_features": 'CREATE TABLE account_features (as_of_date TIMESTAMP, account_id VARCHAR, "logins_30d" DOUBLE, plan VARCHAR)',
    "model_monitoring": "CREATE TABLE model_monitoring (checked_at TIMESTAMP, as_of_date TIMESTAMP, model_version VARCHAR, metric VARCHAR, "
                        "value DOUBLE, breached BOOLEAN, detail VARCHAR)",
    "crm_accounts": "CREATE TABLE crm_accounts (crm_account_id VARCHAR, owner_email VARCHAR, renewal_date TIMESTAMP, pulled_at TIMESTAMP)",
}


def _rows(name: str) -> pd.DataFrame:
    now = pd.Timestamp("2026-11-02 08:00")
    return {
        "quarantine": pd.DataFrame({"table_name": ["tickets"] * 2, "source": "tickets.csv", "source_row": [3, 3], "source_key": "T1",
                                    "field": "priority", "value": "p9", "reason": "not one of low, normal, high, urgent",
                                    "run_id": "r1", "quarantined_at": now}),
        "account_features": pd.DataFrame({"as_of_date": pd.Timestamp("2026-11-01"), "account_id": ["A1", "A2"], "logins_30d": [3.0, 1.0],
                                          "plan": ["growth", "starter"]}),
        "model_monitoring": pd.DataFrame({"checked_at": now, "as_of_date": pd.Timestamp("2026-11-01"), "model_version": "2",
                                          "metric": ["psi_score", "realized_auc"], "value": [0.01, 0.7], "breached": False, "detail": "x"}),
        "crm_accounts": pd.DataFrame({"crm_account_id": ["001A", "001B"], "owner_email": ["a@x.io", None],
                                      "renewal_date": pd.to_datetime(["2027-01-01", None]), "pulled_at": now}),
    }[name]


@pytest.mark.parametrize("name", sorted(_OLD_TABLES))
def test_a_table_an_older_churnflow_created_keeps_working_and_gets_its_key(duck_engine: sa.Engine, name: str) -> None:
    with duck_engine.begin() as conn:
        conn.execute(sa.text(_OLD_TABLES[name]))
    rows = _rows(name)
    spec = schema.DECLARED[name]
    where = {"table_name": "tickets"} if name == "quarantine" else None
    assert replace_rows(duck_engine, name, rows, where=where, replace_all=where is None) == len(rows)
    assert replace_rows(duck_engine, name, rows, where=where, replace_all=where is None) == len(rows)  # a re-run replaces
    assert len(read_sql(duck_engine, f'SELECT * FROM "{name}"')) == len(rows)
    if spec.key:  # the declared key is enforced from now on
        with pytest.raises(WarehouseError, match=f"table '{name}' refused the rows"):
            replace_rows(duck_engine, name, rows.iloc[:1])


@pytest.mark.parametrize("name", sorted(_OLD_TABLES))
def test_a_new_warehouse_creates_the_declared_table(duck_engine: sa.Engine, name: str) -> None:
    replace_rows(duck_engine, name, _rows(name), replace_all=True)
    columns = {c["name"]: c for c in sa.inspect(duck_engine).get_columns(name)}
    declared = schema.DECLARED[name]
    assert set(declared.column_names) <= set(columns)
    assert [c for c in declared.columns if c.required and columns[c.name]["nullable"]] == []
    if declared.extra_columns:  # the run-time columns come from the frame
        assert {"logins_30d", "plan"} <= set(columns)


def test_the_journal_tells_each_reader_once_and_survives_a_rollback(duck_engine: sa.Engine) -> None:
    usage = schema.coerce(pd.DataFrame({"account_id": ["A1", "A1"], "occurred_at": [datetime(2026, 3, 1, 9), datetime(2026, 3, 4, 9)],
                                        "feature": "export"}), schema.USAGE)
    replace_rows(duck_engine, "usage", usage)
    with transaction(duck_engine) as conn:
        record_write(conn, "usage", days=[date(2026, 3, 9)])
    for reader in schema.USAGE.journal_readers:  # each reader learns the same days, independently
        with duck_engine.begin() as conn:
            changes = take_changes(conn, reader, "usage")
        assert changes.days == (date(2026, 3, 1), date(2026, 3, 4), date(2026, 3, 9)) and not changes.whole_table
        with duck_engine.begin() as conn:
            assert take_changes(conn, reader, "usage").empty  # taken once
    replace_rows(duck_engine, "usage", usage, replace_all=True)
    with pytest.raises(RuntimeError), duck_engine.begin() as conn:
        assert take_changes(conn, "usage_rollups", "usage").whole_table
        raise RuntimeError("the reader's work failed")
    with duck_engine.begin() as conn:  # rolled back with the reader's work: still there
        assert take_changes(conn, "usage_rollups", "usage").whole_table
    with pytest.raises(WarehouseError, match="not a declared journal reader"), duck_engine.begin() as conn:
        take_changes(conn, "someone", "usage")

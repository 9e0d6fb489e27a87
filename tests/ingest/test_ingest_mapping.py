"""The mapping language's optional sources, recoding, row filters, attributes, warnings, date
order, CRM ids, the manifest and read-only validation, on real DuckDB warehouses."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from ingest import load as ingest_module
from ingest.load import check_read_only_query, ingest, register_table_check, validate
from ingest.mapping import AmbiguousDateError, ContractError, MappingError, QueryError, SourceError, load_mapping
from churnflow.manifest import AttributeSpec, DataManifest, available_tables, read_manifest
from churnflow.warehouse import get_engine, read_sql, replace_rows, table_exists
from features.rollups import refresh_survey_text
from churnflow.salesforce_ids import make_id

RUN_DATE = date(2026, 11, 1)
ID1, ID2, ID3 = make_id("001", 1), make_id("001", 2), make_id("001", 3)

ACCOUNTS = f"""id,company,tier,since,sfdc,Channel,Age,status,cancelled_on
A1,Acme,smb,2024-01-05,{ID1},web,34,active,
A2,Beta,enterprise,2024-02-05,{ID2[:15]},partner,51,churned,2025-06-30
A3,Gamma,smb,2024-03-01,{ID3},web,29,Cancelled,2025-09-15
"""
ACCOUNT_COLUMNS = {"account_id": "id", "name": "company", "segment": "tier", "created_at": "since", "crm_account_id": "sfdc"}
TICKETS = """no,acct,opened,closed,prio
T1,A1,2025-01-10,2025-01-11,normal
T2,A2,2025-01-12,,high
"""
TICKET_COLUMNS = {"ticket_id": "no", "account_id": "acct", "opened_at": "opened", "priority": "prio"}
SURVEYS = """rid,acct,at,kind,score
R1,A1,2025-02-01,nps,9
R2,A2,2025-02-03,csat,2
"""
SURVEY_COLUMNS = {"response_id": "rid", "account_id": "acct", "submitted_at": "at", "kind": "kind", "score": "score"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _engine(tmp_path: Path) -> sa.Engine:
    return get_engine(f"duckdb:///{tmp_path}/w.duckdb")


def _mapping_file(tmp_path: Path, mapping: dict) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return path


def _base(tmp_path: Path, *, accounts: str = ACCOUNTS, tickets: str = TICKETS, **tables: object) -> dict:
    _write(tmp_path / "accounts.csv", accounts)
    _write(tmp_path / "tickets.csv", tickets)
    _write(tmp_path / "surveys.csv", SURVEYS)
    base = {
        "accounts": {"file": "accounts.csv", "columns": dict(ACCOUNT_COLUMNS)},
        "tickets": {"file": "tickets.csv", "columns": {**TICKET_COLUMNS, "closed_at": "closed"}},
    }
    base.update(tables)  # type: ignore[arg-type]
    return {"tables": base}


def _count(engine: sa.Engine, table: str) -> int:
    return int(read_sql(engine, f'SELECT COUNT(*) AS n FROM "{table}"')["n"].iloc[0])


# ============================================================================ optional sources


def test_a_source_declared_absent_drops_the_loaded_copy_and_is_recorded(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with_surveys = _base(tmp_path, surveys={"file": "surveys.csv", "columns": SURVEY_COLUMNS})
    for absent in ("absent", {"absent": True}):
        ingest(engine, _mapping_file(tmp_path, with_surveys), RUN_DATE)
        assert refresh_survey_text(engine, since=date(2025, 1, 1)) >= 0 and table_exists(engine, "survey_text")
        assert _count(engine, "surveys") == 2 and "surveys" in available_tables(engine)
        mapping = _base(tmp_path, surveys=absent)
        checked = validate(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
        assert table_exists(engine, "surveys")  # validate changes nothing
        assert {t.table: t.status for t in checked.tables}["surveys"] == "absent"
        report = ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
        assert report.ok and not table_exists(engine, "surveys") and not table_exists(engine, "survey_text")
        manifest = read_manifest(engine)
        assert manifest.absent == frozenset({"surveys"}) and manifest.run_id == report.run_id
        assert available_tables(engine) == frozenset({"accounts", "tickets"})
        assert "tables.surveys: declared absent; would drop the previously loaded table (2 rows)" in checked.notes
        assert "tables.surveys: declared absent; dropped the previously loaded table (2 rows)" in report.notes

    with pytest.raises(MappingError, match="tables.surveys: .*an absent table takes no other keys"):
        load_mapping(_base(tmp_path, surveys={"absent": True, "file": "surveys.csv"}))
    with pytest.raises(MappingError, match="accounts cannot be absent"):
        load_mapping({"tables": {"accounts": "absent"}})


def test_an_empty_extract_loads_only_when_allowed(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    ingest(engine, _mapping_file(tmp_path, _base(tmp_path)), RUN_DATE)
    assert _count(engine, "tickets") == 2
    header_only = "no,acct,opened,closed,prio\n"
    with pytest.raises(SourceError, match="no data rows.*allow_empty: true"):
        ingest(engine, _mapping_file(tmp_path, _base(tmp_path, tickets=header_only)), RUN_DATE)
    assert _count(engine, "tickets") == 2

    allowed = _base(tmp_path, tickets=header_only)
    allowed["tables"]["tickets"]["allow_empty"] = True
    report = ingest(engine, _mapping_file(tmp_path, allowed), RUN_DATE)
    assert {t.table: (t.rows_read, t.rows_loaded) for t in report.tables}["tickets"] == (0, 0)
    assert _count(engine, "tickets") == 0 and _count(engine, "accounts") == 3
    _write(tmp_path / "tickets.csv", "")  # some exports write nothing at all for an empty result
    assert ingest(engine, _mapping_file(tmp_path, allowed), RUN_DATE).ok
    assert _count(engine, "tickets") == 0

    # usage too: the per-day load state is forgotten with the rows
    _write(tmp_path / "usage.csv", "acct,at,what\nA1,2025-03-01 10:00,like\nA2,2025-03-02 10:00,share\n")
    allowed["tables"]["usage"] = {"file": "usage.csv", "allow_empty": True,
                                  "columns": {"account_id": "acct", "occurred_at": "at", "feature": "what"}}
    ingest(engine, _mapping_file(tmp_path, allowed), RUN_DATE)
    assert _count(engine, "usage") == 2 and _count(engine, "usage_ingest_days") == 2
    _write(tmp_path / "usage.csv", "acct,at,what\n")
    ingest(engine, _mapping_file(tmp_path, allowed), RUN_DATE)
    assert _count(engine, "usage") == 0 and _count(engine, "usage_ingest_days") == 0


# ============================================================================ recode, keep_rows, churn events


def test_recode_maps_values_and_leaves_the_rest_to_the_contract(tmp_path: Path) -> None:
    tickets = "no,acct,opened,prio\nT1,A1,2025-01-10, Medium\nT2,A2,2025-01-12,P1\nT3,A3,2025-01-13,weird\nT4,A3,2025-01-14,low\n"
    mapping = _base(tmp_path, tickets=tickets, tickets_unused=None)
    mapping["tables"].pop("tickets_unused")
    mapping["tables"]["tickets"] = {"file": "tickets.csv", "columns": TICKET_COLUMNS,
                                    "recode": {"priority": {"medium": "normal", "p1": "urgent"}}}
    mapping["max_bad_share"] = 0.5
    engine = _engine(tmp_path)
    ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    loaded = read_sql(engine, "SELECT ticket_id, priority FROM tickets ORDER BY ticket_id")
    assert loaded.values.tolist() == [["T1", "normal"], ["T2", "urgent"], ["T4", "low"]]
    q = read_sql(engine, "SELECT source_row, field, value, reason FROM quarantine")
    assert q.values.tolist() == [[3, "priority", "weird", "priority not one of high, low, normal, urgent"]]
    with pytest.raises(MappingError, match="tables.tickets.recode.prio: not a column of 'tickets'"):
        load_mapping({"tables": {"tickets": {"file": "t.csv", "recode": {"prio": {"a": "b"}}}}})


def test_keep_rows_skips_and_churn_events_load_from_the_customers_export(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    mapping = _base(tmp_path, churn_events={
        "file": "accounts.csv", "columns": {"account_id": "id", "churn_date": "cancelled_on"},
        "keep_rows": {"status": ["churned", "cancelled"]},
    })
    mapping["churn"] = {"source": "churn_events"}
    report = ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    t = {x.table: x for x in report.tables}["churn_events"]
    assert (t.rows_read, t.rows_loaded, t.rows_quarantined, t.rows_skipped) == (3, 2, 0, 1)
    events = read_sql(engine, "SELECT account_id, churn_date FROM churn_events ORDER BY account_id")
    assert events["account_id"].tolist() == ["A2", "A3"]
    assert pd.to_datetime(events["churn_date"]).tolist() == [pd.Timestamp("2025-06-30"), pd.Timestamp("2025-09-15")]
    assert read_manifest(engine).churn_source == "churn_events"
    assert any("1 row(s) skipped by keep_rows (status)" in n for n in report.notes)

    # a bad kept row is quarantined at its row in the file, not its position after filtering
    _write(tmp_path / "accounts.csv", ACCOUNTS + "A4,Delta,smb,2024-04-01,,web,40,churned,someday\n")
    mapping["max_bad_share"] = 0.5
    ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    q = read_sql(engine, "SELECT source, source_row, field FROM quarantine WHERE table_name = 'churn_events'")
    assert q.values.tolist() == [["accounts.csv", 4, "churn_date"]]

    mapping["tables"]["churn_events"]["keep_rows"] = {"state": ["churned"]}
    with pytest.raises(SourceError, match=r"accounts.csv: missing column\(s\) \['state'\]"):
        validate(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    no_events = _base(tmp_path)
    no_events["churn"] = {"source": "churn_events"}
    with pytest.raises(MappingError, match="churn.source is churn_events, but tables.churn_events is not mapped"):
        validate(_engine(tmp_path / "fresh"), _mapping_file(tmp_path, no_events), RUN_DATE)


# ============================================================================ attributes and event types


def test_attributes_are_loaded_parsed_and_declared_in_the_manifest(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    subs = "ref,acct,plan,seats,arr,start,end,Region\nS1,A1,pro,5,\"1,000\",2025-01-01,2026-01-01,EMEA\nS2,A2,pro,3,500,2025-01-01,2026-01-01,\n"
    _write(tmp_path / "subs.csv", subs)
    mapping = _base(tmp_path, subscriptions={"file": "subs.csv", "columns": {
        "subscription_id": "ref", "account_id": "acct", "plan": "plan", "seats": "seats", "arr": "arr", "start_date": "start", "end_date": "end"}})
    mapping["attributes"] = {
        "acquisition_channel": {"table": "accounts", "column": "Channel", "kind": "category", "sentence": "Acquired through {value}"},
        "age_years": {"table": "accounts", "column": "Age", "kind": "number", "risk_when": "lower",
                      "sentence": "Account holder is {value:.0f} years old", "description": "Age of the account holder"},
        "region": {"table": "subscriptions", "column": "Region", "kind": "category"},
    }
    mapping["usage_event_types"] = ["like", "dislike"]
    report = ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    assert report.ok
    rows = read_sql(engine, "SELECT * FROM account_attributes ORDER BY name, account_id")
    got = [(r.account_id, r.subscription_id, r.name, None if pd.isna(r.value_number) else r.value_number, r.value_text) for r in rows.itertuples()]
    assert got == [
        ("A1", None, "acquisition_channel", None, "web"), ("A2", None, "acquisition_channel", None, "partner"),
        ("A3", None, "acquisition_channel", None, "web"),
        ("A1", None, "age_years", 34.0, None), ("A2", None, "age_years", 51.0, None), ("A3", None, "age_years", 29.0, None),
        ("A1", "S1", "region", None, "EMEA"),  # S2's empty region is no row
    ]
    manifest = read_manifest(engine)
    assert manifest.usage_event_types == ("like", "dislike")
    assert manifest.attributes[1] == AttributeSpec("age_years", "accounts", "number", "Age of the account holder",
                                                   "Account holder is {value:.0f} years old", "lower")
    assert manifest.attributes[0].risk_when == "category" and manifest.attributes[2].sentence.format(value="EMEA") == "Region is EMEA"

    # a number that does not parse rejects its row like any field
    _write(tmp_path / "accounts.csv", ACCOUNTS.replace(",29,", ",twenty-nine,"))
    mapping["max_bad_share"] = 0.5
    ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    q = read_sql(engine, "SELECT source_row, field, value, reason FROM quarantine WHERE table_name = 'accounts'")
    assert q.values.tolist() == [[3, "age_years", "twenty-nine", "not a number (attribute age_years)"]]

    bad = {
        "attributes.x.table: Input should be 'accounts' or 'subscriptions'": {"table": "tickets", "column": "c", "kind": "number"},
        "attributes.x.table: 'subscriptions' is not mapped": {"table": "subscriptions", "column": "c", "kind": "number"},
        "attributes.x.sentence: unknown placeholder 'age'": {"table": "accounts", "column": "Age", "kind": "number", "sentence": "{age} years"},
        "attributes.x.sentence: cannot format the sample value 'sample'": {"table": "accounts", "column": "c", "kind": "category", "sentence": "{value:.0f}"},
        "attributes.x.kind": {"table": "accounts", "column": "c", "kind": "date"},
        "risk_when applies to number attributes": {"table": "accounts", "column": "c", "kind": "category", "risk_when": "lower"},
    }
    for needle, entry in bad.items():
        with pytest.raises(MappingError) as info:
            load_mapping({**_base(tmp_path), "attributes": {"x": entry}})
        assert needle in str(info.value), str(info.value)
    missing = {**_base(tmp_path), "attributes": {"x": {"table": "accounts", "column": "Agee", "kind": "number"}}}
    with pytest.raises(SourceError, match=r"accounts.csv.*missing column\(s\) \['Agee'\]"):
        validate(engine, _mapping_file(tmp_path, missing), RUN_DATE)


def test_usage_event_types_that_never_occur_are_a_warning(tmp_path: Path) -> None:
    _write(tmp_path / "usage.csv", "acct,at,what\nA1,2025-03-01 10:00,like\nA2,2025-03-02 10:00,share\n")
    mapping = _base(tmp_path, usage={"file": "usage.csv", "columns": {"account_id": "acct", "occurred_at": "at", "feature": "what"}})
    mapping["usage_event_types"] = ["like", "add_friend"]
    report = validate(_engine(tmp_path), _mapping_file(tmp_path, mapping), RUN_DATE)
    assert report.warnings == ["usage_event_types: ['add_friend'] never occur in usage.feature; their features will be zero for every account"]
    with pytest.raises(MappingError, match="usage_event_types: list distinct"):
        load_mapping({**_base(tmp_path), "usage_event_types": ["a", "a"]})


# ============================================================================ nothing silently ignored


@pytest.mark.parametrize("header", ["closedat", "Closed_At", "closed at", "closed_date"])
def test_an_unmapped_lookalike_of_a_canonical_column_is_a_warning(tmp_path: Path, header: str) -> None:
    tickets = f"no,acct,opened,{header},prio\nT1,A1,2025-01-10,2025-01-11,normal\n"
    mapping = _base(tmp_path, tickets=tickets)
    mapping["tables"]["tickets"]["columns"] = dict(TICKET_COLUMNS)  # closed_at not mapped
    engine = _engine(tmp_path)
    report = validate(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    assert report.warnings == [f"tickets.csv: column '{header}' looks like canonical 'closed_at' but is not mapped; "
                               "map it under tables.tickets.columns or list it under tables.tickets.ignore_columns"]
    assert f"WARNING tickets.csv: column '{header}'" in report.describe()
    mapping["tables"]["tickets"]["ignore_columns"] = [header]
    assert validate(engine, _mapping_file(tmp_path, mapping), RUN_DATE).warnings == []
    mapping["tables"]["tickets"].pop("ignore_columns")
    mapping["tables"]["tickets"]["columns"]["closed_at"] = header
    assert validate(engine, _mapping_file(tmp_path, mapping), RUN_DATE).warnings == []


def test_unrelated_columns_raise_no_warning(tmp_path: Path) -> None:
    report = validate(_engine(tmp_path), _mapping_file(tmp_path, _base(tmp_path)), RUN_DATE)
    assert report.warnings == []  # Channel, Age, status, cancelled_on look like no open canonical column


# ============================================================================ date order


def _dates_mapping(tmp_path: Path, since: list[str], **options: object) -> Path:
    rows = "\n".join(f"A{i},Co{i},smb,{d}" for i, d in enumerate(since, start=1))
    _write(tmp_path / "accounts.csv", "id,company,tier,since\n" + rows + "\n")
    mapping = {"options": options, "tables": {"accounts": {"file": "accounts.csv", "columns": {
        "account_id": "id", "name": "company", "segment": "tier", "created_at": "since"}}}}
    return _mapping_file(tmp_path, mapping)


def test_ambiguous_dates_are_refused_until_the_order_is_declared(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    mapping = _dates_mapping(tmp_path, ["2024-01-05", "03/11/2024", "04/11/2024"])
    for run in (validate, ingest):
        with pytest.raises(AmbiguousDateError) as info:
            run(engine, mapping, RUN_DATE)
        message = str(info.value)
        for needle in ("sources.yaml", "accounts.csv", "column 'since' (created_at)", "row 2", "'03/11/2024'",
                       "dayfirst: true", "dayfirst: false", "date_format"):
            assert needle in message, message
    assert not table_exists(engine, "accounts")

    ingest(engine, _dates_mapping(tmp_path, ["2024-01-05", "03/11/2024", "04/11/2024"], dayfirst=True), RUN_DATE)
    got = pd.to_datetime(read_sql(engine, "SELECT created_at FROM accounts ORDER BY account_id")["created_at"]).tolist()
    assert got == [pd.Timestamp("2024-01-05"), pd.Timestamp("2024-11-03"), pd.Timestamp("2024-11-04")]


def test_dates_whose_values_prove_the_order_are_read_in_it_and_noted(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    report = ingest(engine, _dates_mapping(tmp_path, ["2024-01-05", "03/11/2024", "25/12/2024"]), RUN_DATE)
    got = pd.to_datetime(read_sql(engine, "SELECT created_at FROM accounts ORDER BY account_id")["created_at"]).tolist()
    assert got == [pd.Timestamp("2024-01-05"), pd.Timestamp("2024-11-03"), pd.Timestamp("2024-12-25")]
    assert report.notes == ["sources.yaml: tables.accounts: column 'since' (created_at) read as DD/MM/YYYY, proven by accounts.csv row 3: "
                            "'25/12/2024' (declare dayfirst to make it explicit)".replace("sources.yaml", str(tmp_path / "sources.yaml"))]
    ingest(engine, _dates_mapping(tmp_path, ["03/11/2024", "12/25/2024"]), RUN_DATE)
    got = pd.to_datetime(read_sql(engine, "SELECT created_at FROM accounts ORDER BY account_id")["created_at"]).tolist()
    assert got == [pd.Timestamp("2024-03-11"), pd.Timestamp("2024-12-25")]
    with pytest.raises(AmbiguousDateError, match=r"mixes day-first dates \(accounts.csv row 1: '25/12/2024'\) and month-first dates "
                                                 r"\(accounts.csv row 2: '12/25/2024'\)"):
        validate(engine, _dates_mapping(tmp_path, ["25/12/2024", "12/25/2024"]), RUN_DATE)
    # declared, the other order's dates are quarantined, never guessed
    report = ingest(engine, _dates_mapping(tmp_path, ["25/12/2024", "12/25/2024", "01/02/2024"], dayfirst=True), RUN_DATE, max_bad_share=0.5)
    assert report.tables[0].rows_quarantined == 1 and report.notes == []


# ============================================================================ CRM ids


def test_crm_ids_that_are_not_salesforce_account_ids_are_cleared_and_recorded(tmp_path: Path) -> None:
    lowered = ID3[:15] + "BBB"  # not the case-safe suffix of the first 15
    accounts = ACCOUNTS.replace(ID1, "ACME-001").replace(ID2[:15], make_id("003", 7)).replace(ID3, lowered)
    engine = _engine(tmp_path)
    report = ingest(engine, _mapping_file(tmp_path, _base(tmp_path, accounts=accounts)), RUN_DATE)
    t = report.tables[0]
    assert (t.rows_read, t.rows_loaded, t.rows_quarantined, t.fields_cleared) == (3, 3, 0, 3)
    assert read_sql(engine, "SELECT crm_account_id FROM accounts")["crm_account_id"].isna().all()
    assert _count(engine, "tickets") == 2  # the accounts still load, so their tickets do too
    q = read_sql(engine, "SELECT source_row, field, value, reason FROM quarantine ORDER BY source_row")
    assert q["value"].tolist() == ["ACME-001", make_id("003", 7), lowered]
    assert set(q["reason"]) == {ingest_module.CRM_ID_REASON} and set(q["field"]) == {"crm_account_id"}
    assert "3 value(s) cleared" in report.describe()

    # valid 15- and 18-character ids stay; another match field is not checked
    ingest(engine, _mapping_file(tmp_path, _base(tmp_path)), RUN_DATE)
    assert sorted(read_sql(engine, "SELECT crm_account_id FROM accounts")["crm_account_id"]) == sorted([ID1, ID2[:15], ID3])
    ingest(engine, _mapping_file(tmp_path, _base(tmp_path, accounts=accounts)), RUN_DATE, crm_id_field="External_Id__c")
    assert "ACME-001" in set(read_sql(engine, "SELECT crm_account_id FROM accounts")["crm_account_id"])


# ============================================================================ checks registered by other stages


def test_registered_table_checks_see_the_good_rows_and_add_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "_TABLE_CHECKS", {})  # isolate the registry from other tests
    seen: list[pd.DataFrame] = []

    def many_high_tickets(frame: pd.DataFrame) -> list[str]:
        seen.append(frame)
        return [f"{int((frame['priority'] == 'high').sum())} high-priority ticket(s)"]

    def broken(frame: pd.DataFrame) -> list[str]:
        raise RuntimeError("boom")

    register_table_check("tickets", many_high_tickets)
    register_table_check("tickets", many_high_tickets)  # registering again replaces
    register_table_check("tickets", broken)
    tickets = TICKETS + "T3,A9,2025-01-12,,high\n"  # unknown account: quarantined, not shown to the check
    report = validate(_engine(tmp_path), _mapping_file(tmp_path, {**_base(tmp_path, tickets=tickets), "max_bad_share": 0.5}), RUN_DATE)
    assert report.warnings == ["tables.tickets: 1 high-priority ticket(s)",
                               "tables.tickets: check test_registered_table_checks_see_the_good_rows_and_add_warnings.<locals>.broken "
                               "could not run: RuntimeError: boom"]
    assert len(seen) == 1 and seen[0]["ticket_id"].tolist() == ["T1", "T2"]
    assert str(seen[0]["opened_at"].dtype) == "datetime64[ns]"
    with pytest.raises(KeyError, match="not a canonical table"):
        register_table_check("ticket", many_high_tickets)


# ============================================================================ manifest


def test_manifest_defaults_without_an_ingest_and_ignores_unfinished_runs(tmp_path: Path, small_book: dict) -> None:
    from churnflow.demo_data import write_book

    engine = _engine(tmp_path)
    write_book(engine, {k: v for k, v in small_book.items() if k in ("accounts", "tickets")})
    assert read_manifest(engine) == DataManifest()
    assert available_tables(engine) == frozenset({"accounts", "tickets"})

    mapping = _base(tmp_path, surveys="absent")
    first = ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    bad = _base(tmp_path, tickets=TICKETS + "T9,A9,2025-01-01,,low\n")  # 1 of 3 bad: over the 5% limit
    bad["usage_event_types"] = ["x"]
    with pytest.raises(ContractError):
        ingest(engine, _mapping_file(tmp_path, bad), RUN_DATE)
    runs = read_sql(engine, "SELECT run_id, finished_at, config FROM ingest_manifest").set_index("run_id")
    assert len(runs) == 2 and pd.notna(runs.loc[first.run_id, "finished_at"])
    failed = runs.drop(index=first.run_id).iloc[0]
    assert pd.isna(failed["finished_at"]) and json.loads(failed["config"])["usage_event_types"] == ["x"]
    manifest = read_manifest(engine)  # the failed run loaded nothing: the first run's declarations hold
    assert manifest.run_id == first.run_id and manifest.absent == frozenset({"surveys"}) and manifest.usage_event_types is None


# ============================================================================ read-only validation


@pytest.mark.parametrize(("sql", "needle"), [
    ("DELETE FROM crm_customers RETURNING cust_no AS account_id", "starts with 'DELETE'"),
    ("WITH gone AS (DELETE FROM crm_customers RETURNING *) SELECT cust_no AS account_id FROM gone", "contains DELETE"),
    ("SELECT * FROM crm_customers; DROP TABLE crm_customers", "more than one statement"),
    ("SELECT cust_no INTO copy_of_customers FROM crm_customers", "contains INTO"),
    ("UPDATE crm_customers SET company = 'x' RETURNING *", "starts with 'UPDATE'"),
    ("INSERT INTO crm_customers VALUES ('C9', 'x', 'smb', '2024-01-01') RETURNING *", "starts with 'INSERT'"),
])
def test_validate_refuses_queries_that_write_and_removes_nothing(tmp_path: Path, sql: str, needle: str) -> None:
    engine = _engine(tmp_path)
    replace_rows(engine, "crm_customers", pd.DataFrame({"cust_no": ["C1", "C2"], "company": ["Acme", "Beta"], "tier": ["smb", "smb"],
                                                        "since": ["2024-01-05", "2024-02-05"]}), replace_all=True)
    mapping = load_mapping({"tables": {"accounts": {"query": sql}}})
    for run in (validate, ingest):
        with pytest.raises(QueryError) as info:
            run(engine, mapping, RUN_DATE)
        assert "tables.accounts.query: only one read-only SELECT" in str(info.value) and needle in str(info.value)
    assert read_sql(engine, "SELECT cust_no FROM crm_customers ORDER BY 1")["cust_no"].tolist() == ["C1", "C2"]
    assert not table_exists(engine, "copy_of_customers")


def test_read_only_queries_pass_the_check() -> None:
    for sql in ("SELECT 1", "select a FROM t;", "WITH x AS (SELECT 1 AS a) SELECT * FROM x", "SELECT \"update\", 'delete; now' FROM t -- insert",
                "(SELECT 1)", "SELECT last_update FROM t /* drop */"):
        assert check_read_only_query(sql) is None, sql


# ============================================================================ the CLI shows warnings and notes


def test_cli_validate_prints_warnings_and_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from churnflow.cli import app

    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    tickets = "no,acct,opened,closedat,prio\nT1,A1,2025-01-10,2025-01-11,normal\n"
    mapping = _base(tmp_path, tickets=tickets)
    mapping["tables"]["tickets"]["columns"] = dict(TICKET_COLUMNS)
    result = CliRunner().invoke(app, ["validate", "--mapping", str(_mapping_file(tmp_path, mapping)), "--run-date", "2026-11-01"])
    assert result.exit_code == 0, result.output
    assert "WARNING tickets.csv: column 'closedat' looks like canonical 'closed_at' but is not mapped" in " ".join(result.output.split())
    _dates_mapping(tmp_path, ["03/11/2024", "04/11/2024"])
    result = CliRunner().invoke(app, ["ingest", "--mapping", str(tmp_path / "sources.yaml"), "--run-date", "2026-11-01"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "has dates that read both as DD/MM and MM/DD" in " ".join(result.output.split())


# ============================================================================ the same writes on PostgreSQL


def _absent_attributes_roundtrip(engine: sa.Engine, tmp_path: Path) -> None:
    mapping = _base(tmp_path, surveys={"file": "surveys.csv", "columns": SURVEY_COLUMNS})
    mapping["attributes"] = {"age_years": {"table": "accounts", "column": "Age", "kind": "number"}}
    ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    ages = read_sql(engine, "SELECT account_id, value_number FROM account_attributes ORDER BY account_id")
    assert ages.values.tolist() == [["A1", 34.0], ["A2", 51.0], ["A3", 29.0]]
    assert available_tables(engine) == frozenset({"accounts", "tickets", "surveys"})

    mapping["tables"]["surveys"] = "absent"
    mapping.pop("attributes")
    report = ingest(engine, _mapping_file(tmp_path, mapping), RUN_DATE)
    assert not table_exists(engine, "surveys") and _count(engine, "account_attributes") == 0
    assert read_manifest(engine) == DataManifest(absent=frozenset({"surveys"}))
    assert read_manifest(engine).run_id == report.run_id
    assert available_tables(engine) == frozenset({"accounts", "tickets"})


def test_absent_tables_attributes_and_manifest_on_duckdb(tmp_path: Path) -> None:
    _absent_attributes_roundtrip(_engine(tmp_path), tmp_path)


@pytest.mark.postgres
def test_absent_tables_attributes_and_manifest_on_postgresql(pg_engine: sa.Engine, tmp_path: Path) -> None:
    _absent_attributes_roundtrip(pg_engine, tmp_path)


def test_every_mapping_key_is_described_in_the_generated_page() -> None:
    from ingest.mapping import AttributeEntry, ChurnSection, MappingFile, Options, StagingSource, TableSource, mapping_markdown

    page = mapping_markdown()
    for model in (MappingFile, TableSource, StagingSource, Options, ChurnSection, AttributeEntry):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in page, f"{model.__name__}.{name} is missing from docs/mapping.md"
    assert (Path(__file__).parents[2] / "docs" / "mapping.md").read_text(encoding="utf-8") == page

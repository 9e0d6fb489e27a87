"""Bring your own data: mapping files, coercion, quarantine, structural failures, real warehouses."""

from __future__ import annotations

import importlib.util
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from ingest.load import coerce_values, ingest, validate
from ingest.mapping import ContractError, MappingError, Options, SourceError, load_mapping
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, replace_rows, table_exists

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "foreign_export"
RUN_DATE = date(2026, 11, 1)


def _load_make_export():
    spec = importlib.util.spec_from_file_location("make_export", EXAMPLE / "make_export.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def foreign_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The example export generated into a temp dir, with sources.yaml copied next to it."""
    out = tmp_path_factory.mktemp("foreign_export")
    bad = _load_make_export().write_export(out)  # also copies sources.yaml next to the CSVs
    assert (out / "sources.yaml").read_text() == (EXAMPLE / "sources.yaml").read_text()
    return out, bad


def _count(engine: sa.Engine, table: str) -> int:
    return int(read_sql(engine, f'SELECT COUNT(*) AS n FROM "{table}"')["n"].iloc[0])


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ============================================================================ the example, end to end


@pytest.mark.slow
def test_foreign_export_validates_ingests_and_scores(foreign_export: tuple[Path, dict], tmp_path: Path) -> None:
    from features.build import build_features
    from models.score import score_accounts
    from models.train import train

    export, bad = foreign_export
    url = f"duckdb:///{tmp_path}/w.duckdb"
    engine = get_engine(url)

    # validate: the full check, nothing loaded (only staging tables are written)
    checked = validate(engine, export / "sources.yaml", RUN_DATE)
    assert checked.ok and checked.mode == "validate"
    for name in ("accounts", "subscriptions", "usage", "tickets", "surveys", "quarantine"):
        assert not table_exists(engine, name)
    assert table_exists(engine, "staging_usage_events") and table_exists(engine, "staging_subscriptions")

    report = ingest(engine, export / "sources.yaml", RUN_DATE)
    assert report.ok
    by_table = {t.table: t for t in report.tables}
    expected_bad = {"accounts": "customers.csv", "subscriptions": "contracts.csv", "usage": "usage_by_subscription.csv",
                    "tickets": "tickets.csv", "surveys": "surveys.csv"}
    for table, file in expected_bad.items():
        t = by_table[table]
        assert t.rows_read == t.rows_loaded + t.rows_quarantined  # counts balance
        assert t.rows_quarantined == len(bad[file])
        assert _count(engine, table) == t.rows_loaded
        assert by_table[table].rows_loaded == checked.tables[[x.table for x in checked.tables].index(table)].rows_loaded
    assert by_table["usage"].rows_loaded > 400_000

    # every deliberately bad row is quarantined at its CSV row, with the field and reason
    q = read_sql(engine, "SELECT * FROM quarantine")
    assert len(q) == sum(len(v) for v in bad.values())
    for file, rows in bad.items():
        for row, field, reason in rows:
            hit = q[(q["source"] == file) & (q["source_row"] == row) & (q["field"] == field)]
            assert len(hit) == 1, (file, row, field, q[q["source"] == file])
            assert reason in hit["reason"].iloc[0]
    assert "ACC999999" in set(q["value"])  # the unknown account, as text

    # re-running the same ingest replaces, never duplicates
    before = {t: _count(engine, t) for t in expected_bad} | {"quarantine": len(q)}
    ingest(engine, export / "sources.yaml", RUN_DATE)
    assert {t: _count(engine, t) for t in before} == before

    # the canonical tables feed the pipeline unchanged
    features = build_features(engine, date(2026, 10, 1))
    assert len(features) > 200
    settings = Settings(home=tmp_path / "home", warehouse_url=url)
    result = train(engine, settings)
    assert result is not None
    scores = score_accounts(engine, settings, RUN_DATE)
    assert len(scores) > 200
    assert scores["p_churn"].between(0, 1).all()
    assert set(scores["account_id"]) <= set(read_sql(engine, "SELECT account_id FROM accounts")["account_id"])


# ============================================================================ bad rows and the threshold


ACCOUNTS_CSV = """id,company,tier,since
A1,Acme,smb,2024-01-05
A2,Beta,enterprise,05/02/2024
A3,Gamma,smb,2024-03-01
"""


def _tickets_mapping(tmp_path: Path, tickets_csv: str, **extra: object) -> Path:
    _write(tmp_path / "accounts.csv", ACCOUNTS_CSV)
    _write(tmp_path / "tickets.csv", tickets_csv)
    mapping = {
        "options": {"dayfirst": False},  # ACCOUNTS_CSV's 05/02/2024 reads both ways
        "tables": {
            "accounts": {"file": "accounts.csv", "columns": {"account_id": "id", "name": "company", "segment": "tier", "created_at": "since"}},
            "tickets": {
                "file": "tickets.csv",
                "columns": {"ticket_id": "no", "account_id": "acct", "opened_at": "opened", "closed_at": "closed",
                            "priority": "prio", "csat": "csat", "reopened": "reopened"},
            },
        },
        **extra,
    }
    import yaml

    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return path


GOOD_TICKETS = [f"T{i},A{1 + i % 3},2025-01-{10 + i:02d},2025-01-{11 + i:02d},normal,4,no" for i in range(1, 18)]
BAD_TICKETS = [
    "T1,A1,2025-02-01,2025-02-02,high,5,yes",  # row 18: duplicate ticket_id (T1 is row 1)
    "T90,A9,2025-02-01,,low,,no",  # row 19: unknown account
    "T91,A1,2025-02-01,2025-01-01,urgent,3,no",  # row 20: closed before opened
    "T92,A2,2025-02-01,,normal,9,maybe",  # row 21: csat out of range + reopened not a boolean
]


def test_bad_rows_are_quarantined_and_good_rows_load(tmp_path: Path) -> None:
    csv = "no,acct,opened,closed,prio,csat,reopened\n" + "\n".join(GOOD_TICKETS + BAD_TICKETS) + "\n"
    mapping = _tickets_mapping(tmp_path, csv, max_bad_share=0.25)
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    report = ingest(engine, mapping, RUN_DATE)
    t = {x.table: x for x in report.tables}["tickets"]
    assert (t.rows_read, t.rows_loaded, t.rows_quarantined) == (21, 17, 4)
    assert t.rows_read == t.rows_loaded + t.rows_quarantined
    loaded = read_sql(engine, "SELECT * FROM tickets")
    assert sorted(loaded["ticket_id"]) == sorted(f"T{i}" for i in range(1, 18))
    assert loaded.loc[loaded["ticket_id"] == "T1", "priority"].iloc[0] == "normal"  # the first T1 was kept

    q = read_sql(engine, "SELECT * FROM quarantine WHERE table_name = 'tickets' ORDER BY source_row, field")
    got = [(int(r.source_row), r.field, r.reason, r.value) for r in q.itertuples()]
    assert got == [
        (18, "ticket_id", "duplicate ticket_id (first occurrence kept)", "T1"),
        (19, "account_id", "unknown account_id", "A9"),
        (20, "closed_at", "closed_at before opened_at", "2025-01-01"),
        (21, "csat", "csat out of range 1-5", "9"),
        (21, "reopened", "not a boolean (expected true/false, yes/no, y/n, 1/0)", "maybe"),
    ]
    assert set(q["source"]) == {"tickets.csv"}
    assert set(q["source_key"]) == {"T1", "T90", "T91", "T92"}
    assert q["run_id"].nunique() == 1 and q["run_id"].iloc[0] == report.run_id
    assert "unknown account_id (1)" in report.describe()
    import json

    assert json.loads(json.dumps(report.to_dict()))["tables"][1]["quarantined"] == 4
    assert all(tuple(row) == report.COLUMNS for row in report.rows())


def test_over_the_threshold_fails_naming_table_count_and_reasons(tmp_path: Path) -> None:
    csv = "no,acct,opened,closed,prio,csat,reopened\n" + "\n".join(GOOD_TICKETS + BAD_TICKETS) + "\n"
    mapping = _tickets_mapping(tmp_path, csv)  # default limit: 5%
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    with pytest.raises(ContractError) as info:
        ingest(engine, mapping, RUN_DATE)
    message = str(info.value)
    assert "table 'tickets'" in message and "4 of 21 rows" in message and "5.0%" in message
    assert "unknown account_id (1)" in message and "csat out of range 1-5 (1)" in message
    # nothing was loaded (not even the clean accounts), but the rejects are explained
    assert not table_exists(engine, "tickets") and not table_exists(engine, "accounts")
    assert _count(engine, "quarantine") == 5
    # the same data passes with a higher limit given as a parameter
    assert ingest(engine, mapping, RUN_DATE, max_bad_share=0.5).ok
    # validate reports the failure instead of raising
    report = validate(engine, mapping, RUN_DATE)
    assert not report.ok and {t.table: t.status for t in report.tables}["tickets"] == "failed"


def test_validate_writes_nothing_to_canonical_tables_or_quarantine(tmp_path: Path) -> None:
    csv = "no,acct,opened,closed,prio,csat,reopened\n" + "\n".join(GOOD_TICKETS + BAD_TICKETS) + "\n"
    mapping = _tickets_mapping(tmp_path, csv, max_bad_share=0.25)
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    replace_rows(engine, "tickets", pd.DataFrame({"ticket_id": ["OLD"], "account_id": ["A1"], "opened_at": [pd.Timestamp("2025-01-01")],
                                                  "priority": ["low"], "reopened": [False]}), replace_all=True)
    report = validate(engine, mapping, RUN_DATE)
    assert report.ok and len(report.quarantine) == 5
    t = {x.table: x for x in report.tables}["tickets"]
    assert (t.rows_read, t.rows_loaded, t.rows_quarantined, t.status) == (21, 17, 4, "valid")
    assert read_sql(engine, "SELECT ticket_id FROM tickets")["ticket_id"].tolist() == ["OLD"]
    assert not table_exists(engine, "accounts") and not table_exists(engine, "quarantine")


def test_rerun_replaces_and_future_rows_are_rejected(tmp_path: Path) -> None:
    csv = "no,acct,opened,closed,prio,csat,reopened\n" + "\n".join(GOOD_TICKETS) + "\nT99,A1,2026-11-02 09:00,,low,,no\n"
    mapping = _tickets_mapping(tmp_path, csv, max_bad_share=0.1)
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    for _ in range(2):
        report = ingest(engine, mapping, RUN_DATE)
        assert _count(engine, "tickets") == 17 and _count(engine, "accounts") == 3 and _count(engine, "quarantine") == 1
    q = read_sql(engine, "SELECT * FROM quarantine")
    assert q["reason"].iloc[0] == "opened_at after the run date 2026-11-01" and q["run_id"].iloc[0] == report.run_id
    # a later run date accepts the row
    ingest(engine, mapping, date(2026, 11, 2))
    assert _count(engine, "tickets") == 18 and _count(engine, "quarantine") == 0


# ============================================================================ structural failures fail fast


def _accounts_only(tmp_path: Path, **options: object) -> dict:
    return {
        "options": options,
        "tables": {"accounts": {"file": "accounts.csv", "columns": {"account_id": "id", "name": "company", "segment": "tier", "created_at": "since"}}},
    }


@pytest.mark.parametrize(
    ("content", "encoding", "options", "needles"),
    [
        ("id,company,since\nA1,Acme,2024-01-01\n", "utf-8", {}, ["missing column(s) ['tier']", "found ['id', 'company', 'since']"]),
        ("", "utf-8", {}, ["the file is empty", "'id', 'company', 'tier', 'since'"]),
        ("\n  \n", "utf-8", {}, ["the file is empty"]),
        ("id,company,tier,since\n", "utf-8", {}, ["no data rows", "refusing to replace 'accounts' with an empty table"]),
        ("id,company,tier,since\nA1,Acme,smb,2024-01-01\nA2,Caf\u00e9 M\u00fcller,smb,2024-01-02\n", "latin-1", {},
         ["not valid utf-8", "byte 0xe9", "offset 51", "line 3, column 7", "options.encoding"]),
        ("id;company;tier;since\nA1;Acme;smb;2024-01-01\n", "utf-8", {}, ["whole header landed in one column", "expected delimiter ','", "';'-delimited"]),
    ],
    ids=["missing-column", "empty", "blank", "header-only", "latin-1", "semicolon"],
)
def test_structural_problems_fail_fast_naming_the_file(tmp_path: Path, content: str, encoding: str, options: dict, needles: list[str]) -> None:
    _write(tmp_path / "accounts.csv", content, encoding)
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    for run in (validate, ingest):
        with pytest.raises(SourceError) as info:
            run(engine, load_mapping(_accounts_only(tmp_path, **options), base_dir=tmp_path), RUN_DATE)
        message = str(info.value)
        assert str(tmp_path / "accounts.csv") in message
        for needle in needles:
            assert needle in message, message
    assert sa.inspect(engine).get_table_names() == []  # failed before writing anything


def test_encoding_and_delimiter_options_fix_those_files(tmp_path: Path) -> None:
    _write(tmp_path / "accounts.csv", "id;company;tier;since\nA1;Caf\u00e9 M\u00fcller;smb;03/11/2025\n", "latin-1")
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    mapping = load_mapping(_accounts_only(tmp_path, delimiter=";", encoding="latin-1", dayfirst=True), base_dir=tmp_path)
    assert ingest(engine, mapping, RUN_DATE).ok
    row = read_sql(engine, "SELECT * FROM accounts").iloc[0]
    assert row["name"] == "Caf\u00e9 M\u00fcller" and pd.Timestamp(row["created_at"]) == pd.Timestamp("2025-11-03")


def test_mapping_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    cases = {
        "tables:\n  accounts:\n    file: a.csv\n    colums: {account_id: id}\n": "tables.accounts.colums",
        "tables:\n  accounts:\n    file: a.csv\n    columns: {acount_id: id}\n": "tables.accounts.columns.acount_id",
        "tables:\n  customers:\n    file: a.csv\n": "tables.customers: not a canonical table",
        "tables:\n  accounts:\n    file: a.csv\n    query: SELECT 1\n": "give exactly one of 'table', 'query' or 'file'",
        "tables:\n  accounts:\n    table: 'x; DROP TABLE y'\n": "'table' must be a table name",
        "options: {delimiter: ';;'}\ntables:\n  accounts:\n    file: a.csv\n": "options.delimiter",
        "tables:\n  accounts:\n    file: a.csv\n    options: {dayfirst: maybe}\n": "tables.accounts.options.dayfirst",
        "tables: [1, 2\n": "not valid YAML",
    }
    for text, needle in cases.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(MappingError) as info:
            load_mapping(path)
        assert str(path) in str(info.value) and needle in str(info.value), str(info.value)
    _write(tmp_path / "a.csv", "id,company,tier,since\nA1,Acme,smb,2024-01-01\n")
    path.write_text("tables:\n  accounts:\n    file: nope*.csv\n", encoding="utf-8")
    with pytest.raises(SourceError, match="no file matches 'nope\\*.csv'"):
        validate(get_engine(f"duckdb:///{tmp_path}/w.duckdb"), path, RUN_DATE)


# ============================================================================ coercion


def _parse(values: list, kind: str, **options: object) -> tuple[list, list[bool]]:
    parsed, failed = coerce_values(pd.Series(values, dtype=object), kind, Options(**options))
    return [None if pd.isna(v) else v for v in parsed], [bool(f) for f in failed]


def test_dates_and_timestamps_in_common_formats() -> None:
    ts = pd.Timestamp
    values, failed = _parse(
        ["2026-11-03", "2026-11-03T10:15:00Z", "2026-11-03 12:15:00+02:00", "03/11/2026", "03/11/2026 14:05",
         "1762164000", "", None, "31/02/2026", "soon"],
        "timestamp", dayfirst=True,
    )
    assert values == [ts("2026-11-03"), ts("2026-11-03 10:15"), ts("2026-11-03 10:15"), ts("2026-11-03"), ts("2026-11-03 14:05"),
                      ts("2025-11-03 10:00"), None, None, None, None]
    assert failed == [False] * 8 + [True, True]
    assert _parse(["03/11/2026", "11/30/2026 08:00:00", "30/11/2026"], "date", dayfirst=False)[0] == [ts("2026-03-11"), ts("2026-11-30"), None]
    assert _parse(["03.11.2026 10:00"], "timestamp", date_format="%d.%m.%Y %H:%M")[0] == [ts("2026-11-03 10:00")]
    assert _parse([1762164000], "timestamp")[0] == [ts("2025-11-03 10:00")]


def test_booleans() -> None:
    values, failed = _parse(["true", "False", "TRUE", "yes", "No", "Y", "n", "1", "0", "", "perhaps"], "bool")
    assert values == [True, False, True, True, False, True, False, True, False, None, None]
    assert failed == [False] * 10 + [True]
    assert _parse(["ja", "nein"], "bool", true_values=["ja"], false_values=["nein"])[0] == [True, False]


def test_numbers_with_thousands_separators_and_decimal_comma() -> None:
    values, failed = _parse(["1,234.50", "12", " 7 ", "-1,200.00", "$1,000", "1 234.5", "1e3", "1,5", "12,34", "x", ""], "float")
    assert values == [1234.5, 12.0, 7.0, -1200.0, 1000.0, 1234.5, 1000.0, None, None, None, None]
    assert failed == [False] * 7 + [True, True, True, False]
    values, failed = _parse(["1.234,50", "1,5", "1 234,5", "1.5"], "float", decimal_comma=True)
    assert values == [1234.5, 1.5, 1234.5, None] and failed == [False, False, False, True]
    values, failed = _parse(["3", "3.0", "1,000", "3.5"], "int")
    assert values == [3, 3, 1000, None] and failed == [False, False, False, True]


# ============================================================================ warehouse sources


def _query_source_roundtrip(engine: sa.Engine) -> None:
    """Foreign tables already in the warehouse: accounts via `table:`, usage via a `query:` join."""
    replace_rows(engine, "crm_customers", pd.DataFrame({
        "cust_no": ["C1", "C2"], "company": ["Acme", "Beta"], "tier": ["smb", "enterprise"],
        "since": ["2024-01-05", "2024-02-05"],
    }), replace_all=True)
    replace_rows(engine, "billing_subs", pd.DataFrame({"sub_ref": ["S1", "S2", "S3"], "cust_no": ["C1", "C2", "C2"]}), replace_all=True)
    replace_rows(engine, "app_events", pd.DataFrame({
        "sub_ref": ["S1", "S2", "S3", "S9", "S1"],
        "ts": pd.to_datetime(["2026-10-01 10:00", "2026-10-02 11:00", "2026-10-03 12:00", "2026-10-04 13:00", "2026-12-01 00:00"]),
        "event": ["login", "report", "export", "login", "login"],
        "n": [1.0, 2.0, 3.0, 4.0, 5.0],
        "who": ["u1", "u2", "u3", "u4", "u1"],
    }), replace_all=True)
    mapping = load_mapping({
        "tables": {
            "accounts": {"table": "crm_customers", "columns": {"account_id": "cust_no", "name": "company", "segment": "tier", "created_at": "since"}},
            "usage": {
                "query": (
                    "SELECT s.cust_no AS account_id, e.ts AS occurred_at, e.event AS feature, e.n AS quantity, e.who AS user_id "
                    "FROM app_events e LEFT JOIN billing_subs s ON s.sub_ref = e.sub_ref "
                    "WHERE e.ts >= :run_date - INTERVAL '365 days' ORDER BY e.ts"
                ),
            },
        },
        "max_bad_share": 0.5,
    })
    report = ingest(engine, mapping, RUN_DATE)
    assert report.ok
    usage = read_sql(engine, "SELECT * FROM usage ORDER BY occurred_at")
    assert usage["account_id"].tolist() == ["C1", "C2", "C2"]
    assert usage["quantity"].tolist() == [1.0, 2.0, 3.0] and usage["errors"].tolist() == [0, 0, 0]  # schema default
    q = read_sql(engine, "SELECT * FROM quarantine ORDER BY source_row")
    assert q[["source", "source_row", "field", "reason"]].values.tolist() == [
        ["query", 4, "account_id", "missing required account_id"],
        ["query", 5, "occurred_at", "occurred_at after the run date 2026-11-01"],
    ]
    assert {t.table: (t.rows_read, t.rows_loaded, t.rows_quarantined) for t in report.tables} == {"accounts": (2, 2, 0), "usage": (5, 3, 2)}
    # usage alone: accounts already in the warehouse are the known ones
    only_usage = load_mapping({"tables": {"usage": mapping.model.tables["usage"].model_dump()}, "max_bad_share": 0.5})
    assert ingest(engine, only_usage, RUN_DATE).tables[0].rows_loaded == 3


def test_query_source_on_duckdb(tmp_path: Path) -> None:
    _query_source_roundtrip(get_engine(f"duckdb:///{tmp_path}/w.duckdb"))


@pytest.mark.postgres
def test_query_source_on_postgresql(pg_engine: sa.Engine) -> None:
    _query_source_roundtrip(pg_engine)


def test_globbed_csv_parts_parquet_constants_and_defaults(tmp_path: Path) -> None:
    _write(tmp_path / "accounts_1.csv", "id,company,country\nA1,Acme,GB\nA2,Beta,\n")
    _write(tmp_path / "accounts_2.csv", "id,company,country\nA3,Gamma,DE\nA3,Gamma again,DE\n")
    pd.DataFrame({
        "ticket_id": ["T1", "T2", "T3"], "account_id": ["A1", "A3", "A4"],
        "opened_at": pd.to_datetime(["2026-01-01", "2026-02-01", "2026-03-01"]), "priority": ["low", "High", "normal"],
        "reopened": [True, False, None], "csat": pd.array([5, None, 2], dtype="Int64"),
    }).to_parquet(tmp_path / "tickets.parquet")
    mapping = load_mapping({
        "max_bad_share": 0.5,
        "tables": {
            "accounts": {"file": "accounts_*.csv", "columns": {"account_id": "id", "name": "company"},
                         "constants": {"segment": "smb", "created_at": "2020-01-01"}, "defaults": {"country": "US"}},
            "tickets": {"file": ["tickets.parquet"]},
        },
    }, base_dir=tmp_path)
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    report = ingest(engine, mapping, RUN_DATE)
    assert [(t.table, t.source, t.rows_read, t.rows_loaded) for t in report.tables] == [
        ("accounts", "accounts_1.csv, accounts_2.csv", 4, 3), ("tickets", "tickets.parquet", 3, 2)]
    accounts = read_sql(engine, "SELECT * FROM accounts ORDER BY account_id")
    assert accounts["country"].tolist() == ["GB", "US", "DE"] and set(accounts["segment"]) == {"smb"}
    tickets = read_sql(engine, "SELECT * FROM tickets ORDER BY ticket_id")
    assert tickets["priority"].tolist() == ["low", "high"] and tickets["reopened"].tolist() == [True, False]
    q = read_sql(engine, "SELECT source, source_row, field, reason FROM quarantine ORDER BY table_name")
    assert q.values.tolist() == [
        ["accounts_2.csv", 2, "account_id", "duplicate account_id (first occurrence kept)"],
        ["tickets.parquet", 3, "account_id", "unknown account_id"],
    ]


# ============================================================================ usage loads by day


def _usage_mapping(tmp_path: Path, rows: list[str]) -> Path:
    import yaml

    _write(tmp_path / "accounts.csv", ACCOUNTS_CSV)
    _write(tmp_path / "usage.csv", "acct,at,what,n,user\n" + "\n".join(rows) + "\n")
    mapping = {"options": {"dayfirst": False}, "tables": {
        "accounts": {"file": "accounts.csv", "columns": {"account_id": "id", "name": "company", "segment": "tier", "created_at": "since"}},
        "usage": {"file": "usage.csv", "columns": {"account_id": "acct", "occurred_at": "at", "feature": "what", "quantity": "n", "user_id": "user"}},
    }}
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return path


def test_a_usage_reload_rewrites_only_the_days_that_changed(tmp_path: Path) -> None:
    from features.rollups import refresh_usage_rollups

    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    days = [f"2025-03-{d:02d}" for d in range(1, 21)]
    # "at" is an SQL keyword: the staging table must quote it
    rows = [f"A{1 + i % 3},{day} 10:{i:02d}:00,reports,{i + 1},u{i}" for day in days for i in range(4)]
    mapping = _usage_mapping(tmp_path, rows)
    ingest(engine, mapping, RUN_DATE)
    assert refresh_usage_rollups(engine).full

    changed = rows.copy()
    changed[4 * 5 + 1] = changed[4 * 5 + 1].replace(",reports,", ",exports,")  # one row of 2025-03-06 changes
    changed = [r for r in changed if not r.split(",")[1].startswith("2025-03-10")]  # 2025-03-10 disappears
    changed += ["A2,2025-03-21 09:00:00,reports,5,u9", "A3,2025-03-21 11:00:00,exports,2,u8"]  # a new day
    _usage_mapping(tmp_path, changed)
    report = ingest(engine, mapping, RUN_DATE)
    assert report.tables[-1].rows_loaded == len(changed)

    usage = read_sql(engine, "SELECT account_id, occurred_at, feature, quantity, user_id FROM usage ORDER BY occurred_at, user_id")
    expected = pd.DataFrame([r.split(",") for r in changed], columns=["account_id", "occurred_at", "feature", "quantity", "user_id"])
    expected = expected.assign(occurred_at=pd.to_datetime(expected["occurred_at"]), quantity=expected["quantity"].astype(float))
    expected = expected.sort_values(["occurred_at", "user_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(usage, expected, check_dtype=False)

    rolled = refresh_usage_rollups(engine, recheck_days=1)
    assert not rolled.full
    # 03-06 changed, 03-10 gone, 03-21 new; 03-20 is the recheck of the last rolled day
    assert rolled.days_rolled == 4
    assert rolled.source_rows == 4 + 0 + 2 + 4
    hashes = read_sql(engine, "SELECT activity_date FROM usage_ingest_days")
    assert len(hashes) == 20  # 20 days: 19 of March 1-20 plus the 21st

    again = refresh_usage_rollups(engine, recheck_days=1)
    ingest(engine, mapping, RUN_DATE)  # the same extract again: nothing to rewrite, nothing to roll
    assert refresh_usage_rollups(engine, recheck_days=1).days_rolled == again.days_rolled == 1

"""The local server, driven through the real simple-salesforce client over HTTPS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

from crm_sync.client import connect_local, local_session
from churnflow.salesforce_ids import id_suffix, make_id, to_id18
from crm_sync.local.server import LocalSalesforce
from crm_sync.soql import soql_quote


def _error(exc: pytest.ExceptionInfo) -> dict:
    content = exc.value.content
    assert isinstance(content, list) and set(content[0]) >= {"message", "errorCode"}
    return content[0]


def test_login_via_domain_trick(server: LocalSalesforce, sf: Salesforce) -> None:
    assert sf.sf_instance == f"127.0.0.1:{server.port}"
    assert sf.base_url == f"https://127.0.0.1:{server.port}/services/data/v59.0/"
    assert sf.query("SELECT Id FROM User WHERE Username = " + soql_quote(server.username))["totalSize"] == 1
    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        Salesforce(username=server.username, password="wrong", security_token=server.security_token,
                   domain=server.domain, session=local_session(server.cert_path))
    assert exc.value.code == "INVALID_LOGIN"


def test_tls_is_verified_against_the_cached_cert(server: LocalSalesforce, tmp_path: Path) -> None:
    other = LocalSalesforce(cert_dir=tmp_path)  # a different self-signed certificate
    session = local_session(other.cert_path)
    with pytest.raises(requests.exceptions.SSLError):
        session.get(server.base_url + "/services/data")
    assert local_session(server.cert_path).get(server.base_url + "/services/data").status_code == 200
    # the certificate is cached: a second server in the same dir reuses it
    assert LocalSalesforce(cert_dir=tmp_path).cert_path.read_bytes() == other.cert_path.read_bytes()


def test_jwt_bearer_login(server: LocalSalesforce, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "jwt.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    sf = Salesforce(username=server.username, consumer_key=server.consumer_key, privatekey_file=str(key_file),
                    domain=server.domain, session=local_session(server.cert_path))
    assert sf.sf_instance == f"127.0.0.1:{server.port}"
    assert sf.limits()["DailyApiRequests"]["Max"] > 0


def test_ids_are_salesforce_shaped() -> None:
    rid = make_id("001", 123456)
    assert len(rid) == 18 and rid.startswith("001")
    assert to_id18(rid[:15]) == rid
    assert to_id18(rid) == rid
    assert to_id18(rid[:15] + "AAA") is None or id_suffix(rid[:15]) == "AAA"
    assert to_id18("not-an-id") is None
    # the checksum encodes upper-case positions, 5 characters per suffix letter
    assert id_suffix("001000000000000") == "AAA"
    assert id_suffix("A0000B0000C0000") == "BBB"
    assert to_id18("0015000000Gv7qJ") == "0015000000Gv7qJAAR"  # a real Salesforce id pair


def test_query_pagination(crm_dir: Path, uid: str) -> None:
    # A server of its own: the shared one may still be finishing a slow request that an
    # earlier fault test gave up on, which would blur the call count asserted here.
    server = LocalSalesforce(cert_dir=crm_dir, page_size=50)
    server.start()
    try:
        _check_pagination(server, connect_local(server, timeout=(5, 10)), uid)
    finally:
        server.stop()


def _check_pagination(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    server.seed("Account", [{"Name": f"{uid} page {i:03d}"} for i in range(120)])
    before = server.api_calls["query"]
    first = sf.query(f"SELECT Id, Name FROM Account WHERE Name LIKE '{uid} page%' ORDER BY Name")
    assert first["totalSize"] == 120 and len(first["records"]) == 50 and not first["done"]
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
    everything = sf.query_all(f"SELECT Id, Name FROM Account WHERE Name LIKE '{uid} page%' ORDER BY Name DESC")
    names = [r["Name"] for r in everything["records"]]
    assert names == sorted(names, reverse=True) and len(set(names)) == 120
    assert server.api_calls["query"] - before == 1 + 3


def test_soql_where_clauses(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    ids = server.seed("Account", [
        {"Name": f"{uid} Alpha", "Churnflow_Health_Score__c": 10, "Churnflow_Health_Band__c": "Red"},
        {"Name": f"{uid} Beta", "Churnflow_Health_Score__c": 50, "Churnflow_Health_Band__c": "Yellow"},
        {"Name": f"{uid} Gamma", "Churnflow_Health_Score__c": 90, "Churnflow_Health_Band__c": "Green"},
        {"Name": f"{uid} O'Brien \\ Sons"},
    ])

    def names(where: str, extra: str = "") -> list[str]:
        soql = f"SELECT Name FROM Account WHERE Name LIKE '{uid}%' AND ({where}) ORDER BY Name {extra}"
        return [r["Name"].removeprefix(uid + " ") for r in sf.query_all(soql)["records"]]

    assert names("Churnflow_Health_Score__c > 20") == ["Beta", "Gamma"]
    assert names("Churnflow_Health_Score__c <= 50") == ["Alpha", "Beta"]
    assert names("Churnflow_Health_Score__c = null") == ["O'Brien \\ Sons"]
    assert names("Churnflow_Health_Band__c != 'red'") == ["Beta", "Gamma", "O'Brien \\ Sons"]  # case-insensitive, null != 'red'
    assert names("Churnflow_Health_Band__c IN ('Green', 'Red')") == ["Alpha", "Gamma"]
    assert names("Churnflow_Health_Band__c NOT IN ('Green')") == ["Alpha", "Beta", "O'Brien \\ Sons"]
    assert names("(Churnflow_Health_Score__c < 20 OR Churnflow_Health_Score__c > 80) AND Churnflow_Health_Band__c != null") == ["Alpha", "Gamma"]
    assert names("NOT Name LIKE '%a'") == ["O'Brien \\ Sons"]
    assert names("Id = " + soql_quote(ids[1][:15])) == ["Beta"]  # 15-character ids match too
    assert names("Name = " + soql_quote(f"{uid} O'Brien \\ Sons")) == ["O'Brien \\ Sons"]
    assert names("Churnflow_Health_Score__c != null", "DESC LIMIT 2") == ["Gamma", "Beta"]
    assert sf.query(f"SELECT COUNT() FROM Account WHERE Name LIKE '{uid}%'")["totalSize"] == 4


@pytest.mark.parametrize(("soql", "code"), [
    ("SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'", "MALFORMED_QUERY"),
    ("SELECT Id FROM Account WHERE Name = 'unterminated", "MALFORMED_QUERY"),
    ("SELECT Id FROM Account WHERE Name = 'bad \\q escape'", "MALFORMED_QUERY"),
    ("SELECT Nope__c FROM Account", "INVALID_FIELD"),
    ("SELECT Id FROM Account WHERE Churnflow_Health_Score__c = '5'", "INVALID_QUERY_FILTER_OPERATOR"),
    ("SELECT Id FROM Account WHERE Name = 5", "INVALID_QUERY_FILTER_OPERATOR"),
    ("SELECT Id FROM Account WHERE Id = 'xyz'", "INVALID_QUERY_FILTER_OPERATOR"),
    ("SELECT Id FROM Task WHERE Description = 'x'", "INVALID_FIELD"),
    ("SELECT Id FROM Nothing__c", "INVALID_TYPE"),
])
def test_soql_errors_like_salesforce(sf: Salesforce, soql: str, code: str) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query(soql)
    assert _error(exc)["errorCode"] == code


def test_soql_quote() -> None:
    assert soql_quote("plain") == "'plain'"
    assert soql_quote("O'Brien") == "'O\\'Brien'"
    assert soql_quote("back\\slash") == "'back\\\\slash'"
    assert soql_quote("x' OR Name != '") == "'x\\' OR Name != \\''"
    assert soql_quote('line\nbreak "q"') == "'line\\nbreak \\\"q\\\"'"
    assert soql_quote(None) == "null" and soql_quote(True) == "true" and soql_quote(3) == "3"


def test_soql_quote_round_trips_through_the_server(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    nasty = [f"{uid} it's", f"{uid} back\\slash", f"{uid} both\\' mix", f"{uid} x' OR Name != '", f"{uid} 50%_off"]
    server.seed("Account", [{"Name": n} for n in nasty])
    for name in nasty:
        found = sf.query_all("SELECT Name FROM Account WHERE Name = " + soql_quote(name))["records"]
        assert [r["Name"] for r in found] == [name]


@pytest.mark.parametrize(("values", "code", "field"), [
    ({"Name": "x", "Bogus__c": 1}, "INVALID_FIELD", None),
    ({"Name": "x", "Churnflow_Health_Band__c": "Blue"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "Churnflow_Health_Band__c"),
    ({"Name": "x" * 256}, "STRING_TOO_LONG", "Name"),
    ({"Churnflow_Health_Score__c": 5}, "REQUIRED_FIELD_MISSING", "Name"),
    ({"Name": "x", "Churnflow_Health_Score__c": 1000}, "NUMBER_OUTSIDE_VALID_RANGE", "Churnflow_Health_Score__c"),
    ({"Name": "x", "OwnerId": "005xyz"}, "MALFORMED_ID", "OwnerId"),
    ({"Name": "x", "OwnerId": make_id("005", 999999)}, "INVALID_CROSS_REFERENCE_KEY", "OwnerId"),
    ({"Name": "x", "Churnflow_Scored_At__c": "yesterday"}, "JSON_PARSER_ERROR", "Churnflow_Scored_At__c"),
    ({"Name": "x", "CreatedDate": "2024-01-01T00:00:00Z"}, "INVALID_FIELD_FOR_INSERT_UPDATE", "CreatedDate"),
])
def test_strict_writes(sf: Salesforce, values: dict, code: str, field: str | None) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.create(values)
    error = _error(exc)
    assert error["errorCode"] == code
    if field:
        assert error["fields"] == [field]


def test_record_crud_and_bad_ids(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    created = sf.Account.create({"Name": f"{uid} crud", "Churnflow_Health_Score__c": 71.6})
    assert created["success"] and created["id"].startswith("001") and len(created["id"]) == 18
    record = sf.Account.get(created["id"])
    assert record["Churnflow_Health_Score__c"] == 72.0  # rounded to the field's scale
    assert record["OwnerId"] == server.integration_user_id
    assert sf.Account.update(created["id"], {"Churnflow_Health_Score__c": None}) == 204
    assert sf.Account.get(created["id"])["Churnflow_Health_Score__c"] is None
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.update("001nonsense", {"Name": "x"})
    assert _error(exc)["errorCode"] == "MALFORMED_ID"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(make_id("001", 987654))
    assert sf.Account.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound) as gone:
        sf.Account.get(created["id"])
    assert _error(gone)["errorCode"] == "ENTITY_IS_DELETED"
    assert sf.query("SELECT Id FROM Account WHERE Id = " + soql_quote(created["id"]))["totalSize"] == 0
    deleted = sf.query_all("SELECT Id, IsDeleted FROM Account WHERE Id = " + soql_quote(created["id"]), include_deleted=True)
    assert deleted["records"][0]["IsDeleted"] is True


def test_task_rules(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    account = server.seed("Account", [{"Name": f"{uid} task rules"}])[0]
    inactive = server.seed("User", [{"Username": f"{uid}@x.test", "Email": f"{uid}@x.test", "LastName": "Gone", "IsActive": False}])[0]
    task = sf.Task.create({"WhatId": account, "Subject": "Call", "Churnflow_Key__c": f"{uid}-k"})
    rec = sf.Task.get(task["id"])
    assert task["id"].startswith("00T")
    assert (rec["Status"], rec["Priority"], rec["IsClosed"]) == ("Not Started", "Normal", False)
    sf.Task.update(task["id"], {"Status": "Completed"})
    assert sf.Task.get(task["id"])["IsClosed"] is True
    for values, code in [({"Priority": "Urgent"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
                         ({"Subject": "s" * 256}, "STRING_TOO_LONG"),
                         ({"Status": None}, "REQUIRED_FIELD_MISSING"),
                         ({"IsClosed": True}, "INVALID_FIELD_FOR_INSERT_UPDATE"),
                         ({"OwnerId": inactive}, "INACTIVE_OWNER_OR_USER"),
                         ({"WhatId": server.integration_user_id}, "MALFORMED_ID")]:
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.Task.update(task["id"], values)
        assert _error(exc)["errorCode"] == code


def test_composite_create_and_update(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    account = server.seed("Account", [{"Name": f"{uid} composite"}])[0]
    records = [{"attributes": {"type": "Task"}, "WhatId": account, "Subject": f"{uid} {i}"} for i in range(3)]
    records[1]["Priority"] = "Urgent"
    results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": records})
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert results[1]["id"] is None
    # allOrNone: one bad record rolls the whole request back
    before = len(server.records("Task"))
    rolled = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    assert [r["success"] for r in rolled] == [False, False, False]
    assert rolled[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert len(server.records("Task")) == before
    updates = [{"attributes": {"type": "Task"}, "Id": results[0]["id"], "Priority": "High"},
               {"attributes": {"type": "Task"}, "Id": make_id("00T", 888888), "Priority": "High"}]
    updated = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": updates})
    assert updated[0]["success"] and not updated[1]["success"]
    assert updated[1]["errors"][0]["statusCode"] == "NOT_FOUND"
    assert server.get_record("Task", results[0]["id"])["Priority"] == "High"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("composite/sobjects", method="POST", json={"records": records * 70})
    assert _error(exc)["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_upsert_by_external_id(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    account = server.seed("Account", [{"Name": f"{uid} upsert"}])[0]
    assert sf.Task.upsert(f"Churnflow_Key__c/{uid}-a", {"Subject": "first", "WhatId": account}) == 201
    assert sf.Task.upsert(f"Churnflow_Key__c/{uid}-a", {"Subject": "second"}) == 200  # 204 before API v46.0
    old_api = Salesforce(session_id=sf.session_id, instance=sf.sf_instance, session=sf.session, version="45.0")
    assert old_api.Task.upsert(f"Churnflow_Key__c/{uid}-a", {"Subject": "second"}) == 204
    found = sf.query_all(f"SELECT Subject FROM Task WHERE Churnflow_Key__c = '{uid}-a'")["records"]
    assert [r["Subject"] for r in found] == ["second"]
    results = sf.restful("composite/sobjects/Task/Churnflow_Key__c", method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Task"}, "Churnflow_Key__c": f"{uid}-a", "Subject": "third"},
        {"attributes": {"type": "Task"}, "Churnflow_Key__c": f"{uid}-b", "Subject": "new", "WhatId": account},
    ]})
    assert [(r["success"], r["created"]) for r in results] == [(True, False), (True, True)]
    with pytest.raises(SalesforceResourceNotFound):
        sf.Task.upsert(f"Subject/{uid}", {"Priority": "Low"})  # not an external id field
    from simple_salesforce import format_external_id

    slashed = f"{uid}/with-slash&?"  # an encoded '/' must stay inside the value
    assert sf.Task.upsert(format_external_id("Churnflow_Key__c", slashed), {"Subject": "s", "WhatId": account}) == 201
    assert sf.Task.get_by_custom_id("Churnflow_Key__c", slashed)["Subject"] == "s"  # quotes the value itself


def test_bulk2_ingest_with_failed_rows(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    ids = server.seed("Account", [{"Name": f"{uid} bulk {i}", "Churnflow_Health_Trend__c": 3.5} for i in range(10)])
    rows = [{"Id": rid, "Churnflow_Health_Score__c": str(40 + i), "Churnflow_Health_Trend__c": "#N/A",
             "Churnflow_Health_Band__c": "Purple" if i == 9 else "Red"} for i, rid in enumerate(ids)]
    server.faults.add("bulk_row_failures", rows=2)
    result = sf.bulk2.Account.update(records=rows, wait=0.01)
    assert result[0]["numberRecordsProcessed"] == 10 and result[0]["numberRecordsFailed"] == 3
    failed = sf.bulk2.Account.get_failed_records(result[0]["job_id"])
    lines = failed.strip().splitlines()
    assert lines[0].startswith('"sf__Id","sf__Error"') and len(lines) == 4
    assert sum("UNABLE_TO_LOCK_ROW" in line for line in lines) == 2
    assert sum("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in line for line in lines) == 1
    ok = server.get_record("Account", ids[5])
    assert ok["Churnflow_Health_Score__c"] == 45 and ok["Churnflow_Health_Trend__c"] is None  # #N/A cleared it
    assert server.get_record("Account", ids[0])["Churnflow_Health_Trend__c"] == 3.5  # failed row untouched
    success = sf.bulk2.Account.get_successful_records(result[0]["job_id"])
    assert success.count("\n") == 1 + 7


def test_bulk2_insert_crlf_and_line_ending_mismatch(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    from simple_salesforce.bulk2 import LineEnding
    from simple_salesforce.exceptions import SalesforceOperationError

    result = sf.bulk2.Account.insert(records=[{"Name": f"{uid} crlf {i}"} for i in range(3)], line_ending=LineEnding.CRLF, wait=0.01)
    assert result[0]["numberRecordsFailed"] == 0
    assert sf.query(f"SELECT COUNT() FROM Account WHERE Name LIKE '{uid} crlf%'")["totalSize"] == 3
    client = sf.bulk2.Account._client
    job = client.create_job("insert", line_ending=LineEnding.LF)
    client.upload_job_data(job["id"], f"Name\r\n{uid} wrong\r\n")
    client.close_job(job["id"])
    with pytest.raises(SalesforceOperationError, match="LineEnding"):
        client.wait_for_job(job["id"], False, 0.01)


def test_describe_and_limits(sf: Salesforce) -> None:
    describe = sf.Task.describe()
    fields = {f["name"]: f for f in describe["fields"]}
    assert describe["keyPrefix"] == "00T"
    assert [p["value"] for p in fields["Priority"]["picklistValues"]] == ["High", "Normal", "Low"]
    assert fields["Churnflow_Key__c"]["externalId"] and fields["Churnflow_Key__c"]["length"] == 80
    account = {f["name"]: f for f in sf.Account.describe()["fields"]}
    assert account["Churnflow_Churn_Risk__c"]["type"] == "percent"
    assert account["Churnflow_Top_Drivers__c"]["length"] == 32768
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Remaining"] < limits["DailyApiRequests"]["Max"]
    assert sf.api_usage  # simple-salesforce parsed the Sforce-Limit-Info header


def test_state_persists_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "crm.sqlite"
    with LocalSalesforce(state_path=state, cert_dir=tmp_path) as first:
        sf = connect_local(first)
        created = sf.Account.create({"Name": "Persisted", "Churnflow_Health_Band__c": "Red"})["id"]
        sf.Account.update(created, {"Churnflow_Health_Score__c": 12})
    with LocalSalesforce(state_path=state, cert_dir=tmp_path) as second:
        sf = connect_local(second)
        record = sf.Account.get(created)
        assert (record["Name"], record["Churnflow_Health_Band__c"], record["Churnflow_Health_Score__c"]) == ("Persisted", "Red", 12.0)
        assert sf.Account.create({"Name": "Next"})["id"] != created  # id counter persisted too
        assert len([u for u in second.records("User") if u["Username"] == second.username]) == 1


def test_html_page_shows_health_and_open_tasks(server: LocalSalesforce, uid: str) -> None:
    account = server.seed("Account", [{"Name": f"{uid} <Page> Co", "Churnflow_Health_Band__c": "Red",
                                       "Churnflow_Churn_Risk__c": 42.5, "Churnflow_Top_Drivers__c": "Logins fell 60%"}])[0]
    server.seed("Task", [{"WhatId": account, "Subject": f"{uid} call them", "Priority": "High"},
                         {"WhatId": account, "Subject": f"{uid} done already", "Status": "Completed"}])
    page = local_session(server.cert_path).get(server.base_url + "/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert f"{uid} &lt;Page&gt; Co" in page.text and "Logins fell 60%" in page.text and "42.5%" in page.text
    assert f"{uid} call them" in page.text and f"{uid} done already" not in page.text


def test_requires_a_session(server: LocalSalesforce) -> None:
    response = local_session(server.cert_path).get(server.base_url + "/services/data/v59.0/limits")
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert json.loads(response.text)[0]["errorCode"] == "INVALID_SESSION_ID"


def test_accepts_what_simple_salesforce_format_soql_produces(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    from datetime import datetime, timezone

    from simple_salesforce import format_soql

    ids = server.seed("Account", [
        {"Name": f"{uid} 100%_sure", "Churnflow_Scored_At__c": "2026-11-20T06:00:00Z", "Churnflow_Health_Score__c": 5},
        {"Name": f"{uid} 100 percent", "Churnflow_Scored_At__c": "2026-11-21T06:00:00Z", "Churnflow_Health_Score__c": 7},
    ])
    cutoff = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
    q = format_soql("SELECT Name FROM Account WHERE Id IN {} AND Churnflow_Scored_At__c < {} AND Churnflow_Health_Score__c >= {}",
                    ids, cutoff, 5)
    assert [r["Name"] for r in sf.query_all(q)["records"]] == [f"{uid} 100%_sure"]
    like = format_soql("SELECT Name FROM Account WHERE Name LIKE '{:like}%'", f"{uid} 100%_")
    assert [r["Name"] for r in sf.query_all(like)["records"]] == [f"{uid} 100%_sure"]


def test_runs_in_the_foreground_from_the_command_line(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys
    import time

    state = tmp_path / "state" / "crm.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "crm_sync.local.server", "--port", "0", "--state", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            match = re.search(r"listening on (https://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "the server never reported its URL"
        page = local_session(state.parent / "local-crm-cert.pem").get(url + "/")
        assert page.status_code == 200 and "Account health" in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "stopping" in output
    assert state.exists()

"""fields.py: the single declaration drives payloads, the server schema and SFDX metadata."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.dom import minidom

import pandas as pd
import pytest

from crm_sync.fields import FIELDS, account_health_payload, fields_for, sfdx_field_xml, write_sfdx_metadata
from crm_sync.local.server import build_schema


def test_every_declared_field_exists_on_the_local_server() -> None:
    schema = build_schema()
    for spec in FIELDS:
        fdef = schema[spec.sobject.lower()].get(spec.api_name)
        assert fdef is not None and fdef.custom and fdef.label == spec.label


def test_account_payload_conversions() -> None:
    row = {"health_score": 71.6, "band": "yellow", "p_churn": 0.123456, "health_change_30d": math.nan,
           "top_drivers_text": "a" * 40000, "arr_at_risk": 1234.5678,
           "scored_at": pd.Timestamp("2026-11-20 08:30:00", tz="Europe/Berlin")}
    payload = account_health_payload(row)
    assert payload["Churnflow_Health_Score__c"] == 72
    assert payload["Churnflow_Health_Band__c"] == "Yellow"
    assert payload["Churnflow_Churn_Risk__c"] == 12.35
    assert payload["Churnflow_Health_Trend__c"] is None
    assert len(payload["Churnflow_Top_Drivers__c"]) == 32768
    assert payload["Churnflow_ARR_At_Risk__c"] == 1234.57
    assert payload["Churnflow_Scored_At__c"] == "2026-11-20T07:30:00.000+0000"
    naive = account_health_payload({**row, "scored_at": datetime(2026, 1, 2, 3, 4, 5, 678000)})
    assert naive["Churnflow_Scored_At__c"] == "2026-01-02T03:04:05.678+0000"
    aware = account_health_payload({**row, "scored_at": datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=-5)))})
    assert aware["Churnflow_Scored_At__c"] == "2026-01-02T05:00:00.000+0000"
    with pytest.raises(ValueError, match="band"):
        account_health_payload({**row, "band": "blue"})


def test_sfdx_metadata(tmp_path: Path) -> None:
    written = write_sfdx_metadata(tmp_path)
    assert len(written) == len(FIELDS)
    base = tmp_path / "force-app/main/default/objects"
    assert (base / "Account/fields/Churnflow_Health_Band__c.field-meta.xml").exists()
    assert (base / "Activity/fields/Churnflow_Key__c.field-meta.xml").exists()  # Task fields live on Activity
    for path in written:
        doc = minidom.parse(str(path))  # well-formed
        root = doc.documentElement
        assert root.tagName == "CustomField" and root.getAttribute("xmlns") == "http://soap.sforce.com/2006/04/metadata"
    band = minidom.parseString(sfdx_field_xml(next(f for f in fields_for("Account") if f.type == "Picklist")))
    assert [v.firstChild.nodeValue for v in band.getElementsByTagName("fullName")[1:]] == ["Green", "Yellow", "Red"]
    assert band.getElementsByTagName("restricted")[0].firstChild.nodeValue == "true"
    score = minidom.parseString(sfdx_field_xml(fields_for("Account")[0]))
    assert (score.getElementsByTagName("precision")[0].firstChild.nodeValue, score.getElementsByTagName("scale")[0].firstChild.nodeValue) == ("3", "0")
    key = minidom.parseString(sfdx_field_xml(fields_for("Task")[0]))
    assert key.getElementsByTagName("externalId")[0].firstChild.nodeValue == "true"
    assert key.getElementsByTagName("length")[0].firstChild.nodeValue == "80"


def test_sfdx_project_is_a_deployable_admin_kit(tmp_path: Path) -> None:
    """sfdx-project.json, every field, a permission set covering every field, the Task values."""
    import json
    from xml.etree import ElementTree

    from crm_sync.fields import PERMISSION_SET, write_sfdx_project
    from churnflow.vocabulary import TASK_PRIORITIES, TASK_STATUSES

    written = write_sfdx_project(tmp_path)
    project = json.loads((tmp_path / "sfdx-project.json").read_text())
    assert project["packageDirectories"] == [{"path": "force-app", "default": True}] and project["sourceApiVersion"]
    ns = {"md": "http://soap.sforce.com/2006/04/metadata"}
    for path in written:
        if path.suffix == ".xml":
            ElementTree.parse(path)  # well-formed
    perm = ElementTree.parse(tmp_path / f"force-app/main/default/permissionsets/{PERMISSION_SET}.permissionset-meta.xml").getroot()
    granted = {fp.findtext("md:field", namespaces=ns): (fp.findtext("md:readable", namespaces=ns), fp.findtext("md:editable", namespaces=ns))
               for fp in perm.findall("md:fieldPermissions", ns)}
    on_disk = {f"{p.parent.parent.name}.{p.name.removesuffix('.field-meta.xml')}" for p in written if p.name.endswith(".field-meta.xml")}
    deployed_as = {name.replace("Task.", "Activity.", 1) for name in granted}  # Task fields' source lives on Activity
    assert deployed_as == on_disk and len(on_disk) == len(FIELDS)  # every deployed field, nothing else
    assert set(granted.values()) == {("true", "true")}
    assert "Account.Churnflow_Score_As_Of__c" in granted and "Task.Churnflow_Key__c" in granted
    account = perm.find("md:objectPermissions", ns)
    assert account is not None and account.findtext("md:viewAllRecords", namespaces=ns) == "true"
    assert {u.findtext("md:name", namespaces=ns) for u in perm.findall("md:userPermissions", ns)} == {"ApiEnabled", "EditTask"}
    for name, values in (("TaskStatus", TASK_STATUSES), ("TaskPriority", TASK_PRIORITIES)):
        root = ElementTree.parse(tmp_path / f"force-app/main/default/standardValueSets/{name}.standardValueSet-meta.xml").getroot()
        assert tuple(v.findtext("md:fullName", namespaces=ns) for v in root.findall("md:standardValue", ns)) == values
    status = ElementTree.parse(tmp_path / "force-app/main/default/standardValueSets/TaskStatus.standardValueSet-meta.xml").getroot()
    closed = {v.findtext("md:fullName", namespaces=ns) for v in status.findall("md:standardValue", ns) if v.findtext("md:closed", namespaces=ns) == "true"}
    from churnflow.vocabulary import CLOSED_TASK_STATUSES
    assert closed == set(CLOSED_TASK_STATUSES)


def test_as_of_date_field_and_the_change_rule() -> None:
    from crm_sync.fields import change_state, material_change

    row = {"health_score": 71, "band": "yellow", "p_churn": 0.29, "health_change_30d": -3.0, "top_drivers_text": "Logins fell",
           "arr_at_risk": 2900.0, "arr": 10000.0, "scored_at": pd.Timestamp("2026-11-20 06:00"), "as_of_date": pd.Timestamp("2026-11-20")}
    assert account_health_payload(row)["Churnflow_Score_As_Of__c"] == "2026-11-20"
    sent = change_state(row)
    assert sent["Churnflow_Score_As_Of__c"] == "2026-11-20" and sent["arr"] == 10000.0  # kept, but never a change
    next_day = {**row, "as_of_date": pd.Timestamp("2026-11-21"), "scored_at": pd.Timestamp("2026-11-21 06:00"),
                "p_churn": 0.294, "arr_at_risk": 2940.0, "health_score": 71}
    assert material_change(sent, change_state(next_day)) == []  # date, run time, probability noise: no change
    assert material_change(sent, change_state({**next_day, "health_score": 70, "p_churn": 0.296})) == []  # rounding flip: noise
    assert material_change(sent, change_state({**next_day, "health_score": 70, "p_churn": 0.30})) == ["Churnflow_Churn_Risk__c"]
    assert material_change(sent, change_state({**next_day, "p_churn": 0.30}), min_points=2) == []
    assert material_change(sent, change_state({**next_day, "health_change_30d": -5.0})) == []  # 2 trend points < 3
    assert material_change(sent, change_state({**next_day, "health_change_30d": -6.0})) == ["Churnflow_Health_Trend__c"]
    assert material_change(sent, change_state({**next_day, "band": "red"})) == ["Churnflow_Health_Band__c"]
    assert material_change(sent, change_state({**next_day, "top_drivers_text": "Tickets up"})) == ["Churnflow_Top_Drivers__c"]
    assert material_change(sent, change_state({**next_day, "health_change_30d": math.nan})) == ["Churnflow_Health_Trend__c"]
    assert material_change(sent, change_state({**next_day, "arr": 12000.0})) == ["arr"]
    assert material_change(None, sent) == sorted({"Churnflow_Churn_Risk__c", "Churnflow_Health_Band__c", "Churnflow_Health_Trend__c",
                                                   "Churnflow_Top_Drivers__c", "arr"})

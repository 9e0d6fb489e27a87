"""fields.py: the single declaration drives payloads, the server schema and SFDX metadata."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.dom import minidom

import pandas as pd
import pytest

from crm_sync.fields import FIELDS, account_health_payload, fields_for, sfdx_field_xml, write_sfdx_metadata
from crm_sync.local_server import build_schema


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

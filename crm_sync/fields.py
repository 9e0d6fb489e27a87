"""The one declaration of every Salesforce field churnflow writes.

Everything that knows about churnflow's custom fields reads this module: the push code
(which frame column feeds which field, and how the value is converted), the local
Salesforce-compatible server (which fields exist and how strictly they are validated),
and the SFDX metadata generator (so the fields deployed to a real org are exactly the
fields the code writes). Adding a field here is the whole change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

FieldType = Literal["Number", "Percent", "Text", "LongTextArea", "Picklist", "DateTime", "Currency"]

#: Salesforce's own limit for a Long Text Area field.
LONG_TEXT_MAX = 131072


def is_missing(value: Any) -> bool:
    """NaN, NaT, None and pandas NA all mean 'no value' (the field is cleared)."""
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def to_number(value: Any, scale: int = 0) -> float | int | None:
    """Round to the field's scale, as Salesforce would store it."""
    if is_missing(value):
        return None
    number = float(value)
    if math.isinf(number):
        return None
    if scale == 0:
        return int(round(number))
    return round(number, scale)


def to_datetime_string(value: Any) -> str | None:
    """Salesforce DateTime wire format, always UTC (naive values are taken as UTC)."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def to_text(value: Any, length: int) -> str | None:
    """Text truncated to the field length (Salesforce would reject it with STRING_TOO_LONG)."""
    if is_missing(value):
        return None
    text = str(value)
    if len(text) > length:
        text = text[: length - 1] + "…"
    return text


@dataclass(frozen=True)
class FieldSpec:
    """One Salesforce field churnflow writes, and where its value comes from."""

    sobject: str
    api_name: str
    label: str
    type: FieldType
    description: str
    source: str | None = None
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    picklist: tuple[str, ...] = ()
    external_id: bool = False
    unique: bool = False
    help_text: str = ""
    convert: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def to_crm(self, value: Any) -> Any:
        """Convert a frame value to the JSON value Salesforce expects (None clears the field)."""
        if self.convert is not None:
            return self.convert(value)
        if self.type in ("Number", "Percent", "Currency"):
            return to_number(value, self.scale or 0)
        if self.type == "DateTime":
            return to_datetime_string(value)
        if self.type in ("Text", "LongTextArea"):
            return to_text(value, self.length or 255)
        if self.type == "Picklist":
            if is_missing(value):
                return None
            text = str(value)
            for option in self.picklist:
                if option.lower() == text.lower():
                    return option
            raise ValueError(f"{self.api_name}: {value!r} is not one of {self.picklist}")
        raise ValueError(f"unsupported field type {self.type}")  # pragma: no cover


def _band(value: Any) -> str | None:
    if is_missing(value):
        return None
    mapped = {"green": "Green", "yellow": "Yellow", "red": "Red"}.get(str(value).strip().lower())
    if mapped is None:
        raise ValueError(f"Churnflow_Health_Band__c: unknown band {value!r}")
    return mapped


def _percent(value: Any) -> float | None:
    return None if is_missing(value) else round(float(value) * 100.0, 2)


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "Account", "Churnflow_Health_Score__c", "Churnflow Health Score", "Number",
        "Customer health score 0-100 (100 = healthiest), written by churnflow.",
        source="health_score", precision=3, scale=0,
    ),
    FieldSpec(
        "Account", "Churnflow_Health_Band__c", "Churnflow Health Band", "Picklist",
        "Health band from the churn probability thresholds: Green, Yellow or Red.",
        source="band", picklist=("Green", "Yellow", "Red"), convert=_band,
    ),
    FieldSpec(
        "Account", "Churnflow_Churn_Risk__c", "Churnflow Churn Risk", "Percent",
        "Predicted probability of churn within the horizon, in percent.",
        source="p_churn", precision=5, scale=2, convert=_percent,
    ),
    FieldSpec(
        "Account", "Churnflow_Health_Trend__c", "Churnflow Health Trend (30d)", "Number",
        "Change of the health score over the last 30 days; empty when there is no history.",
        source="health_change_30d", precision=4, scale=1,
    ),
    FieldSpec(
        "Account", "Churnflow_Top_Drivers__c", "Churnflow Top Risk Drivers", "LongTextArea",
        "The strongest churn risk drivers for this account, in plain language.",
        source="top_drivers_text", length=32768,
    ),
    FieldSpec(
        "Account", "Churnflow_ARR_At_Risk__c", "Churnflow ARR At Risk", "Currency",
        "Annual recurring revenue weighted by churn probability.",
        source="arr_at_risk", precision=16, scale=2,
    ),
    FieldSpec(
        "Account", "Churnflow_Scored_At__c", "Churnflow Scored At", "DateTime",
        "When churnflow computed these health fields.",
        source="scored_at",
    ),
    FieldSpec(
        "Task", "Churnflow_Key__c", "Churnflow Key", "Text",
        "Stable key of the churnflow outreach task; lets churnflow find its own tasks and never duplicate them.",
        source="task_key", length=80, external_id=True,
    ),
)

#: SFDX puts Task and Event custom fields on the Activity object.
SFDX_OBJECT = {"Task": "Activity", "Event": "Activity"}


def fields_for(sobject: str) -> tuple[FieldSpec, ...]:
    """The declared fields of one object (Task fields are declared as Task, deployed on Activity)."""
    return tuple(f for f in FIELDS if f.sobject == sobject)


def account_health_payload(row: dict[str, Any]) -> dict[str, Any]:
    """Account field values for one account health row (keys are API names)."""
    return {spec.api_name: spec.to_crm(row.get(spec.source)) for spec in fields_for("Account") if spec.source}


def _xml_bool(value: bool) -> str:
    return "true" if value else "false"


def sfdx_field_xml(spec: FieldSpec) -> str:
    """The ``.field-meta.xml`` source of one field, ready for ``sf project deploy``."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<CustomField xmlns="http://soap.sforce.com/2006/04/metadata">',
        f"    <fullName>{escape(spec.api_name)}</fullName>",
        f"    <description>{escape(spec.description)}</description>",
        f"    <externalId>{_xml_bool(spec.external_id)}</externalId>",
    ]
    if spec.help_text:
        lines.append(f"    <inlineHelpText>{escape(spec.help_text)}</inlineHelpText>")
    lines.append(f"    <label>{escape(spec.label)}</label>")
    if spec.type == "LongTextArea":
        lines.append(f"    <length>{spec.length}</length>")
    elif spec.type == "Text":
        lines.append(f"    <length>{spec.length}</length>")
    if spec.type in ("Number", "Percent", "Currency"):
        lines.append(f"    <precision>{spec.precision}</precision>")
    lines.append("    <required>false</required>")
    if spec.type in ("Number", "Percent", "Currency"):
        lines.append(f"    <scale>{spec.scale or 0}</scale>")
    if spec.sobject not in SFDX_OBJECT:
        lines.append("    <trackFeedHistory>false</trackFeedHistory>")
    lines.append("    <trackTrending>false</trackTrending>")
    lines.append(f"    <type>{spec.type}</type>")
    if spec.type == "Text":
        lines.append(f"    <unique>{_xml_bool(spec.unique)}</unique>")
    if spec.type == "Picklist":
        lines += [
            "    <valueSet>",
            "        <restricted>true</restricted>",
            "        <valueSetDefinition>",
            "            <sorted>false</sorted>",
        ]
        for value in spec.picklist:
            lines += [
                "            <value>",
                f"                <fullName>{escape(value)}</fullName>",
                "                <default>false</default>",
                f"                <label>{escape(value)}</label>",
                "            </value>",
            ]
        lines += ["        </valueSetDefinition>", "    </valueSet>"]
    if spec.type == "LongTextArea":
        lines.append("    <visibleLines>5</visibleLines>")
    lines.append("</CustomField>")
    return "\n".join(lines) + "\n"


def write_sfdx_metadata(directory: Path, specs: Iterable[FieldSpec] = FIELDS) -> list[Path]:
    """Write ``force-app/main/default/objects/<Object>/fields/*.field-meta.xml`` under ``directory``."""
    written: list[Path] = []
    for spec in specs:
        obj = SFDX_OBJECT.get(spec.sobject, spec.sobject)
        target = Path(directory) / "force-app" / "main" / "default" / "objects" / obj / "fields"
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{spec.api_name}.field-meta.xml"
        path.write_text(sfdx_field_xml(spec), encoding="utf-8")
        written.append(path)
    return written

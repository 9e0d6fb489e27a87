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

from churnflow.vocabulary import BANDS, TASK_PRIORITY_VALUES, TASK_STATUS_VALUES, band_label

FieldType = Literal["Number", "Percent", "Text", "LongTextArea", "Picklist", "DateTime", "Date", "Currency"]
#: How a field takes part in deciding whether an account changed (see :func:`material_change`):
#: ``exact`` any difference, ``points`` a move of at least ``crm_min_health_change`` health
#: points, ``trend`` a move of at least ``crm_min_trend_change`` points, ``never`` the field
#: rides along when the account is sent but never causes a send.
ChangeRule = Literal["exact", "points", "trend", "never"]

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


def to_date_string(value: Any) -> str | None:
    """Salesforce Date wire format (YYYY-MM-DD)."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        return date.fromisoformat(value[:10]).isoformat()
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        value = value.date()
    return value.isoformat()


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
    change: ChangeRule = "exact"
    convert: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def to_crm(self, value: Any) -> Any:
        """Convert a frame value to the JSON value Salesforce expects (None clears the field)."""
        if self.convert is not None:
            return self.convert(value)
        if self.type in ("Number", "Percent", "Currency"):
            return to_number(value, self.scale or 0)
        if self.type == "DateTime":
            return to_datetime_string(value)
        if self.type == "Date":
            return to_date_string(value)
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
    text = str(value).strip().lower()
    if text not in BANDS:
        raise ValueError(f"Churnflow_Health_Band__c: unknown band {value!r}")
    return band_label(text)


def _percent(value: Any) -> float | None:
    return None if is_missing(value) else round(float(value) * 100.0, 2)


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "Account", "Churnflow_Health_Score__c", "Churnflow Health Score", "Number",
        "Customer health score 0-100 (100 = healthiest), written by churnflow.",
        # Never a trigger itself: it is the rounded form of the churn risk, which is compared
        # unrounded (a 0.1 move across x.5 would otherwise count as a point).
        source="health_score", precision=3, scale=0, change="never",
    ),
    FieldSpec(
        "Account", "Churnflow_Health_Band__c", "Churnflow Health Band", "Picklist",
        "Health band from the churn probability thresholds: Green, Yellow or Red.",
        source="band", picklist=("Green", "Yellow", "Red"), convert=_band,
    ),
    FieldSpec(
        "Account", "Churnflow_Churn_Risk__c", "Churnflow Churn Risk", "Percent",
        "Predicted probability of churn within the horizon, in percent.",
        # Risk percentage points are health points (health = 100 - risk %), without rounding noise.
        source="p_churn", precision=5, scale=2, convert=_percent, change="points",
    ),
    FieldSpec(
        "Account", "Churnflow_Health_Trend__c", "Churnflow Health Trend (30d)", "Number",
        "Change of the health score over the last 30 days; empty when there is no history.",
        source="health_change_30d", precision=4, scale=1, change="trend",
    ),
    FieldSpec(
        "Account", "Churnflow_Top_Drivers__c", "Churnflow Top Risk Drivers", "LongTextArea",
        "The strongest churn risk drivers for this account, in plain language.",
        source="top_drivers_text", length=32768,
    ),
    FieldSpec(
        "Account", "Churnflow_ARR_At_Risk__c", "Churnflow ARR At Risk", "Currency",
        "Annual recurring revenue weighted by churn probability.",
        source="arr_at_risk", precision=16, scale=2, change="never",
    ),
    FieldSpec(
        "Account", "Churnflow_Scored_At__c", "Churnflow Scored At", "DateTime",
        "When churnflow computed the score shown (the run time); the day the score describes is Churnflow Score As Of.",
        source="scored_at", change="never",
    ),
    FieldSpec(
        "Account", "Churnflow_Score_As_Of__c", "Churnflow Score As Of", "Date",
        "The as-of date of the score shown: it uses data known before this day. churnflow never replaces it with an older one.",
        source="as_of_date", change="never",
        help_text="Unchanged accounts are not re-sent every day, so this is the newest day whose score differed from the one shown before.",
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


def change_state(row: dict[str, Any]) -> dict[str, Any]:
    """What the ledger keeps of a sent account: every field value (CRM form), plus its ARR.

    ARR is not a CRM field, but ARR at risk (which rides along) moves with it: a renewal
    with a new ARR must reach the CRM even when the health score did not move. Keeping all
    values lets reconcile tell what the CRM should hold on days the account was not sent.
    """
    state = account_health_payload(row)
    arr = row.get("arr")
    state["arr"] = None if is_missing(arr) else round(float(arr), 2)
    return state


def material_change(sent: dict[str, Any] | None, new: dict[str, Any], min_points: float = 1.0, min_trend: float = 3.0) -> list[str]:
    """Names of the fields whose change makes an account worth writing again (empty: unchanged).

    The one rule of what "changed" means, so a daily re-score that only moved the score's
    date, its run time, its health by less than ``min_points`` points (measured on the
    unrounded churn risk) or its 30-day trend by less than ``min_trend`` points costs no API
    call and fires none of the org's triggers or field history. Band, drivers text and
    ARR: any change. A value appearing or disappearing is a change. ``sent`` is the state
    last confirmed in the CRM (None: never sent, everything is a change).
    """
    rules = {spec.api_name: spec.change for spec in fields_for("Account")}
    if sent is None:
        return sorted(n for n in new if rules.get(n) != "never")
    changed = []
    for name, value in new.items():
        if rules.get(name) == "never":
            continue
        old = sent.get(name)
        rule = rules.get(name)
        if rule in ("points", "trend") and old is not None and value is not None:
            if abs(float(value) - float(old)) >= (min_points if rule == "points" else min_trend) - 1e-9:
                changed.append(name)
        elif old != value:
            changed.append(name)
    return changed


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
    if spec.type in ("LongTextArea", "Text"):
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


#: The permission set the integration user gets: read/edit on every churnflow field.
PERMISSION_SET = "Churnflow_Integration"
SFDX_API_VERSION = "59.0"


def permission_set_xml(specs: Iterable[FieldSpec] = FIELDS) -> str:
    """A permission set granting field-level security on every declared field, Account
    read/edit with View All (tasks are "controlled by parent": seeing every account lets
    the integration user find every churnflow task, whoever owns it), API access and Edit Tasks."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<PermissionSet xmlns="http://soap.sforce.com/2006/04/metadata">',
        "    <description>What the churnflow integration user needs: its fields, Accounts (view all) and Tasks.</description>",
    ]
    # Field permissions name the object the field is used on (Task.X, not Activity.X, although
    # the field's source lives under objects/Activity); Salesforce mirrors Event itself.
    for spec in sorted(specs, key=lambda s: (s.sobject, s.api_name)):
        lines += [
            "    <fieldPermissions>",
            "        <editable>true</editable>",
            f"        <field>{spec.sobject}.{escape(spec.api_name)}</field>",
            "        <readable>true</readable>",
            "    </fieldPermissions>",
        ]
    lines += [
        "    <hasActivationRequired>false</hasActivationRequired>",
        "    <label>Churnflow Integration</label>",
        "    <objectPermissions>",
        "        <allowCreate>false</allowCreate>",
        "        <allowDelete>false</allowDelete>",
        "        <allowEdit>true</allowEdit>",
        "        <allowRead>true</allowRead>",
        "        <modifyAllRecords>false</modifyAllRecords>",
        "        <object>Account</object>",
        "        <viewAllRecords>true</viewAllRecords>",
        "    </objectPermissions>",
    ]
    for permission in ("ApiEnabled", "EditTask"):
        lines += ["    <userPermissions>", "        <enabled>true</enabled>", f"        <name>{permission}</name>", "    </userPermissions>"]
    lines.append("</PermissionSet>")
    return "\n".join(lines) + "\n"


def standard_value_set_xml(name: Literal["TaskStatus", "TaskPriority"]) -> str:
    """The Task status or priority values churnflow writes (Salesforce's defaults)."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<StandardValueSet xmlns="http://soap.sforce.com/2006/04/metadata">',
             "    <sorted>false</sorted>"]
    values = TASK_STATUS_VALUES if name == "TaskStatus" else TASK_PRIORITY_VALUES
    for value, flag, default in values:
        lines += ["    <standardValue>", f"        <fullName>{escape(value)}</fullName>", f"        <default>{_xml_bool(default)}</default>",
                  f"        <label>{escape(value)}</label>"]
        lines.append(f"        <closed>{_xml_bool(flag)}</closed>" if name == "TaskStatus" else f"        <highPriority>{_xml_bool(flag)}</highPriority>")
        lines.append("    </standardValue>")
    lines.append("</StandardValueSet>")
    return "\n".join(lines) + "\n"


def write_sfdx_project(directory: Path, specs: Iterable[FieldSpec] = FIELDS) -> list[Path]:
    """The whole admin kit, deployable as is with ``sf project deploy start -d force-app``:
    ``sfdx-project.json``, every field, the permission set and the Task value sets."""
    import json

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    specs = tuple(specs)
    written = write_sfdx_metadata(root, specs)
    project = {"packageDirectories": [{"path": "force-app", "default": True}], "name": "churnflow-crm",
               "namespace": "", "sfdcLoginUrl": "https://login.salesforce.com", "sourceApiVersion": SFDX_API_VERSION}
    files = {
        root / "sfdx-project.json": json.dumps(project, indent=2) + "\n",
        root / "force-app/main/default/permissionsets" / f"{PERMISSION_SET}.permissionset-meta.xml": permission_set_xml(specs),
        root / "force-app/main/default/standardValueSets/TaskStatus.standardValueSet-meta.xml": standard_value_set_xml("TaskStatus"),
        root / "force-app/main/default/standardValueSets/TaskPriority.standardValueSet-meta.xml": standard_value_set_xml("TaskPriority"),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

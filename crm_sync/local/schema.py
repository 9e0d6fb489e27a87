"""What the local org holds: sObjects and fields as Salesforce describes them, built from
churnflow's one field mapping (:mod:`crm_sync.fields`) plus the standard fields it uses, and
the value formats Salesforce writes back (datetimes, ids).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from churnflow.vocabulary import NEW_TASK_STATUS, TASK_STATUSES
from crm_sync.fields import FIELDS, FieldSpec
from crm_sync.local.errors import RecordError


API_VERSION = "59.0"


@dataclass
class FieldDef:
    """One field as describe() reports it; drives validation of every write and query."""

    name: str
    type: str  # id string textarea picklist double percent currency datetime date boolean reference
    label: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    picklist: tuple[str, ...] = ()
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    default: Any = None
    external_id: bool = False
    unique: bool = False
    reference_to: tuple[str, ...] = ()
    custom: bool = False
    filterable: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "soapType": {"id": "tns:ID", "reference": "tns:ID", "double": "xsd:double", "percent": "xsd:double",
                         "currency": "xsd:double", "datetime": "xsd:dateTime", "date": "xsd:date",
                         "boolean": "xsd:boolean"}.get(self.type, "xsd:string"),
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.default is not None,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.type == "id" or self.external_id,
            "custom": self.custom,
            "filterable": self.filterable,
            "restrictedPicklist": bool(self.picklist),
            "picklistValues": [
                {"value": v, "label": v, "active": True, "defaultValue": v == self.default, "validFor": None}
                for v in self.picklist
            ],
            "referenceTo": list(self.reference_to),
            "calculated": False,
            "extraTypeInfo": "plaintextarea" if self.type == "textarea" else None,
        }


_SPEC_TYPES = {"Number": "double", "Percent": "percent", "Currency": "currency", "Text": "string",
               "LongTextArea": "textarea", "Picklist": "picklist", "DateTime": "datetime",
               "Date": "date"}


def _from_spec(spec: FieldSpec) -> FieldDef:
    return FieldDef(
        name=spec.api_name, type=_SPEC_TYPES[spec.type], label=spec.label,
        length=spec.length or (255 if spec.type == "Picklist" else 0),
        precision=spec.precision or 0, scale=spec.scale or 0, picklist=spec.picklist,
        external_id=spec.external_id, unique=spec.unique, custom=True,
        filterable=spec.type != "LongTextArea",
    )


def _system_fields() -> list[FieldDef]:
    return [
        FieldDef("Id", "id", "Record ID", length=18, nillable=False, createable=False, updateable=False),
        FieldDef("IsDeleted", "boolean", "Deleted", createable=False, updateable=False, nillable=False),
        FieldDef("CreatedDate", "datetime", "Created Date", createable=False, updateable=False, nillable=False),
        FieldDef("LastModifiedDate", "datetime", "Last Modified Date", createable=False, updateable=False, nillable=False),
        FieldDef("SystemModstamp", "datetime", "System Modstamp", createable=False, updateable=False, nillable=False),
    ]


class SObjectSchema:
    """Fields of one sObject, looked up case-insensitively like Salesforce does."""

    def __init__(self, name: str, prefix: str, label: str, fields: Iterable[FieldDef]) -> None:
        self.name = name
        self.prefix = prefix
        self.label = label
        self.fields: dict[str, FieldDef] = OrderedDict()
        for f in fields:
            self.fields[f.name.lower()] = f

    def get(self, name: str) -> FieldDef | None:
        return self.fields.get(name.lower())

    def describe(self, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name, "label": self.label, "labelPlural": self.label + "s", "keyPrefix": self.prefix,
            "custom": False, "createable": True, "updateable": True, "deletable": True, "queryable": True,
            "fields": [f.describe() for f in self.fields.values()],
            "urls": {"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"},
        }


def build_schema() -> dict[str, SObjectSchema]:
    """Account, User and Task as churnflow uses them, plus every field declared in fields.py."""
    custom = {"Account": [], "Task": [], "User": []}  # type: dict[str, list[FieldDef]]
    for spec in FIELDS:
        custom.setdefault(spec.sobject, []).append(_from_spec(spec))
    account = SObjectSchema("Account", "001", "Account", [
        *_system_fields(),
        FieldDef("Name", "string", "Account Name", length=255, nillable=False),
        FieldDef("OwnerId", "reference", "Owner ID", length=18, nillable=False, reference_to=("User",)),
        FieldDef("Industry", "picklist", "Industry", length=255, picklist=(
            "Software", "Retail", "Healthcare", "Finance", "Manufacturing", "Education", "Other")),
        # The org's own renewal date (maintained by CS ops, not by churnflow): read back when
        # CHURNFLOW_SF_RENEWAL_DATE_FIELD names it.
        FieldDef("Renewal_Date__c", "date", "Renewal Date"),
        # An org's own external id (e.g. the billing system's customer number): accounts can
        # be matched by it (CHURNFLOW_SF_ACCOUNT_MATCH_FIELD=Customer_Number__c).
        FieldDef("Customer_Number__c", "string", "Customer Number", length=40, external_id=True, unique=True),
        *custom["Account"],
    ])
    user = SObjectSchema("User", "005", "User", [
        *_system_fields()[:1], *_system_fields()[2:],
        FieldDef("Username", "string", "Username", length=80, nillable=False, unique=True),
        FieldDef("Email", "string", "Email", length=128, nillable=False),
        FieldDef("FirstName", "string", "First Name", length=40),
        FieldDef("LastName", "string", "Last Name", length=80, nillable=False),
        FieldDef("Name", "string", "Full Name", length=121, createable=False, updateable=False),
        FieldDef("IsActive", "boolean", "Active", nillable=False, default=True),
        *custom["User"],
    ])
    task = SObjectSchema("Task", "00T", "Task", [
        *_system_fields(),
        FieldDef("WhatId", "reference", "Related To ID", length=18, reference_to=("Account",)),
        FieldDef("OwnerId", "reference", "Assigned To ID", length=18, nillable=False, reference_to=("User",)),
        FieldDef("Subject", "string", "Subject", length=255),
        FieldDef("Description", "textarea", "Description", length=32000, filterable=False),
        FieldDef("Priority", "picklist", "Priority", length=40, picklist=("High", "Normal", "Low"),
                 nillable=False, default="Normal"),
        FieldDef("Status", "picklist", "Status", length=40, nillable=False, default=NEW_TASK_STATUS, picklist=TASK_STATUSES),
        FieldDef("ActivityDate", "date", "Due Date Only"),
        FieldDef("IsClosed", "boolean", "Closed", createable=False, updateable=False, nillable=False),
        *custom["Task"],
    ])
    return {s.name.lower(): s for s in (account, user, task)}


def now_string() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


def parse_datetime(value: str) -> str | None:
    """Normalise any ISO 8601 datetime to Salesforce's ``YYYY-MM-DDTHH:MM:SS.sss+0000``."""
    text = value.strip()
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    parsed = parsed.astimezone(timezone.utc)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}+0000"


def type_error(fdef: FieldDef, value: Any, source: str) -> RecordError:
    if source == "json":
        sf_type = {"double": "double", "percent": "double", "currency": "double", "datetime": "datetime",
                   "date": "date", "boolean": "boolean"}.get(fdef.type, "string")
        kind = type(value).__name__.upper()
        return RecordError("JSON_PARSER_ERROR", f"Cannot deserialize instance of {sf_type} from VALUE_{kind} value {value} or request may be missing a required field", [fdef.name])
    return RecordError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{fdef.label}: value not of required type: {value}", [fdef.name])

"""Read back from the CRM: Salesforce as the system of record for ownership and renewals.

``pull_crm_accounts`` queries the Accounts churnflow knows (by ``crm_account_id``, in
URI-safe batches), their owners' emails (User by OwnerId) and, when configured, a renewal
date field. It stores them in ``crm_accounts`` and writes the owners into
``accounts.owner_email``, so tasks go to whoever owns the account in Salesforce today.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from churnflow.schema import CRM_ACCOUNTS
from churnflow.settings import Settings
from churnflow.warehouse import read_sql, replace_rows
from crm_sync.client import connect, local_crm
from crm_sync.query import in_clause_queries, query_all
from crm_sync.retry import DEFAULT_RETRY

log = logging.getLogger(__name__)

CRM_ACCOUNTS_TABLE = CRM_ACCOUNTS.name
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


@dataclass
class PullSummary:
    accounts_asked: int
    accounts_found: int
    owners_changed: int
    renewal_dates: int

    def describe(self) -> str:
        return (f"read {self.accounts_found} of {self.accounts_asked} accounts from the CRM; "
                f"{self.owners_changed} owner(s) changed; {self.renewal_dates} renewal date(s)")


def _field(name: str) -> str:
    if not _FIELD.match(name):
        raise ValueError(f"not a Salesforce field name: {name!r}")
    return name


def pull_crm_accounts(engine: sa.Engine, settings: Settings) -> PullSummary:
    """Owners and renewal dates from Salesforce into the warehouse (see module docstring)."""
    accounts = read_sql(engine, "SELECT account_id, crm_account_id, owner_email FROM accounts WHERE crm_account_id IS NOT NULL")
    match = _field(settings.sf_account_match_field)
    renewal = _field(settings.sf_renewal_date_field) if settings.sf_renewal_date_field else None
    fields = ", ".join(dict.fromkeys(["Id", match, "OwnerId", *([renewal] if renewal else [])]))
    with local_crm(settings) if settings.crm == "local" else nullcontext():
        sf = connect(settings)
        records = [
            r
            for soql in in_clause_queries(sf, f"SELECT {fields} FROM Account", match, accounts["crm_account_id"].tolist())
            for r in query_all(sf, soql, DEFAULT_RETRY)
        ]
        owner_ids = sorted({r["OwnerId"] for r in records if r.get("OwnerId")})
        emails = {
            u["Id"]: u["Email"]
            for soql in in_clause_queries(sf, "SELECT Id, Email FROM User", "Id", owner_ids)
            for u in query_all(sf, soql, DEFAULT_RETRY)
        }
    pulled = pd.DataFrame(
        {
            "crm_account_id": [r[match] for r in records],
            "owner_email": [emails.get(r.get("OwnerId")) for r in records],
            "renewal_date": pd.to_datetime([r.get(renewal) if renewal else None for r in records]),
            "pulled_at": pd.Timestamp(datetime.now().replace(microsecond=0)),
        },
    )
    replace_rows(engine, CRM_ACCOUNTS_TABLE, pulled, replace_all=True)
    current = accounts.set_index("crm_account_id")["owner_email"]
    changes = [
        {"owner": row.owner_email, "crm": row.crm_account_id}
        for row in pulled.itertuples()
        if row.owner_email and current.get(row.crm_account_id) != row.owner_email
    ]
    if changes:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE accounts SET owner_email = :owner WHERE crm_account_id = :crm"), changes)
    summary = PullSummary(len(accounts), len(pulled), len(changes), int(pulled["renewal_date"].notna().sum()))
    log.info("crm pull: %s", summary.describe())
    return summary

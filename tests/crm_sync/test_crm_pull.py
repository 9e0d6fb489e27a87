"""Owners and renewal dates read back from the CRM (the system of record for ownership)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from churnflow.demo_data import generate_book, write_book
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from crm_sync.client import connect, local_crm
from crm_sync.pull import pull_crm_accounts
from crm_sync.sync import sync_crm


def test_owner_changes_and_renewal_dates_flow_back_into_the_warehouse(tmp_path: Path) -> None:
    engine: sa.Engine = get_engine(f"duckdb:///{tmp_path / 'w.duckdb'}")
    write_book(engine, generate_book(accounts=60, days=200, seed=8))
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0, sf_renewal_date_field="Renewal_Date__c")
    accounts = read_sql(engine, "SELECT account_id, crm_account_id, owner_email FROM accounts WHERE owner_email IS NOT NULL")
    with local_crm(settings):
        sync_crm(engine, settings, date(2026, 11, 1))  # mirrors the book's accounts and owners into the local org
        sf = connect(settings)
        target = accounts.iloc[0]
        other = next(u for u in sf.query_all("SELECT Id, Email FROM User")["records"] if u["Email"] != target["owner_email"])
        sf.Account.update(target["crm_account_id"], {"OwnerId": other["Id"], "Renewal_Date__c": "2027-01-31"})

        first = pull_crm_accounts(engine, settings)
        # The reassigned account, plus accounts the warehouse had no owner for (the CRM has one).
        ownerless = 60 - len(accounts)
        assert (first.accounts_asked, first.accounts_found, first.owners_changed, first.renewal_dates) == (60, 60, 1 + ownerless, 1)
        owners = read_sql(engine, "SELECT account_id, owner_email FROM accounts").set_index("account_id")["owner_email"]
        assert owners[target["account_id"]] == other["Email"]
        unchanged = accounts.set_index("account_id")["owner_email"].drop(target["account_id"])
        assert (owners[unchanged.index] == unchanged).all()
        pulled = read_sql(engine, "SELECT crm_account_id, renewal_date FROM crm_accounts").set_index("crm_account_id")["renewal_date"]
        assert pd.Timestamp(pulled[target["crm_account_id"]]) == pd.Timestamp("2027-01-31")

        again = pull_crm_accounts(engine, settings)
        assert again.owners_changed == 0 and again.accounts_found == 60

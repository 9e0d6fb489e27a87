"""Write a small "foreign" export of the demo book: the shape of data a real customer sends.

It is built from ``churnflow.demo_data.generate_book(accounts=300, days=540, seed=21)``
and disguised the way real exports are:

* different column names (``CustomerID``, ``ContractRef``, ``ARR`` ...);
* usage keyed by *subscription* (``SubscriptionRef``) rather than by account, so the
  mapping needs a ``query:`` that joins it to the contracts export;
* dates as ``DD/MM/YYYY`` strings (``03/11/2026``), usage times as epoch seconds, ticket
  times as ISO 8601 with a ``Z``;
* booleans as ``True``/``False`` and ``Yes``/``No``; money with thousands separators
  (``"36,346.53"``); capitalised enumerations (``Normal``, ``NPS``);
* a few deliberately bad rows at the end of each file (see :data:`BAD_ROWS`), which the
  ingest must quarantine while loading everything else.

Usage::

    python examples/foreign_export/make_export.py /tmp/foreign_export
    churnflow validate --mapping /tmp/foreign_export/sources.yaml --run-date 2026-11-01
    churnflow ingest   --mapping /tmp/foreign_export/sources.yaml --run-date 2026-11-01

The CSVs (about 29 MB) are generated, never committed; the script copies ``sources.yaml``
next to them because its paths are relative to the mapping file.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from churnflow.demo_data import generate_book

BOOK_ARGS = {"accounts": 300, "days": 540, "seed": 21}
RUN_DATE = "2026-11-01"
"""The day after the book's last observed day: use it as the ingest run date."""

BAD_ROWS: dict[str, list[tuple[str, str]]] = {
    # file: [(canonical field, reason substring)] in the order the bad rows are appended
    "customers.csv": [("account_id", "duplicate account_id"), ("name", "missing required name")],
    "contracts.csv": [
        ("arr", "arr below 0"),
        ("end_date", "end_date not after start_date"),
        ("account_id", "unknown account_id"),
        ("start_date", "not a date"),
    ],
    "usage_by_subscription.csv": [
        ("account_id", "missing required account_id"),
        ("quantity", "quantity below 0"),
        ("occurred_at", "occurred_at after the run date"),
    ],
    "tickets.csv": [
        ("priority", "priority not one of"),
        ("csat", "csat out of range 1-5"),
        ("closed_at", "closed_at before opened_at"),
    ],
    "surveys.csv": [
        ("score", "score out of range 0-10 for kind=nps"),
        ("score", "score out of range 1-5 for kind=csat"),
        ("kind", "kind not one of"),
    ],
}
"""The deliberately bad rows: appended after the good rows of each file, in this order."""


def _dmy(values: pd.Series, with_time: bool = False) -> pd.Series:
    fmt = "%d/%m/%Y %H:%M:%S" if with_time else "%d/%m/%Y"
    return values.dt.strftime(fmt).where(values.notna(), "")


def _money(values: pd.Series) -> pd.Series:
    return values.map(lambda v: f"{v:,.2f}")


def _usage_by_subscription(usage: pd.DataFrame, subs: pd.DataFrame) -> pd.Series:
    """The subscription in force at each usage row (the account's latest started one, else its first)."""
    s = subs[["account_id", "subscription_id", "start_date"]].sort_values("start_date")
    u = usage[["account_id", "occurred_at"]].reset_index().sort_values("occurred_at")
    m = pd.merge_asof(u, s, left_on="occurred_at", right_on="start_date", by="account_id", direction="backward")
    first = s.groupby("account_id")["subscription_id"].first()
    m["subscription_id"] = m["subscription_id"].fillna(m["account_id"].map(first))
    return m.set_index("index")["subscription_id"].reindex(usage.index)


def build_export(book: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The foreign-shaped frames (all text), bad rows included."""
    acc, subs, usage, tickets, surveys = (book[k] for k in ("accounts", "subscriptions", "usage", "tickets", "surveys"))

    customers = pd.DataFrame({
        "CustomerID": acc["account_id"], "Company": acc["name"], "Vertical": acc["industry"],
        "Tier": acc["segment"], "Country": acc["country"], "CustomerSince": _dmy(acc["created_at"], True),
        "CSM": acc["owner_email"].fillna(""), "SFDC_ID": acc["crm_account_id"],
    })
    dup = customers.iloc[[5]].copy()
    nameless = customers.iloc[[6]].assign(CustomerID="ACC900001", Company="")
    customers = pd.concat([customers, dup, nameless], ignore_index=True)

    contracts = pd.DataFrame({
        "ContractRef": subs["subscription_id"], "CustomerID": subs["account_id"], "Plan": subs["plan"],
        "Seats": subs["seats"].astype(str), "ARR": _money(subs["arr"]), "StartDate": _dmy(subs["start_date"]),
        "EndDate": _dmy(subs["end_date"]), "CancelledOn": _dmy(subs["cancelled_at"], True),
        "AutoRenew": subs["auto_renew"].map({True: "True", False: "False"}),
    })
    base = contracts.iloc[0]
    bad = pd.DataFrame([
        {**base, "ContractRef": "SUB-BAD-1", "ARR": "-1,200.00"},
        {**base, "ContractRef": "SUB-BAD-2", "StartDate": "01/06/2026", "EndDate": "01/05/2026"},
        {**base, "ContractRef": "SUB-BAD-3", "CustomerID": "ACC999999"},
        {**base, "ContractRef": "SUB-BAD-4", "StartDate": "31/02/2026"},
    ])
    contracts = pd.concat([contracts, bad], ignore_index=True)

    sub_of = _usage_by_subscription(usage, subs)
    usage_x = pd.DataFrame({
        "SubscriptionRef": sub_of, "EventTime": (usage["occurred_at"].astype("int64") // 1_000_000_000).astype(str),
        "Feature": usage["feature"], "Events": usage["quantity"].map(lambda v: f"{v:,.0f}"),
        "Seconds": usage["duration_s"].map(lambda v: f"{v:,.1f}"), "Errors": usage["errors"].astype(str),
        "User": usage["user_id"],
    })
    ub = usage_x.iloc[0]
    future = str(int(pd.Timestamp("2027-01-05 10:00").timestamp()))
    usage_x = pd.concat([usage_x, pd.DataFrame([
        {**ub, "SubscriptionRef": "SUB-UNKNOWN"},
        {**ub, "Events": "-3"},
        {**ub, "EventTime": future},
    ])], ignore_index=True)

    def iso(values: pd.Series) -> pd.Series:
        return values.dt.strftime("%Y-%m-%dT%H:%M:%SZ").where(values.notna(), "")

    tickets_x = pd.DataFrame({
        "TicketNo": tickets["ticket_id"], "CustomerID": tickets["account_id"], "Opened": iso(tickets["opened_at"]),
        "Closed": iso(tickets["closed_at"]), "Priority": tickets["priority"].str.capitalize(), "Channel": tickets["channel"],
        "FirstResponseMins": tickets["first_response_minutes"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}"),
        "Reopened": tickets["reopened"].map({True: "Yes", False: "No"}),
        "CSAT": tickets["csat"].astype("string").fillna(""),
    })
    tb = tickets_x.iloc[0]
    tickets_x = pd.concat([tickets_x, pd.DataFrame([
        {**tb, "TicketNo": "TKT-BAD-1", "Priority": "Critical"},
        {**tb, "TicketNo": "TKT-BAD-2", "CSAT": "7"},
        {**tb, "TicketNo": "TKT-BAD-3", "Opened": "2026-03-02T10:00:00Z", "Closed": "2026-03-01T10:00:00Z"},
    ])], ignore_index=True)

    surveys_x = pd.DataFrame({
        "ResponseID": surveys["response_id"], "CustomerID": surveys["account_id"],
        "SubmittedOn": _dmy(surveys["submitted_at"], True), "Type": surveys["kind"].str.upper(),
        "Score": surveys["score"].map(lambda v: f"{v:g}"), "Comment": surveys["comment"].fillna(""),
    })
    sb = surveys_x.iloc[0]
    surveys_x = pd.concat([surveys_x, pd.DataFrame([
        {**sb, "ResponseID": "RSP-BAD-1", "Type": "NPS", "Score": "11"},
        {**sb, "ResponseID": "RSP-BAD-2", "Type": "CSAT", "Score": "6"},
        {**sb, "ResponseID": "RSP-BAD-3", "Type": "pulse", "Score": "3"},
    ])], ignore_index=True)

    return {
        "customers.csv": customers, "contracts.csv": contracts, "usage_by_subscription.csv": usage_x,
        "tickets.csv": tickets_x, "surveys.csv": surveys_x,
    }


def bad_row_numbers(export: dict[str, pd.DataFrame]) -> dict[str, list[tuple[int, str, str]]]:
    """(1-based data row, field, reason substring) of every deliberately bad row."""
    out = {}
    for name, bad in BAD_ROWS.items():
        first = len(export[name]) - len(bad) + 1
        out[name] = [(first + i, fld, reason) for i, (fld, reason) in enumerate(bad)]
    return out


def write_export(out_dir: Path) -> dict[str, list[tuple[int, str, str]]]:
    """Generate the export and a copy of ``sources.yaml`` into ``out_dir``; returns :func:`bad_row_numbers`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export = build_export(generate_book(**BOOK_ARGS))
    for name, frame in export.items():
        frame.to_csv(out_dir / name, index=False)
    mapping = Path(__file__).with_name("sources.yaml")
    if mapping.resolve() != (out_dir / "sources.yaml").resolve():
        shutil.copy(mapping, out_dir / "sources.yaml")
    return bad_row_numbers(export)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="Where to write the CSVs and a copy of sources.yaml (outside the repo).")
    args = parser.parse_args()
    bad = write_export(args.out_dir)
    print(f"wrote the foreign export to {args.out_dir}")
    for name, rows in bad.items():
        print(f"  {name}: bad rows {[r for r, _, _ in rows]}")


if __name__ == "__main__":
    main()

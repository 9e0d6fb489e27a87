"""The CS team's view: a read-only HTML page of accounts, health fields and open tasks."""

from __future__ import annotations

import html
from typing import Any

from crm_sync.local.storage import Storage


class StatusPage(Storage):
    """The page served at ``/``."""

    # -- the CS team's view ------------------------------------------------------------------
    def render_page(self) -> str:
        """A read-only HTML page: accounts with their churnflow health fields and open tasks."""
        with self._lock:
            accounts = [r for r in self._data["account"].values() if not r.get("IsDeleted")]
            users = {i: r for i, r in self._data["user"].items()}
            tasks: dict[str, list[dict[str, Any]]] = {}
            for t in self._data["task"].values():
                if not t.get("IsDeleted") and not t.get("IsClosed") and t.get("WhatId"):
                    tasks.setdefault(t["WhatId"], []).append(t)
        esc = html.escape
        colors = {"Green": "#2e7d32", "Yellow": "#f9a825", "Red": "#c62828"}

        def fmt(value: Any, suffix: str = "") -> str:
            if value is None:
                return "&ndash;"
            if isinstance(value, float):
                return esc(f"{value:,.2f}".rstrip("0").rstrip(".") + suffix)
            return esc(str(value) + suffix)

        accounts.sort(key=lambda r: (-(r.get("Churnflow_Churn_Risk__c") or -1), r.get("Name") or ""))
        counts: dict[str, int] = {}
        for acc in accounts:
            band_name = acc.get("Churnflow_Health_Band__c") or "not scored"
            counts[band_name] = counts.get(band_name, 0) + 1
        order = {"Red": 0, "Yellow": 1, "Green": 2}
        band_counts = ", ".join(f"{n} {esc(b)}" for b, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 3)))
        rows = []
        for acc in accounts:
            band = acc.get("Churnflow_Health_Band__c")
            open_tasks = "".join(
                f"<li><b>{esc(t.get('Priority') or '')}</b> {esc(t.get('Subject') or '')} "
                f"<span class=muted>due {esc(t.get('ActivityDate') or '-')} &middot; {esc(users.get(t.get('OwnerId') or '', {}).get('Name', '') or '')}</span></li>"
                for t in sorted(tasks.get(acc["Id"], []), key=lambda t: t.get("ActivityDate") or ""))
            rows.append(
                "<tr>"
                f"<td>{esc(acc.get('Name') or '')}<div class=muted>{esc(acc['Id'])}</div></td>"
                f"<td>{esc(users.get(acc.get('OwnerId') or '', {}).get('Name', '') or '')}</td>"
                f"<td>{fmt(acc.get('Churnflow_Health_Score__c'))}</td>"
                f"<td><span class=band style='background:{colors.get(band or '', '#999')}'>{esc(band or '-')}</span></td>"
                f"<td>{fmt(acc.get('Churnflow_Churn_Risk__c'), '%')}</td>"
                f"<td>{fmt(acc.get('Churnflow_Health_Trend__c'))}</td>"
                f"<td>{fmt(acc.get('Churnflow_ARR_At_Risk__c'))}</td>"
                f"<td class=drivers>{esc(acc.get('Churnflow_Top_Drivers__c') or '')}</td>"
                f"<td>{esc(acc.get('Churnflow_Score_As_Of__c') or '')}<div class=muted>run {esc(acc.get('Churnflow_Scored_At__c') or '-')}</div></td>"
                f"<td><ul>{open_tasks}</ul></td>"
                "</tr>")
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>Local CRM - account health</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;width:100%}"
            "td,th{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left;font-size:14px}"
            ".muted{color:#777;font-size:12px}.band{color:#fff;border-radius:4px;padding:2px 8px}"
            ".drivers{white-space:pre-wrap;max-width:28em}ul{margin:0;padding-left:1.2em}</style></head><body>"
            f"<h1>Account health</h1><p class=muted>{len(accounts)} accounts &middot; {band_counts} &middot; "
            f"{sum(len(v) for v in tasks.values())} open tasks &middot; read-only view of the local Salesforce-compatible CRM</p>"
            "<table><thead><tr><th>Account</th><th>Owner</th><th>Health</th><th>Band</th><th>Churn risk</th>"
            "<th>Trend 30d</th><th>ARR at risk</th><th>Top drivers</th><th>Score as of</th><th>Open tasks</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></body></html>"
        )

"""The digest as HTML (self-contained, phone-width, light and dark mode), plain text and Markdown.

Renderers only format a :class:`digest.report.Digest`: every number and every "not shown
because" reason is decided before they run. :func:`render_html` fills the Jinja template in
``digest/templates`` (autoescaped), :func:`render_text` is the mail's plain-text alternative
and :func:`render_markdown` the Prefect artifact.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Literal

from digest.formatting import fmt_delta, fmt_money, fmt_value
from digest.report import Digest, Metric

TEMPLATES_DIR = Path(__file__).parent / "templates"
HTML_TEMPLATE = "digest.html.j2"


def _jinja_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["money"] = fmt_money
    env.filters["value"] = fmt_value
    env.filters["delta"] = fmt_delta
    return env


def render_html(digest: Digest, *, images: Literal["data", "cid"] = "data") -> str:
    """Self-contained HTML: charts inlined as ``data:`` URIs (files, previews) or ``cid:`` (mail)."""
    srcs = {c.key: (c.data_uri() if images == "data" else f"cid:{c.cid}") for c in digest.charts if c.png}
    return _jinja_env().get_template(HTML_TEMPLATE).render(d=digest, srcs=srcs)


def _wrap(text: str, indent: str = "", width: int = 72) -> str:
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ")


def _change_text(m: Metric, currency: str) -> str:
    return "" if m.change is None else f" ({fmt_delta(m.change, m.unit, currency)} vs last week)"


def _lines(digest: Digest, md: bool) -> list[str]:
    """Shared body of the text and markdown renderers (they differ only in markup)."""
    cur = digest.currency
    h2 = (lambda s: ["", f"## {s}", ""]) if md else (lambda s: ["", s.upper(), "-" * len(s)])
    bullet = "- " if md else "* "
    out: list[str] = [f"# {digest.title}" if md else digest.title, ""]
    if digest.this_date:
        compared = f"compared with {digest.last_date.isoformat()}" if digest.last_date else "no earlier scores to compare"
        out.append(f"Scores of {digest.this_date.isoformat()}, {compared}.")
    if digest.reason:
        out.append(f"Note: {digest.reason}.")
    if digest.highlights:
        out += h2("This week in brief")
        out += [bullet + s for s in digest.highlights]

    out += h2("Headline")
    if digest.headline.note:
        out.append(f"Note: {digest.headline.note}.")
    for m in digest.headline.metrics:
        out.append(f"{bullet}{m.label}: {fmt_value(m.current, m.unit, cur)}{_change_text(m, cur)}")

    out += h2("Top accounts by ARR at risk")
    if not digest.top_accounts.rows:
        out.append(f"Not shown: {digest.top_accounts.reason}.")
    for i, r in enumerate(digest.top_accounts.rows, 1):
        change = "" if r.health_change is None else f", {fmt_delta(r.health_change, 'score')} wow"
        name = f"**{r.name}**" if md else r.name
        was = f", was {r.previous_band}" if r.previous_band and r.previous_band != r.band else ""
        out.append(f"{i}. {name} — {fmt_money(r.arr_at_risk, cur)} at risk of {fmt_money(r.arr, cur)} ({r.band}{was})")
        indent = "   - " if md else "   "
        out.append(f"{indent}Health {r.health}{change} {r.sparkline} · owner {r.owner}")
        out += [indent + ("" if md else "- ") + s for s in r.drivers]

    out += h2("Biggest movers")
    if not digest.movers.movers:
        out.append(f"None: {digest.movers.movers_reason}.")
    for r in digest.movers.movers:
        bands = f"{r.previous_band} → {r.band}" if r.previous_band != r.band else f"still {r.band}"
        out.append(f"{bullet}{r.name}: health {r.previous_health} → {r.health} ({fmt_delta(r.health_change, 'score')}), "
                   f"{bands}, {fmt_money(r.arr_at_risk, cur)} at risk; owner {r.owner}"
                   + (f" — {r.drivers[0]}" if r.drivers else ""))
    out += h2("New red accounts")
    if not digest.movers.new_reds:
        out.append(f"None: {digest.movers.new_reds_reason}.")
    for r in digest.movers.new_reds:
        was = r.previous_band or "not scored"
        out.append(f"{bullet}{r.name}: was {was}, {fmt_money(r.arr_at_risk, cur)} at risk; owner {r.owner}"
                   + (f" — {r.drivers[0]}" if r.drivers else ""))

    out += h2("What drives risk")
    dr = digest.drivers
    if dr.reason:
        out.append(f"Not shown: {dr.reason}.")
    else:
        out.append(f"Share of risk drivers across {dr.at_risk_accounts} yellow and red accounts.")
        if dr.previous_reason:
            out.append(f"No comparison: {dr.previous_reason}.")
        for f in dr.families:
            ch = "" if f.change is None else f" ({fmt_delta(f.change, 'percent')})"
            out.append(f"{bullet}{f.label}: {f.share:.0%}{ch}")
        out.append("### Top features" if md else "Top features:")
        for f in dr.features:
            ch = "" if f.change is None else f" ({fmt_delta(f.change, 'percent')})"
            out.append(f"{bullet}{f.label} [{f.family}]: {f.share:.0%}{ch}, {f.accounts} account(s)")

    out += h2("Outreach")
    o = digest.outreach
    if o.reason:
        out.append(f"Not shown: {o.reason}.")
    if o.playbooks:
        if md:
            out += ["| playbook | created | held out | sent to date | completed |", "|---|---:|---:|---:|---:|"]
        for p in o.playbooks:
            rate = "–" if p.completion_rate is None else f"{p.completion_rate:.0%}"
            if md:
                out.append(f"| {p.playbook} | {p.created} | {p.held_out} | {p.sent_to_date} | {p.completed_to_date} ({rate}) |")
            else:
                out.append(f"{bullet}{p.playbook}: {p.created} created this week (last week {p.previous_created}), "
                           f"{p.held_out} held out; {p.completed_to_date} of {p.sent_to_date} sent completed ({rate})")
    out.append("")
    out.append("### Lift vs holdout" if md else "Lift vs holdout:")
    if not o.lift:
        out.append(f"Not yet: {o.lift_reason}.")
    for l in o.lift:
        caveat = " — small sample, directional only" if l.small_sample else ""
        out.append(f"{bullet}{l.playbook}: churn {l.treated_rate:.0%} with outreach (n={l.treated}) vs "
                   f"{l.holdout_rate:.0%} held out (n={l.holdout}); lift {l.lift * 100:+.1f} pp{caveat}")

    out += h2("Survey pulse")
    s = digest.surveys
    if s.reason:
        out.append(f"Not shown: {s.reason}.")
    else:
        out.append(f"{s.responses} responses this week ({s.previous_responses} last week).")
        for m in s.metrics:
            out.append(f"{bullet}{m.label}: {fmt_value(m.current, m.unit)}{_change_text(m, cur)}")
        if s.verbatims:
            out.append("")
            out.append("### What customers said" if md else "What customers said:")
            for v in s.verbatims:
                out.append(f"{'> ' if md else '  '}\"{v.comment}\" — {v.account} ({v.kind} {v.score:g})")
                if md:
                    out.append("")  # one blockquote per comment
        elif s.comments_withheld:
            out.append(f"{s.comments_withheld} comment(s) withheld for privacy (include_verbatims is off).")

    out += h2("Model health")
    mh = digest.model
    out.append(f"Champion: {mh.model_name or '–'} version {mh.champion or '–'}"
               + (f", scored {mh.scored_at:%Y-%m-%d %H:%M} UTC" if mh.scored_at else ""))
    if mh.realized_auc is not None:
        prev = "" if mh.previous_auc is None else f" (previous check {mh.previous_auc:.3f})"
        out.append(f"Realized AUC: {mh.realized_auc:.3f}{prev}")
    if mh.psi_score is not None:
        out.append(f"Score drift (PSI): {mh.psi_score:.3f}")
    if mh.reason:
        out.append(f"Note: {mh.reason}.")
    if mh.checked_at is not None:
        if mh.drift:
            out.append("Drift flags:")
            out += [f"{bullet}{f.metric} = {f.value:.3f}: {f.detail}" for f in mh.drift]
        else:
            out.append("No drift flags at the latest check.")
    unavailable = [c for c in digest.charts if not c.png]
    if unavailable:
        out += h2("Charts")
        out += [f"{bullet}{c.title}: {c.reason}." for c in unavailable]
    out += ["", f"Generated {digest.generated_at:%Y-%m-%d %H:%M} UTC by churnflow."]
    return out


def render_text(digest: Digest) -> str:
    """The plain-text alternative part: wrapped at 72 columns for any mail client."""
    lines = []
    for line in _lines(digest, md=False):
        if len(line) <= 72:
            lines.append(line)
        else:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(_wrap(line.strip(), indent))
    return "\n".join(lines).strip() + "\n"


def render_markdown(digest: Digest) -> str:
    """Markdown for a Prefect artifact (no images: artifacts should stay small)."""
    out: list[str] = []
    for line in _lines(digest, md=True):
        block = line.startswith(("- ", "   - ", "|", "> ")) or line[:1].isdigit() and ". " in line[:4]
        if not line or block:
            out.append(line)
        else:  # a paragraph or heading: blank lines around it so it never merges into a list
            out += ["", line, ""]
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"

"""How the digest writes numbers, changes, trends and people: shared by every renderer and chart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Unit = Literal["count", "money", "percent", "score", "number"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"
#: A sparkline spans at least this many health points, so a wiggle of a point or two stays a
#: flat line while a real slide fills the glyphs' height.
SPARK_MIN_SPAN = 20


def fmt_money(value: float | None, currency: str = "$") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    sign = "-" if value < 0 else ""
    v = abs(float(value))
    if v >= 1e6:
        return f"{sign}{currency}{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{sign}{currency}{v / 1e3:.1f}k"
    return f"{sign}{currency}{v:,.0f}"


def fmt_value(value: float | None, unit: Unit, currency: str = "$") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if unit == "money":
        return fmt_money(value, currency)
    if unit == "percent":
        return f"{value * 100:.0f}%"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "score":  # NPS-style: always signed
        return f"{value:+.0f}"
    return f"{value:.2f}"


def fmt_delta(value: float | None, unit: Unit, currency: str = "$") -> str:
    """Signed change with an arrow, e.g. ``▲ +$12.0k``; percents become points (pp)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) < 1e-9:
        return "±0"
    arrow = "▲" if value > 0 else "▼"
    sign = "+" if value > 0 else "-"
    v = abs(value)
    if unit == "money":
        body = fmt_money(v, currency)
    elif unit == "percent":
        body = f"{v * 100:.1f} pp"
    elif unit == "count" or unit == "score":
        body = f"{v:,.0f}"
    else:
        body = f"{v:.2f}"
    return f"{arrow} {sign}{body}"


def sparkline(values: Sequence[float]) -> str:
    """A unicode sparkline of the account's own trend: lowest glyph at its lowest value, highest
    at its highest, over a window of at least ``SPARK_MIN_SPAN`` points centred on its range.

    Not a fixed 0-100 scale: most health scores sit in a band 20-30 points wide, which on a
    fixed scale maps to two or three neighbouring glyphs and reads as a solid bar. The level is
    the health number printed beside the line; the line shows the direction."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = max(hi - lo, SPARK_MIN_SPAN)
    bottom = (lo + hi) / 2 - span / 2
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[min(top, max(0, round((v - bottom) / span * top)))] for v in values)


_ACRONYMS = {"nps": "NPS", "csat": "CSAT", "ces": "CES", "arr": "ARR", "top2": "top-2", "psi": "PSI", "auc": "AUC"}


def humanize_feature(name: str) -> str:
    """``csat_top2_box_90d`` -> ``CSAT top-2 box (90 days)``: readable without the catalogue."""
    text = " ".join(_ACRONYMS.get(w.lower(), w) for w in name.replace("_", " ").split())
    for suffix, words in ((" 7d", " (7 days)"), (" 30d", " (30 days)"), (" 90d", " (90 days)"), (" 365d", " (1 year)")):
        if text.endswith(suffix):
            text = text[: -len(suffix)] + words
    return text[:1].upper() + text[1:]


def owner_label(email: str | None, include_contacts: bool) -> str:
    """Initials from the email's local part unless contacts may be shown (privacy: see digest.build)."""
    if not email or not isinstance(email, str):
        return "unassigned"
    if include_contacts:
        return email
    local = email.split("@", 1)[0]
    parts = [p for p in local.replace("_", ".").replace("-", ".").replace("+", ".").split(".") if p and p[0].isalpha()]
    initials = "".join(p[0].upper() for p in parts[:2])
    return initials or "CSM"

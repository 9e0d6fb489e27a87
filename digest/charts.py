"""The digest's charts: band mix, ARR-at-risk trend and risk drivers, as transparent PNGs.

Phone-first (4.8 in wide so 11 pt text stays ~11 px on a 375 px screen) and transparent so
they sit on whatever background a mail client paints, light or dark.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import TYPE_CHECKING

import pandas as pd

from churnflow.vocabulary import BANDS, BANDS_BY_RISK, band_label
from digest.formatting import fmt_money
from digest.report import Chart, Digest

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Presentation colours keyed by band: mid-saturation, readable on both white and near-black.
BAND_COLOURS: dict[str, str] = {"green": "#2f9e5f", "yellow": "#d99a00", "red": "#d64545"}
FAMILY_COLOURS: dict[str, str] = {
    "usage": "#4c78a8",
    "support": "#e45756",
    "perception": "#b279a2",
    "commercial": "#d99a00",
    "lifecycle": "#54a24b",
    "other": "#8c8c8c",
}
CHART_TEXT = "#858c96"  # ~3.4:1 on white, ~5.5:1 on #121212: legible on both

CHART_TITLES = {
    "band_mix": "Accounts by health band, last 12 weeks",
    "arr_at_risk": "ARR at risk, last 12 weeks",
    "drivers": "What drives risk this week",
}


def _figure(height: float = 2.9) -> tuple[Figure, Axes]:
    """A phone-first figure: 4.8 in wide so 11 pt text stays ~11 px on a 375 px screen.

    Built on the Agg canvas directly, not pyplot: no global backend switch, no figure
    registry to leak, and safe to call from worker threads (Prefect task runners).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fig.patch.set_alpha(0.0)
    ax.set_facecolor("none")
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    for spine in ("left", "bottom"):
        ax.spines[spine].set_color(CHART_TEXT)
    ax.tick_params(colors=CHART_TEXT, labelsize=10.5)
    ax.xaxis.label.set_color(CHART_TEXT)
    ax.yaxis.label.set_color(CHART_TEXT)
    ax.grid(axis="y", color=CHART_TEXT, alpha=0.25, linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=200, transparent=True)
    return buf.getvalue()


def _money_axis(ax: Axes, currency: str) -> None:
    from matplotlib.ticker import FuncFormatter

    def short(v: float, _pos: int) -> str:  # tick labels: $1.5M, $500k, $0 (no trailing zeros)
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return f"{currency}{v / scale:.3g}{suffix}"
        return f"{currency}{v:.0f}"

    ax.yaxis.set_major_formatter(FuncFormatter(short))


def _weekly_axes(ax: Axes, labels: list[str], step: int, ylabel: str) -> None:
    """Score weeks along x (every ``step``-th labelled), ``ylabel`` up the side."""
    ax.set_xticks(range(0, len(labels), step), labels[::step])
    ax.set_ylabel(ylabel, fontsize=11)
    ax.set_xlabel("Score date (weekly)", fontsize=11)


def _legend(ax: Axes, **kwargs: object) -> None:
    """A frameless legend above the plot, in the text colour legible on light and dark."""
    legend = ax.legend(frameon=False, loc="lower center", **kwargs)
    for text in legend.get_texts():
        text.set_color(CHART_TEXT)


def build_charts(history: pd.DataFrame, digest: Digest) -> list[Chart]:
    """Band mix, ARR-at-risk trend and driver bars as transparent PNGs with phone-size text."""
    out: list[Chart] = []
    weeks = sorted(history["as_of_date"].unique()) if not history.empty else []
    labels = [pd.Timestamp(d).strftime("%d %b") for d in weeks]
    step = max(1, math.ceil(len(labels) / 6))  # at most ~6 tick labels on a phone

    if len(weeks) >= 2:
        counts = history.pivot_table(index="as_of_date", columns="band", values="account_id", aggfunc="count").reindex(weeks).fillna(0)
        fig, ax = _figure()
        bottom = [0.0] * len(weeks)
        for band in BANDS:  # healthiest at the bottom of the stack
            vals = counts[band].tolist() if band in counts else [0.0] * len(weeks)
            ax.bar(range(len(weeks)), vals, bottom=bottom, color=BAND_COLOURS[band], label=band_label(band), width=0.75)
            bottom = [b + v for b, v in zip(bottom, vals)]
        _weekly_axes(ax, labels, step, "Accounts")
        _legend(ax, ncols=3, fontsize=10.5, bbox_to_anchor=(0.5, 1.0))
        worst = BANDS_BY_RISK[0]
        worst_now = int(counts[worst].iloc[-1]) if worst in counts else 0
        out.append(Chart("band_mix", CHART_TITLES["band_mix"],
                         f"Stacked bars of {', '.join(BANDS[:-1])} and {BANDS[-1]} accounts per week; "
                         f"{worst_now} {worst} in the latest week.", _png(fig)))

        arr = history.groupby("as_of_date")["arr_at_risk"].sum().reindex(weeks)
        worst_arr = history[history["band"] == worst].groupby("as_of_date")["arr_at_risk"].sum().reindex(weeks).fillna(0)
        fig, ax = _figure()
        ax.plot(range(len(weeks)), arr.values, color="#4c78a8", linewidth=2.5, marker="o", markersize=4, label="All accounts")
        ax.plot(range(len(weeks)), worst_arr.values, color=BAND_COLOURS[worst], linewidth=2, linestyle="--",
                label=f"{band_label(worst)} accounts")
        ax.set_ylim(bottom=0)
        _money_axis(ax, digest.currency)
        _weekly_axes(ax, labels, step, "ARR at risk")
        _legend(ax, ncols=2, fontsize=10.5, bbox_to_anchor=(0.5, 1.0))
        out.append(Chart("arr_at_risk", CHART_TITLES["arr_at_risk"],
                         f"Line chart of ARR at risk per week, now {fmt_money(float(arr.iloc[-1]), digest.currency)}.", _png(fig)))
    else:
        reason = "fewer than two weekly score days: no trend to draw yet"
        out.append(Chart("band_mix", CHART_TITLES["band_mix"], CHART_TITLES["band_mix"], None, reason))
        out.append(Chart("arr_at_risk", CHART_TITLES["arr_at_risk"], CHART_TITLES["arr_at_risk"], None, reason))

    feats = digest.drivers.features
    if feats:
        feats = list(reversed(feats))  # largest at the top of a horizontal bar chart
        fig, ax = _figure(height=1.5 + 0.42 * len(feats))
        ax.grid(axis="x", color=CHART_TEXT, alpha=0.25, linewidth=0.8)
        ax.grid(axis="y", visible=False)
        ys = range(len(feats))
        ax.barh(ys, [f.share * 100 for f in feats], color=[FAMILY_COLOURS.get(f.family, FAMILY_COLOURS["other"]) for f in feats], height=0.65)
        from matplotlib.patches import Patch

        handles = [Patch(color=FAMILY_COLOURS.get(fam, FAMILY_COLOURS["other"]), label=fam)
                   for fam in dict.fromkeys(f.family for f in reversed(feats))]
        if all(f.previous_share is not None for f in feats):
            handles.append(ax.scatter([f.previous_share * 100 for f in feats], ys, marker="|", s=260, linewidths=2.5,
                                      color=CHART_TEXT, zorder=3, label="last week"))
        _legend(ax, handles=handles, ncols=3, fontsize=10, bbox_to_anchor=(0.35, 1.0), handlelength=1.2, columnspacing=1.0)
        ax.set_yticks(list(ys), [textwrap.shorten(f.label, 26, placeholder="…") for f in feats], fontsize=10.5)
        ax.set_xlabel("Share of at-risk drivers (%)", fontsize=11)
        out.append(Chart("drivers", CHART_TITLES["drivers"],
                         "Horizontal bars of the features that drive risk most: "
                         + ", ".join(f"{f.label} {f.share:.0%}" for f in reversed(feats)) + ".", _png(fig)))
    else:
        out.append(Chart("drivers", CHART_TITLES["drivers"], CHART_TITLES["drivers"], None,
                         digest.drivers.reason or "no drivers to chart"))
    return out

"""``pareto.png``: the page's accuracy-against-FLOPs chart drawn with matplotlib, from the same
:class:`~.data.ParetoChart`, with every trial (the page may draw a sample)."""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ranksearch.conventions import FLOPS_CONVENTION
from ranksearch.report.data import ParetoChart, Series
from ranksearch.report.text import DEFAULT_METRIC, metric_label

__all__ = ["png"]

_QUOTED_MARKERS = ("D", "s", "^", "P")


def _draw(ax: Any, series: Series) -> None:
    x = series.rows["flops"] / 1e6
    y = series.rows["accuracy"] * 100
    style: dict[str, Any] = {"label": series.short_label}
    if series.role == "dominated":
        ax.scatter(x, y, s=9, color=series.color, alpha=0.35, linewidths=0, zorder=1, **style)
    elif series.role == "lowfi":
        ax.scatter(x, y, s=8, facecolors="none", edgecolors=series.color, linewidths=0.6,
                   zorder=0, **style)
    elif series.role == "truncated":
        ax.scatter(x, y, s=12, marker="x", color=series.color, linewidths=0.8, zorder=2, **style)
    elif series.role == "front":
        ax.plot(x, y, drawstyle="steps-post", color=series.color, linewidth=2, marker="o",
                markersize=5, zorder=4, **style)
    elif series.role == "baseline":
        ax.plot(x, y, linestyle=":", marker="s", markersize=5, color=series.color, zorder=3,
                **style)
    elif series.role == "quoted":
        marker = _QUOTED_MARKERS[series.position % len(_QUOTED_MARKERS)]
        ax.scatter(x, y, marker=marker, s=45, facecolors="none", edgecolors=series.color,
                   linewidths=1.4, zorder=5, **style)
    else:  # the dense reference: a star and its accuracy as a dotted line
        ax.axhline(y.iloc[0], color="#888888", linestyle=":", linewidth=1, zorder=0)
        ax.scatter(x.iloc[:1], y.iloc[:1], marker="*", s=220, color=series.color, zorder=6,
                   **style)


def png(chart: ParetoChart, title: str, metric: str = DEFAULT_METRIC) -> bytes:
    """The front, the cloud of trials, baselines, quoted points and the reference, as PNG,
    the quality axis named after ``metric``.

    Uses the object-oriented Agg canvas rather than pyplot, so no global backend is touched.
    """
    fig = Figure(figsize=(8.5, 5.4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for series in chart.series("flops", sampled=False):
        _draw(ax, series)
    if chart.accuracy_range is not None:
        ax.set_ylim(*chart.accuracy_range)
    ax.set_xlabel("FLOPs (M)")
    ax.set_ylabel(f"{metric_label(metric)} (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#e5e5e5", linewidth=0.7)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="lower right", frameon=True)
    fig.text(0.01, 0.003, FLOPS_CONVENTION, fontsize=6.5, color="#555555", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

"""The plotly figures of the report page, drawn from :class:`~.data.ReportData`."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ranksearch.report.data import (
    BASELINE_COLORS,
    FRONT_COLOR,
    Axis,
    ParetoChart,
    ReportData,
    Series,
)
from ranksearch.report.pareto import LOW_FIDELITY_KIND, kind_label
from ranksearch.report.text import (
    hypervolume_text,
    metric_label,
    metric_title,
    mflops,
    pct,
    times,
)

__all__ = ["Figure", "figures"]

#: One figure of the page: div id, heading, note (HTML) and the figure.
Figure = tuple[str, str, str, go.Figure]

_HOVER = "%{text}<extra></extra>"
_QUOTED_SYMBOLS = ("diamond-open", "square-open", "triangle-up-open", "cross-open")


def figures(data: ReportData) -> list[Figure]:
    """Every figure of the page, in order; those without data are left out."""
    param_columns = [c for c in data.trials.columns if c.startswith("param_")]
    metric = data.metric
    found: list[Figure] = [
        (
            "fig-pareto",
            f"{metric_title(metric)} against FLOPs",
            escape(data.chart.note())
            + " Hover a point for its trial number, parameters and per-layer ranks; the "
            f"dotted line is the dense reference's {escape(metric)}.",
            pareto_figure(data.chart, "flops", "FLOPs (M)", param_columns, metric),
        )
    ]
    if data.has_latency:
        found.append(
            (
                "fig-latency",
                f"{metric_title(metric)} against measured CPU latency",
                "Latency of the compact model, measured on the CPU; only points with a "
                "measurement are drawn. The front drawn is the latency front, computed on "
                "latency; the FLOPs front's other points are drawn with the dominated trials.",
                pareto_figure(data.chart, "latency_ms", "latency (ms)", param_columns, metric),
            )
        )
    if len(data.history):
        found.append(
            (
                "fig-hypervolume",
                "Hypervolume over trials",
                escape(f"Hypervolume {hypervolume_text(metric)}."),
                _hypervolume_figure(data.history),
            )
        )
    if data.importances:
        found.append(
            (
                "fig-importance",
                "Parameter importances",
                "Optuna's PED-ANOVA importance of each search parameter for reaching good "
                "values of each objective, over the complete trials.",
                _importance_figure(data.importances),
            )
        )
    ranks = _ranks_figure(data.front, metric)
    if ranks is not None:
        found.append(
            (
                "fig-ranks",
                "Kept rank per layer of the front points",
                "One row per front point, cheapest at the bottom; empty cells are layers "
                "kept dense.",
                ranks,
            )
        )
    return found


# ---------------------------------------------------------------------------------------------
# Hover texts


def _param_text(record: dict[str, Any], param_columns: list[str]) -> str:
    parts = []
    for column in param_columns:
        value = record[column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{escape(column[len('param_') :])}={escape(shown)}")
    # Several parameters per line keep the hover box compact.
    return "<br>".join(", ".join(parts[i : i + 3]) for i in range(0, len(parts), 3))


def _ranks_text(ranks: Any) -> str:
    if not isinstance(ranks, str) or not ranks:
        return ""
    values = [str(v) for v in json.loads(ranks).values()]
    lines = [" ".join(values[i : i + 16]) for i in range(0, len(values), 16)]
    return "ranks (layer order): " + "<br>".join(lines)


def _hover_texts(series: Series, param_columns: list[str], metric: str) -> list[str]:
    """Hover text per row: what identifies the point, its metrics (the quality named
    ``metric``), and for SVD trials their parameters and per-layer ranks; for quoted points,
    the published result and its source."""
    if series.role == "quoted":
        return [
            f"<b>quoted: {escape(str(r.model))} {escape(str(r.method))}</b><br>"
            f"{pct(r.accuracy)} from {pct(r.base_accuracy)}, "
            f"{times(r.flops_reduction)} FLOPs reduction<br>"
            f"placed at reference FLOPs / quoted reduction<br>{escape(str(r.source))}"
            for r in series.rows.itertuples()
        ]
    texts = []
    # Plain records: Series access per cell would dominate the report's time at 5,000 trials.
    for record in series.rows.to_dict("records"):
        kind = record["kind"]
        if kind == LOW_FIDELITY_KIND:
            texts.append(_low_fidelity_text(record, metric))
            continue
        if kind == "svd":
            head = f"<b>trial #{int(record['number'])}</b>"
        elif kind == "reference":
            head = "<b>dense reference</b>"
        else:
            target = record["target"]
            target_text = "" if math.isnan(target) else f" (target {target:g}×)"
            head = f"<b>{escape(kind_label(kind))}{target_text}</b>"
        lines = [
            head,
            f"{escape(metric)} {pct(record['accuracy'])} "
            f"(test {pct(record['test_accuracy'])})",
            f"{mflops(record['flops'])}, reduction {times(record['flops_reduction'])}",
        ]
        if math.isfinite(record["latency_ms"]):
            lines.append(f"latency {record['latency_ms']:.3g} ms")
        if kind == "svd":
            params = _param_text(record, param_columns)
            ranks = _ranks_text(record["ranks"])
            lines.extend(text for text in (params, ranks) if text)
        texts.append("<br>".join(lines))
    return texts


def _low_fidelity_text(record: dict[str, Any], metric: str) -> str:
    candidate = json.loads(record["candidate"]) if isinstance(record["candidate"], str) else {}
    energy = candidate.get("energy")
    if isinstance(energy, dict):
        energy_text = ", ".join(f"{escape(k)}={v:.3g}" for k, v in energy.items())
    else:
        energy_text = "" if energy is None else f"{energy:.3g}"
    return "<br>".join([
        f"<b>candidate of trial #{int(record['number'])}, before fine-tuning</b>",
        f"proxy {escape(metric)} {pct(record['accuracy'])} (a sample of the validation "
        "split, not fine-tuned)",
        f"{mflops(record['flops'])}, reduction {times(record['flops_reduction'])}",
        f"energy threshold {energy_text}",
    ])


# ---------------------------------------------------------------------------------------------
# Figures


def _marker(series: Series) -> dict[str, Any]:
    color = series.color
    if series.role == "dominated":
        return {"color": color, "size": 6, "opacity": 0.35}
    if series.role == "lowfi":
        return {"color": color, "size": 5, "symbol": "circle-open", "opacity": 0.6}
    if series.role == "truncated":
        return {"color": color, "size": 7, "symbol": "x-thin-open",
                "line": {"width": 1.5, "color": color}}
    if series.role == "front":
        return {"color": color, "size": 9, "line": {"color": "white", "width": 1}}
    if series.role == "baseline":
        return {"color": color, "size": 8, "symbol": "square"}
    if series.role == "quoted":
        symbol = _QUOTED_SYMBOLS[series.position % len(_QUOTED_SYMBOLS)]
        return {"color": color, "size": 11, "symbol": symbol, "line": {"width": 2}}
    return {"color": color, "size": 16, "symbol": "star"}


def pareto_figure(
    chart: ParetoChart, x: Axis, x_title: str, param_columns: list[str],
    metric: str = "accuracy",
) -> go.Figure:
    """The quality (``metric``) against ``x`` (``flops`` in millions, or ``latency_ms``) for
    every point."""
    scale = 1e-6 if x == "flops" else 1.0
    fig = go.Figure()
    for series in chart.series(x):
        rows = series.rows
        kwargs: dict[str, Any] = {
            # Numpy arrays travel as base64 typed arrays in the page: compact and fast to write.
            "x": rows[x].to_numpy(dtype=float) * scale,
            "y": rows["accuracy"].to_numpy(dtype=float) * 100,
            "mode": "markers",
            "name": series.label,
            "uid": f"{series.key}-{x}",
            "text": _hover_texts(series, param_columns, metric),
            "hovertemplate": _HOVER,
            "marker": _marker(series),
        }
        if series.role == "front":
            # hv steps read as "best accuracy within budget".
            kwargs["mode"] = "lines+markers"
            kwargs["line"] = {"shape": "hv", "color": series.color, "width": 2.5}
        elif series.role == "baseline":
            kwargs["mode"] = "lines+markers"
            kwargs["line"] = {"color": series.color, "width": 1.5, "dash": "dot"}
        # The large cloud may need WebGL; the other series are small, so always SVG.
        cloud = series.role in ("dominated", "truncated", "lowfi")
        fig.add_trace(go.Scattergl(**kwargs) if cloud and chart.use_webgl else
                      go.Scatter(**kwargs))
        if series.role == "reference":
            fig.add_hline(y=float(rows["accuracy"].iloc[0] * 100), line_dash="dot",
                          line_color="#888888", line_width=1)
    fig.update_layout(
        xaxis_title=x_title,
        yaxis_title=f"{metric_label(metric)} (%)",
        height=620,
        legend={"orientation": "h", "yanchor": "top", "y": -0.14, "x": 0},
        hovermode="closest",
    )
    if chart.accuracy_range is not None:
        fig.update_yaxes(range=chart.accuracy_range)
    return fig


def _hypervolume_figure(history: pd.DataFrame) -> go.Figure:
    fig = go.Figure(
        go.Scatter(
            x=history["order"].to_numpy(),
            y=history["hypervolume"].to_numpy(),
            mode="lines",
            line={"shape": "hv", "color": FRONT_COLOR, "width": 2},
            customdata=history["number"].to_numpy(dtype=int),
            hovertemplate="after %{x} trials (last: #%{customdata})<br>"
            "hypervolume %{y:.4f}<extra></extra>",
            name="hypervolume",
        )
    )
    fig.update_layout(
        xaxis_title="complete full-budget SVD trials, in order of completion",
        yaxis_title="hypervolume",
        height=360,
    )
    return fig


def _importance_figure(importances: dict[str, dict[str, float]]) -> go.Figure:
    params = sorted(
        {p for values in importances.values() for p in values},
        key=lambda p: max(values.get(p, 0.0) for values in importances.values()),
    )
    colors = (FRONT_COLOR, *BASELINE_COLORS[:2])
    fig = go.Figure()
    for i, (objective, values) in enumerate(importances.items()):
        fig.add_trace(
            go.Bar(
                y=params,
                x=[round(values.get(p, 0.0), 4) for p in params],
                orientation="h",
                name=objective,
                marker_color=colors[i % len(colors)],
            )
        )
    fig.update_layout(
        barmode="group",
        xaxis_title="importance (PED-ANOVA, normalised per objective)",
        height=max(280, 70 + 36 * len(params) * max(1, len(importances))),
        # Bars are sorted with the least important at the bottom, where the legend goes.
        legend={"x": 0.99, "xanchor": "right", "y": 0.02, "yanchor": "bottom"},
        yaxis={"automargin": True},
    )
    return fig


def _ranks_figure(front: pd.DataFrame, metric: str) -> go.Figure | None:
    """Heatmap of the kept rank per layer (columns) for each front point (rows, by FLOPs)."""
    ranks = [json.loads(r) if isinstance(r, str) and r else {} for r in front["ranks"]]
    layers: dict[str, None] = {}
    for entry in ranks:
        layers.update(dict.fromkeys(entry))
    if not layers:
        return None
    names = list(layers)
    rows = [
        f"#{int(n)} · {f / 1e6:.3g} M · {100 * a:.2f} %"
        for n, f, a in zip(front["number"], front["flops"], front["accuracy"], strict=True)
    ]
    z = [[entry.get(name) for name in names] for entry in ranks]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=rows,
            colorscale="Viridis",
            colorbar={"title": {"text": "rank"}},
            hovertemplate="%{y}<br>%{x}: rank %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        height=min(1400, max(320, 160 + 22 * len(rows))),
        xaxis={"title": "layer", "tickangle": -60, "automargin": True},
        yaxis={"title": f"front point (trial · FLOPs · {metric})", "automargin": True},
    )
    return fig

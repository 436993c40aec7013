"""The Pareto report: index.html, pareto.png, pareto.csv, trials.csv and summary.md.

``index.html`` is one self-contained file: plotly.js is embedded inline and the page makes no
network request (no CDN, no web fonts, no MathJax), so it opens offline from disk.
"""

from __future__ import annotations

import io
import json
import math
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ranksearch import literature
from ranksearch.conventions import FLOPS_CONVENTION
from ranksearch.report.pareto import (
    eligible_mask,
    hypervolume_history,
    kind_label,
    param_importances,
    pareto_front,
    reduction_table,
    reference_accuracy,
    reference_flops,
    trials_frame,
)
from ranksearch.runs import atomic_write_bytes, atomic_write_text

__all__ = ["write_report", "write_report_for_run", "BASELINE_BUDGET_RULE", "HYPERVOLUME_REFERENCE"]

#: How baselines are trained, stated in the report so that the comparison can be judged.
BASELINE_BUDGET_RULE = (
    "each baseline is fine-tuned for the same number of epochs as one SVD trial's "
    "SVD-training plus fine-tuning, from the same reference"
)

#: Reference point of the hypervolume, in the normalised space (accuracy, FLOPs / reference).
HYPERVOLUME_REFERENCE: tuple[float, float] = (0.0, 1.0)

_HYPERVOLUME_TEXT = (
    "in the normalised space (top-1 accuracy as a fraction, FLOPs / reference FLOPs) with "
    "reference point (accuracy 0, FLOPs ratio 1.0 = the dense model): the mean, over FLOPs "
    "budgets up to the dense model's, of the best accuracy found within that budget"
)

# Dominated points drawn at most in the interactive chart: beyond this the page grows past
# a few MB and the browser slows, while the shape of the cloud is already clear. The front
# is always drawn in full.
MAX_DOMINATED_POINTS = 2000
# Above this many points a chart switches to WebGL (scattergl); below, SVG is crisper and
# works where WebGL is unavailable.
_WEBGL_THRESHOLD = 1000
# Failed or truncated trials listed at most in the page table (trials.csv has them all).
_MAX_TABLE_ROWS = 500

_FRONT_COLOR = "#1f5fbf"
_CLOUD_COLOR = "#7fa7e0"
_REFERENCE_COLOR = "#111111"
_BASELINE_COLORS = ("#e8710a", "#188038", "#9334e6", "#b0413e", "#00838f", "#827717")
_QUOTED_SYMBOLS = ("diamond-open", "square-open", "triangle-up-open", "cross-open")
_MPL_QUOTED_MARKERS = ("D", "s", "^", "P")


# ---------------------------------------------------------------------------------------------
# Inputs beyond the study


def _model_and_dataset(study: optuna.Study, run_dir: Path | None) -> tuple[str | None, str | None]:
    """Model and dataset names of the study, for matching literature points.

    Read from the run's config: ``run_dir/config.yaml``, else the YAML text the search keeps
    in the study's ``config`` user attr (``model.name`` and ``data.name``).
    """
    import yaml

    config_path = Path(run_dir) / "config.yaml" if run_dir is not None else None
    if config_path is not None and config_path.is_file():
        text = config_path.read_text()
    else:
        text = study.user_attrs.get("config")
    try:
        config = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        config = None
    if not isinstance(config, dict):
        return None, None

    def name_of(section: Any) -> str | None:
        name = section.get("name") if isinstance(section, dict) else section
        return str(name) if name else None

    return name_of(config.get("model")), name_of(config.get("data"))


def _literature(model: str | None, dataset: str | None) -> pd.DataFrame:
    """Published points for ``model`` on ``dataset`` (empty when none apply)."""
    if not model or not dataset:
        return pd.DataFrame()
    return literature.points(model, dataset)


# ---------------------------------------------------------------------------------------------
# Formatting


def _pct(value: float, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f} %"


def _mflops(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value / 1e6:.4g} MFLOPs"


def _times(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}×"


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


def _hover_texts(frame: pd.DataFrame, param_columns: list[str]) -> pd.Series:
    """Hover text per row (same index): what identifies the point, its metrics, and for SVD
    trials their parameters and per-layer ranks."""
    texts = []
    # Plain records: Series access per cell would dominate the report's time at 5,000 trials.
    for record in frame.to_dict("records"):
        kind = record["kind"]
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
            f"accuracy {_pct(record['accuracy'])} (test {_pct(record['test_accuracy'])})",
            f"{_mflops(record['flops'])}, reduction {_times(record['flops_reduction'])}",
        ]
        if math.isfinite(record["latency_ms"]):
            lines.append(f"latency {record['latency_ms']:.3g} ms")
        if kind == "svd":
            params = _param_text(record, param_columns)
            ranks = _ranks_text(record["ranks"])
            lines.extend(text for text in (params, ranks) if text)
        texts.append("<br>".join(lines))
    return pd.Series(texts, index=frame.index, dtype=object)


# ---------------------------------------------------------------------------------------------
# What is drawn


class _Points:
    """The rows of the trials frame split by how they are drawn.

    ``front``: the SVD front. ``dominated`` and ``truncated``: the other complete SVD trials
    drawn in the page (eligible for the front or not), a fixed random sample of at most
    ``max_dominated`` of ``others`` (all of them, drawn in pareto.png). ``baselines``: each
    baseline kind's points by FLOPs. ``accuracy_range``: the initial accuracy axis (%).
    """

    def __init__(self, df: pd.DataFrame, literature: pd.DataFrame, max_dominated: int) -> None:
        eligible = eligible_mask(df)
        complete = (df["kind"] == "svd") & (df["state"] == "COMPLETE")
        plottable = complete & np.isfinite(df["accuracy"]) & np.isfinite(df["flops"])
        self.front = pareto_front(df)
        self.others = df[plottable & ~df.index.isin(self.front.index)]
        sample = self.others
        if len(sample) > max_dominated:
            # A fixed seed keeps the page identical between runs of the same study.
            sample = sample.sample(n=max_dominated, random_state=0).sort_index()
        self.dominated = sample[eligible.loc[sample.index]]
        self.truncated = sample[~eligible.loc[sample.index]]
        self.complete_count = int(complete.sum())
        self.unplottable = int((complete & ~plottable).sum())
        self.shown = len(self.front) + len(sample)
        self.baselines = {
            kind: df[(df["kind"] == kind) & eligible].sort_values("flops")
            for kind in sorted(k for k in df["kind"].unique() if k.startswith("baseline:"))
        }
        self.reference = df[df["kind"] == "reference"]
        self.accuracy_range = self._accuracy_range(literature)
        drawn = pd.concat(
            [self.front, self.dominated, self.truncated, self.reference, *self.baselines.values()]
        )
        param_columns = [c for c in df.columns if c.startswith("param_")]
        self.hover = _hover_texts(drawn, param_columns)
        self.use_webgl = self.shown > _WEBGL_THRESHOLD

    def _accuracy_range(self, literature: pd.DataFrame) -> list[float] | None:
        """Accuracy axis (%) framing the front, baselines, reference and quoted points: trials
        far below them (a diverging corner of the space) would squash the region that matters.
        None (autorange) without a front."""
        if self.front.empty:
            return None
        parts = [self.front["accuracy"], self.reference["accuracy"]]
        parts.extend(b["accuracy"] for b in self.baselines.values())
        if not literature.empty:
            parts.append(literature["accuracy"])
        focus = pd.concat([p for p in parts if len(p)], ignore_index=True)
        focus = focus[np.isfinite(focus)]
        high = max(
            float(self.others["accuracy"].max()) if len(self.others) else -1.0, float(focus.max())
        )
        low = float(focus.min())
        pad = max(0.005, 0.05 * (high - low))
        return [100 * (low - pad), 100 * (high + pad)]

    def note(self) -> str:
        """What the accuracy-vs-FLOPs chart shows, in words."""
        note = (
            f"{self.shown:,} of {self.complete_count:,} complete SVD trials drawn "
            f"({len(self.front):,} on the front)"
        )
        if len(self.others) > len(self.dominated) + len(self.truncated):
            note += (
                f"; the others are a random sample (seed 0) of "
                f"{len(self.dominated) + len(self.truncated):,} out of {len(self.others):,}, "
                "while the front is drawn in full"
            )
        if self.unplottable:
            note += f"; {self.unplottable:,} complete trials have no accuracy or FLOPs"
        if self.accuracy_range is not None:
            below = int((self.others["accuracy"] * 100 < self.accuracy_range[0]).sum())
            if below:
                note += (
                    f"; {below:,} trials lie below the initial accuracy axis "
                    "(double-click the chart to show everything)"
                )
        return note + "."


def _scatter(use_webgl: bool, **kwargs: Any) -> go.BaseTraceType:
    return go.Scattergl(**kwargs) if use_webgl else go.Scatter(**kwargs)


def _pareto_figure(
    points: _Points, literature: pd.DataFrame, ref_flops: float, x: str, x_title: str
) -> go.Figure:
    """Accuracy against ``x`` (``flops`` in millions, or ``latency_ms``) for every point."""
    scale = 1e-6 if x == "flops" else 1.0
    fig = go.Figure()

    # Numpy arrays travel as base64 typed arrays in the page: compact and fast to write.
    def xs(frame: pd.DataFrame) -> np.ndarray:
        return frame[x].to_numpy(dtype=float) * scale

    def ys(frame: pd.DataFrame) -> np.ndarray:
        return frame["accuracy"].to_numpy(dtype=float) * 100

    def texts(frame: pd.DataFrame) -> list[str]:
        return points.hover.loc[frame.index].tolist()

    hover = "%{text}<extra></extra>"
    dominated, truncated, front = points.dominated, points.truncated, points.front
    if x != "flops":
        # Only points with a measured latency belong on the latency chart.
        dominated, truncated, front = (f[np.isfinite(f[x])] for f in (dominated, truncated, front))
    fig.add_trace(
        _scatter(
            points.use_webgl,
            x=xs(dominated),
            y=ys(dominated),
            mode="markers",
            name="SVD trials (dominated)",
            uid=f"svd-dominated-{x}",
            text=texts(dominated),
            hovertemplate=hover,
            marker={"color": _CLOUD_COLOR, "size": 6, "opacity": 0.35},
        )
    )
    if len(truncated):
        fig.add_trace(
            _scatter(
                points.use_webgl,
                x=xs(truncated),
                y=ys(truncated),
                mode="markers",
                name="SVD trials (truncated or diverged, never on the front)",
                uid=f"svd-truncated-{x}",
                text=texts(truncated),
                hovertemplate=hover,
                marker={
                    "color": "#9e9e9e",
                    "size": 7,
                    "symbol": "x-thin-open",
                    "line": {"width": 1.5, "color": "#9e9e9e"},
                },
            )
        )
    # The front is small, so it is always SVG: hv steps read as "best accuracy within budget".
    fig.add_trace(
        go.Scatter(
            x=xs(front),
            y=ys(front),
            # Against latency the FLOPs front is not a staircase: its points only.
            mode="lines+markers" if x == "flops" else "markers",
            name="SVD training: Pareto front" if x == "flops" else "SVD training: FLOPs front",
            uid=f"svd-front-{x}",
            text=texts(front),
            hovertemplate=hover,
            line={"shape": "hv", "color": _FRONT_COLOR, "width": 2.5},
            marker={"color": _FRONT_COLOR, "size": 9, "line": {"color": "white", "width": 1}},
        )
    )
    for i, (kind, frame) in enumerate(points.baselines.items()):
        frame = frame[np.isfinite(frame[x])]
        if frame.empty:
            continue
        color = _BASELINE_COLORS[i % len(_BASELINE_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=xs(frame),
                y=ys(frame),
                mode="lines+markers",
                name=kind_label(kind),
                uid=f"{kind.replace(':', '-')}-{x}",
                text=texts(frame),
                hovertemplate=hover,
                line={"color": color, "width": 1.5, "dash": "dot"},
                marker={"color": color, "size": 8, "symbol": "square"},
            )
        )
    if x == "flops" and not literature.empty and math.isfinite(ref_flops):
        for i, (method, frame) in enumerate(literature.groupby("method", sort=True)):
            quoted = [
                f"<b>quoted: {escape(str(r.model))} {escape(str(method))}</b><br>"
                f"{_pct(r.accuracy)} from {_pct(r.base_accuracy)}, "
                f"{_times(r.flops_reduction)} FLOPs reduction<br>"
                f"placed at reference FLOPs / quoted reduction<br>{escape(str(r.source))}"
                for r in frame.itertuples()
            ]
            fig.add_trace(
                go.Scatter(
                    x=ref_flops / frame["flops_reduction"].to_numpy(dtype=float) * scale,
                    y=frame["accuracy"].to_numpy(dtype=float) * 100,
                    mode="markers",
                    name=f"quoted: {method}",
                    uid=f"quoted-{i}",
                    text=quoted,
                    hovertemplate=hover,
                    marker={
                        "color": "#444444",
                        "size": 11,
                        "symbol": _QUOTED_SYMBOLS[i % len(_QUOTED_SYMBOLS)],
                        "line": {"width": 2},
                    },
                )
            )
    reference = points.reference[np.isfinite(points.reference[x])]
    if len(reference):
        fig.add_trace(
            go.Scatter(
                x=xs(reference),
                y=ys(reference),
                mode="markers",
                name="dense reference",
                uid=f"reference-{x}",
                text=texts(reference),
                hovertemplate=hover,
                marker={"color": _REFERENCE_COLOR, "size": 16, "symbol": "star"},
            )
        )
        fig.add_hline(
            y=float(reference["accuracy"].iloc[0] * 100),
            line_dash="dot",
            line_color="#888888",
            line_width=1,
        )
    fig.update_layout(
        xaxis_title=x_title,
        yaxis_title="top-1 accuracy (%)",
        height=620,
        legend={"orientation": "h", "yanchor": "top", "y": -0.14, "x": 0},
        hovermode="closest",
    )
    if points.accuracy_range is not None:
        fig.update_yaxes(range=points.accuracy_range)
    return fig


def _hypervolume_figure(history: pd.DataFrame) -> go.Figure:
    fig = go.Figure(
        go.Scatter(
            x=history["order"].to_numpy(),
            y=history["hypervolume"].to_numpy(),
            mode="lines",
            line={"shape": "hv", "color": _FRONT_COLOR, "width": 2},
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
    fig = go.Figure()
    for i, (objective, values) in enumerate(importances.items()):
        fig.add_trace(
            go.Bar(
                y=params,
                x=[round(values.get(p, 0.0), 4) for p in params],
                orientation="h",
                name=objective,
                marker_color=(_FRONT_COLOR, _BASELINE_COLORS[0], _BASELINE_COLORS[1])[i % 3],
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


def _ranks_figure(front: pd.DataFrame) -> go.Figure | None:
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
        yaxis={"title": "front point (trial · FLOPs · accuracy)", "automargin": True},
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Tables


def _reduction_header(table: pd.DataFrame) -> list[str]:
    drops = [c[len("within_") :] for c in table.columns if c.startswith("within_")]
    return ["method", *(f"within {d} pt" for d in drops)]


def _reduction_rows(table: pd.DataFrame) -> list[list[str]]:
    columns = [c for c in table.columns if c.startswith("within_")]
    return [[str(r["method"]), *(_times(r[c]) for c in columns)] for _, r in table.iterrows()]


def _html_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return (
        f'<table id="{table_id}" data-testid="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _excluded_trials(df: pd.DataFrame) -> pd.DataFrame:
    """SVD trials that ran but may not stand on the front (failed, pruned, truncated,
    diverged), with the reason why."""
    svd = df[(df["kind"] == "svd") & df["state"].isin(["COMPLETE", "FAIL", "PRUNED"])]
    excluded = svd[~eligible_mask(svd)].copy()
    reasons = []
    for row in excluded.itertuples():
        if isinstance(row.fail_reason, str) and row.fail_reason:
            reasons.append(row.fail_reason)
        elif row.state == "PRUNED":
            reasons.append("pruned (stopped early)")
        elif row.state == "FAIL":
            reasons.append("failed (no reason recorded)")
        elif row.status == "diverged":
            reasons.append("diverged")
        elif not row.full_budget:
            reasons.append("truncated: not trained on the full budget")
        else:
            reasons.append("no accuracy or FLOPs recorded")
    excluded["reason"] = reasons
    return excluded.sort_values("number")


def _excluded_rows(excluded: pd.DataFrame) -> list[list[str]]:
    return [
        [f"#{int(r.number)}", str(r.state), r.reason, _pct(r.accuracy), _mflops(r.flops)]
        for r in excluded.head(_MAX_TABLE_ROWS).itertuples()
    ]


# ---------------------------------------------------------------------------------------------
# The page

_CSS = """
:root { --ink: #1d2433; --muted: #5f6b7a; --line: #e3e7ee; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f8fb; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 10px; }
p, li { color: var(--ink); }
.sub { color: var(--muted); margin: 0 0 20px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr));
  gap: 12px; margin-bottom: 20px; }
.card { background: white; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 21px; font-weight: 600; margin-top: 2px; }
.card .d { color: var(--muted); font-size: 13px; }
section { background: white; border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 20px; margin-bottom: 18px; }
.note { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); }
th { background: #f0f3f8; font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
.scroll { max-height: 420px; overflow: auto; }
code { background: #f0f3f8; padding: 1px 4px; border-radius: 4px; font-size: 13px; }
a { color: var(--accent); }
"""

# Installed before any figure script: records errors so that the self-check below can
# report them (the browser test reads it; a reader never sees it).
_ERROR_TRAP = """<script>
window.__ranksearchErrors = [];
window.addEventListener("error", function (e) {
  window.__ranksearchErrors.push(String(e.message));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__ranksearchErrors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
</script>"""

# Counts what the browser actually plotted: points of the SVD traces (uid "svd-*") of the
# Pareto chart, and the figures rendered, written as JSON into #ranksearch-selfcheck once
# every figure has been drawn.
_SELF_CHECK = """<pre id="ranksearch-selfcheck" data-testid="ranksearch-selfcheck" hidden></pre>
<script>
(function () {
  function check(attempt) {
    var plots = document.querySelectorAll(".ranksearch-figure .plotly-graph-div");
    var drawn = Array.prototype.filter.call(plots, function (gd) { return gd._fullLayout; });
    if (drawn.length < plots.length && attempt < 200) {
      setTimeout(function () { check(attempt + 1); }, 50);
      return;
    }
    var gd = document.getElementById("fig-pareto");
    var svdPoints = 0;
    (gd && gd._fullData ? gd._fullData : []).forEach(function (trace) {
      if (String(trace.uid || "").indexOf("svd-") === 0) { svdPoints += trace._length; }
    });
    // Points drawn as SVG elements (none for WebGL traces, which paint a canvas).
    var svgPoints = gd ? gd.querySelectorAll('g.trace[class*="tracesvd-"] path.point').length : 0;
    document.getElementById("ranksearch-selfcheck").textContent = JSON.stringify({
      svd_points: svdPoints, svg_points: svgPoints, webgl: __WEBGL__,
      figures: plots.length, drawn: drawn.length,
      errors: window.__ranksearchErrors
    });
  }
  window.addEventListener("load", function () { check(0); });
})();
</script>"""


def _figure_html(fig: go.Figure, div_id: str, first: bool) -> str:
    fig.update_layout(
        template="plotly_white", margin={"t": 30, "r": 20}, font={"family": "system-ui, sans-serif"}
    )
    return pio.to_html(
        fig,
        include_plotlyjs=first,  # plotly.js inline once, so the page works offline
        include_mathjax=False,
        full_html=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def _card(key: str, value: str, detail: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{escape(key)}</div>'
        f'<div class="v">{escape(value)}</div><div class="d">{escape(detail)}</div></div>'
    )


def _state_counts(df: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in df.loc[df["kind"] == "svd", "state"].value_counts().items()}


def _page(
    *,
    title: str,
    subtitle: str,
    df: pd.DataFrame,
    points: _Points,
    figures: list[tuple[str, str, str, go.Figure]],
    reduction: pd.DataFrame,
    excluded: pd.DataFrame,
    hypervolume: float,
    literature_note: str,
) -> str:
    ref_acc, ref_flops = reference_accuracy(df), reference_flops(df)
    counts = _state_counts(df)
    svd_row = reduction[reduction["kind"] == "svd"] if "kind" in reduction else reduction
    best_1pt = float(svd_row["within_1"].iloc[0]) if len(svd_row) else math.nan
    cards = "".join(
        [
            _card("dense reference", _pct(ref_acc), _mflops(ref_flops)),
            _card(
                "SVD trials",
                f"{sum(counts.values()):,}",
                ", ".join(f"{n:,} {s.lower()}" for s, n in sorted(counts.items())),
            ),
            _card("Pareto front", f"{len(points.front):,} points", "complete, full budget"),
            _card("best within 1 pt", _times(best_1pt), "FLOPs reduction, SVD training"),
            _card("hypervolume", f"{hypervolume:.4f}", "reference point (acc 0, FLOPs 1.0×)"),
        ]
    )
    sections = []
    for i, (div_id, heading, note, fig) in enumerate(figures):
        sections.append(
            f'<section class="ranksearch-figure" id="section-{div_id}"><h2>{escape(heading)}</h2>'
            f"{_figure_html(fig, div_id, first=i == 0)}"
            f'<p class="note">{note}</p></section>'
        )
        if i == 0:
            header = _reduction_header(reduction)
            sections.append(
                "<section><h2>Largest FLOPs reduction within a given accuracy drop</h2>"
                + _html_table(header, _reduction_rows(reduction), "reduction-table")
                + '<p class="note">FLOPs reduction = reference FLOPs / point FLOPs, best over '
                "the complete full-budget points whose validation accuracy is at most the "
                "given number of percentage points below the dense reference; — where none "
                "qualifies.</p></section>"
            )
    excluded_note = (
        f" (first {_MAX_TABLE_ROWS} of {len(excluded):,}; all are in trials.csv)"
        if len(excluded) > _MAX_TABLE_ROWS
        else ""
    )
    excluded_html = (
        '<div class="scroll">'
        + _html_table(
            ["trial", "state", "reason", "accuracy", "FLOPs"],
            _excluded_rows(excluded),
            "excluded-table",
        )
        + "</div>"
        if len(excluded)
        else "<p>None: every finished trial was trained on the full budget.</p>"
    )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="ranksearch-points" content="{points.shown}">
<meta name="ranksearch-complete" content="{points.complete_count}">
<meta name="ranksearch-front" content="{len(points.front)}">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
{_ERROR_TRAP}
<main>
<h1>{escape(title)}</h1>
<p class="sub">{escape(subtitle)} · generated {generated}</p>
<div class="cards">{cards}</div>
{"".join(sections)}
<section><h2>Failed and truncated trials (never on the front)</h2>
<p class="note" style="margin:0 0 8px">{len(excluded):,} trials{excluded_note}.</p>
{excluded_html}</section>
<section><h2>How to read this report</h2><ul>
<li><b>FLOPs</b>: {escape(FLOPS_CONVENTION)}, measured on the compact model.</li>
<li><b>Accuracy</b>: top-1 on the held-out validation split (the search objective);
test accuracy is in the hover boxes and <code>trials.csv</code>.</li>
<li><b>Front</b>: complete trials trained on the full budget that no other such trial beats
in both accuracy and FLOPs; early-stopped, truncated, diverged and failed trials are never
on it.</li>
<li><b>Baselines</b>: filter pruning with Torch-Pruning; {escape(BASELINE_BUDGET_RULE)}.</li>
<li><b>Quoted</b> points: {escape(literature_note)}</li>
<li><b>Hypervolume</b>: {escape(_HYPERVOLUME_TEXT)}.</li>
<li><b>Files</b>: <a href="trials.csv">trials.csv</a> (every point, with its kind),
<a href="pareto.csv">pareto.csv</a> (the front), <a href="pareto.png">pareto.png</a>,
<a href="summary.md">summary.md</a>.</li>
</ul></section>
</main>
{_SELF_CHECK.replace("__WEBGL__", json.dumps(points.use_webgl))}
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------
# pareto.png


def _png(points: _Points, literature: pd.DataFrame, ref_flops: float, title: str) -> bytes:
    """The front, the cloud of trials, baselines, quoted points and the reference, as PNG.

    Uses the object-oriented Agg canvas rather than pyplot, so no global backend is touched.
    """
    fig = Figure(figsize=(8.5, 5.4), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    others = points.others
    eligible = eligible_mask(others)
    ax.scatter(
        others.loc[eligible, "flops"] / 1e6,
        others.loc[eligible, "accuracy"] * 100,
        s=9,
        color=_CLOUD_COLOR,
        alpha=0.35,
        linewidths=0,
        label="SVD trials",
        zorder=1,
    )
    if (~eligible).any():
        ax.scatter(
            others.loc[~eligible, "flops"] / 1e6,
            others.loc[~eligible, "accuracy"] * 100,
            s=12,
            marker="x",
            color="#9e9e9e",
            linewidths=0.8,
            label="truncated or diverged",
            zorder=2,
        )
    front = points.front
    ax.plot(
        front["flops"] / 1e6,
        front["accuracy"] * 100,
        drawstyle="steps-post",
        color=_FRONT_COLOR,
        linewidth=2,
        marker="o",
        markersize=5,
        label="SVD training: Pareto front",
        zorder=4,
    )
    for i, (kind, frame) in enumerate(points.baselines.items()):
        ax.plot(
            frame["flops"] / 1e6,
            frame["accuracy"] * 100,
            linestyle=":",
            marker="s",
            markersize=5,
            color=_BASELINE_COLORS[i % len(_BASELINE_COLORS)],
            label=kind_label(kind),
            zorder=3,
        )
    if not literature.empty and math.isfinite(ref_flops):
        for i, (method, frame) in enumerate(literature.groupby("method", sort=True)):
            ax.scatter(
                ref_flops / frame["flops_reduction"] / 1e6,
                frame["accuracy"] * 100,
                marker=_MPL_QUOTED_MARKERS[i % len(_MPL_QUOTED_MARKERS)],
                s=45,
                facecolors="none",
                edgecolors="#444444",
                linewidths=1.4,
                label=f"quoted: {method}",
                zorder=5,
            )
    if len(points.reference):
        ref = points.reference.iloc[0]
        ax.axhline(ref["accuracy"] * 100, color="#888888", linestyle=":", linewidth=1, zorder=0)
        ax.scatter(
            [ref["flops"] / 1e6],
            [ref["accuracy"] * 100],
            marker="*",
            s=220,
            color=_REFERENCE_COLOR,
            label="dense reference",
            zorder=6,
        )
    if points.accuracy_range is not None:
        ax.set_ylim(*points.accuracy_range)
    ax.set_xlabel("FLOPs (M)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#e5e5e5", linewidth=0.7)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="lower right", frameon=True)
    fig.text(0.01, 0.003, FLOPS_CONVENTION, fontsize=6.5, color="#555555", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# summary.md


def _summary(
    *,
    title: str,
    subtitle: str,
    df: pd.DataFrame,
    points: _Points,
    reduction: pd.DataFrame,
    hypervolume: float,
    hv_trials: int,
    excluded: pd.DataFrame,
) -> str:
    reference = df[df["kind"] == "reference"]
    ref_line = (
        f"- Dense reference: validation accuracy {_pct(reference['accuracy'].iloc[0])}, "
        f"test accuracy {_pct(reference['test_accuracy'].iloc[0])}, "
        f"{_mflops(reference['flops'].iloc[0])}, "
        f"{reference['params'].iloc[0]:,.0f} parameters."
        if len(reference)
        else "- Dense reference: not recorded in the study."
    )
    counts = _state_counts(df)
    baselines = df[df["kind"].str.startswith("baseline:")]
    lines = [
        f"# {title}",
        "",
        subtitle,
        "",
        ref_line,
        f"- SVD trials: {sum(counts.values())} ("
        + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        + f"); {len(excluded)} failed, pruned, truncated or diverged, never on the front.",
        f"- Pareto front: {len(points.front)} points (pareto.csv).",
        f"- Baseline runs: {len(baselines)}"
        + (
            " ("
            + ", ".join(f"{m} {n}" for m, n in sorted(baselines["method"].value_counts().items()))
            + ")"
            if len(baselines)
            else ""
        )
        + ".",
        "",
        "## Largest FLOPs reduction within a given drop of the reference accuracy",
        "",
        _markdown_table(_reduction_header(reduction), _reduction_rows(reduction))
        if len(reduction)
        else "No points.",
        "",
        "FLOPs reduction = reference FLOPs / point FLOPs; drops in percentage points of "
        "validation accuracy; — where no point qualifies.",
        "",
        "## Hypervolume",
        "",
        f"{hypervolume:.4f} after {hv_trials} complete full-budget SVD trials, "
        f"{_HYPERVOLUME_TEXT}.",
        "",
        "## Conventions",
        "",
        f"- {FLOPS_CONVENTION}.",
        "- Accuracy: top-1 on the held-out validation split (the search objective); test "
        "accuracy is in trials.csv.",
        f"- Baselines: {BASELINE_BUDGET_RULE}.",
        "- The front holds only complete trials trained on the full budget.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point


def write_report(
    study: optuna.Study,
    run_dir: Path | None,
    out_dir: Path,
    *,
    title: str | None = None,
    model: str | None = None,
    dataset: str | None = None,
    max_dominated: int = MAX_DOMINATED_POINTS,
) -> Path:
    """Write the Pareto report of ``study`` into ``out_dir`` and return ``out_dir/index.html``.

    Files: ``index.html`` (self-contained, offline), ``pareto.png``, ``pareto.csv`` (the SVD
    front), ``trials.csv`` (every point, with its ``kind``) and ``summary.md``; each is
    written atomically. Baselines are read from ``run_dir/baselines`` (none when ``run_dir``
    is None). ``model`` and ``dataset`` select the quoted literature points; by default they
    are read from the run's config (``run_dir/config.yaml`` or the study's ``config``
    attr). At most ``max_dominated`` non-front trials are drawn in ``index.html`` (a fixed
    random sample; the page says so); ``pareto.png`` and the CSV files hold every trial.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study, run_dir)
    if model is None or dataset is None:
        found_model, found_dataset = _model_and_dataset(study, run_dir)
        model, dataset = model or found_model, dataset or found_dataset
    title = title or (
        f"{model} on {dataset}: SVD training Pareto report"
        if model and dataset
        else f"{study.study_name}: SVD training Pareto report"
    )
    subtitle = f"study {study.study_name}" + (f" · {model} · {dataset}" if model else "")

    literature = _literature(model, dataset)
    points = _Points(df, literature, max_dominated)
    ref_acc, ref_flops = reference_accuracy(df), reference_flops(df)
    reduction = reduction_table(df, ref_acc) if math.isfinite(ref_acc) else pd.DataFrame()
    history = hypervolume_history(df, HYPERVOLUME_REFERENCE)
    hypervolume = float(history["hypervolume"].iloc[-1]) if len(history) else 0.0
    excluded = _excluded_trials(df)
    literature_note = (
        "published results for the same model and dataset, placed at this reference's FLOPs "
        "divided by the quoted reduction, at the quoted accuracy (reached from the quoted "
        "dense accuracy, given with the source in the hover box)."
        if not literature.empty
        else "none apply to this model and dataset."
    )

    figures: list[tuple[str, str, str, go.Figure]] = [
        (
            "fig-pareto",
            "Accuracy against FLOPs",
            escape(points.note())
            + " Hover a point for its trial number, parameters and per-layer ranks; the "
            "dotted line is the dense reference's accuracy.",
            _pareto_figure(points, literature, ref_flops, "flops", "FLOPs (M)"),
        )
    ]
    if np.isfinite(df.loc[df["kind"] != "reference", "latency_ms"]).any():
        figures.append(
            (
                "fig-latency",
                "Accuracy against measured CPU latency",
                "Latency of the compact model, measured on the CPU; only points with a "
                "measurement are drawn. The front drawn is the FLOPs front.",
                _pareto_figure(points, literature, ref_flops, "latency_ms", "latency (ms)"),
            )
        )
    if len(history):
        figures.append(
            (
                "fig-hypervolume",
                "Hypervolume over trials",
                escape(f"Hypervolume {_HYPERVOLUME_TEXT}."),
                _hypervolume_figure(history),
            )
        )
    importances = param_importances(study)
    if importances:
        figures.append(
            (
                "fig-importance",
                "Parameter importances",
                "Optuna's PED-ANOVA importance of each search parameter for reaching good "
                "values of each objective, over the complete trials.",
                _importance_figure(importances),
            )
        )
    ranks_figure = _ranks_figure(points.front)
    if ranks_figure is not None:
        figures.append(
            (
                "fig-ranks",
                "Kept rank per layer of the front points",
                "One row per front point, cheapest at the bottom; empty cells are layers "
                "kept dense.",
                ranks_figure,
            )
        )

    page = _page(
        title=title,
        subtitle=subtitle,
        df=df,
        points=points,
        figures=figures,
        reduction=reduction,
        excluded=excluded,
        hypervolume=hypervolume,
        literature_note=literature_note,
    )
    summary = _summary(
        title=title,
        subtitle=subtitle,
        df=df,
        points=points,
        reduction=reduction,
        hypervolume=hypervolume,
        hv_trials=len(history),
        excluded=excluded,
    )
    atomic_write_text(out_dir / "trials.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "pareto.csv", points.front.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", summary)
    atomic_write_bytes(out_dir / "pareto.png", _png(points, literature, ref_flops, title))
    index = out_dir / "index.html"
    # The page last: its presence means the report is whole.
    atomic_write_text(index, page)
    return index


def write_report_for_run(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of the study in ``run_dir`` (``ranksearch report``); return ``out_dir``.

    ``out_dir`` defaults to ``reports/<study name>``. Model and dataset (for the quoted
    literature points) come from the run's config.
    """
    from ranksearch.search import open_run_study

    run, config, study = open_run_study(run_dir)
    out = Path(out_dir) if out_dir is not None else Path("reports") / config.name
    write_report(study, run.path, out, model=config.model.name, dataset=config.data.name)
    return out

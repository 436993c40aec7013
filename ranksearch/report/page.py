"""``index.html``: the report page, from the package's template, style sheet and scripts
(``ranksearch/report/templates``) and the plotly figures of :mod:`.figures`.

The page is one self-contained file: plotly.js is embedded inline and the page makes no
network request (no CDN, no web fonts, no MathJax), so it opens offline from disk.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from functools import cache
from html import escape
from importlib import resources
from string import Template

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from ranksearch.conventions import FLOPS_CONVENTION
from ranksearch.report.data import ReportData
from ranksearch.report.figures import figures
from ranksearch.report.text import (
    DEFAULT_METRIC,
    hypervolume_text,
    metric_note,
    metric_title,
    mflops,
    pct,
    reduction_header,
    reduction_rows,
    times,
    trial_counts,
)

__all__ = ["page"]

# Failed or truncated trials listed at most in the page table (trials.csv has them all).
MAX_TABLE_ROWS = 500


@cache
def _template(name: str) -> str:
    """A file of ``ranksearch/report/templates`` (package data)."""
    return resources.files("ranksearch.report").joinpath("templates", name).read_text("utf-8")


def page(data: ReportData) -> str:
    """The HTML of ``index.html``."""
    sections = []
    for i, (div_id, heading, note, fig) in enumerate(figures(data)):
        sections.append(
            f'<section class="ranksearch-figure" id="section-{div_id}"><h2>{escape(heading)}</h2>'
            f"{_figure_html(fig, div_id, first=i == 0)}"
            f'<p class="note">{note}</p></section>'
        )
        if i == 0:
            sections.append(_reduction_section(data.reduction, data.metric))
            if len(data.latency_reduction):
                sections.append(_reduction_section(data.latency_reduction, data.metric,
                                                   "latency", data.latency_source))
    excluded = data.excluded
    literature_note = (
        "published results for the same model and dataset, placed at this reference's FLOPs "
        "divided by the quoted reduction, at the quoted accuracy (reached from the quoted "
        "dense accuracy, given with the source in the hover box)."
        if not data.quoted_points.empty
        else "none apply to this model and dataset."
    )
    return Template(_template("page.html")).substitute(
        points=data.chart.shown,
        complete=data.chart.complete_count,
        front=len(data.front),
        title=escape(data.title),
        subtitle=escape(data.subtitle),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        css=_template("report.css"),
        error_trap=_template("error_trap.js"),
        self_check=_template("self_check.js"),
        webgl=json.dumps(data.chart.use_webgl),
        cards=_cards(data),
        sections="".join(sections),
        excluded_count=_excluded_count(excluded),
        excluded_note=(
            f" (first {MAX_TABLE_ROWS} of {len(excluded):,}; all are in trials.csv)"
            if len(excluded) > MAX_TABLE_ROWS
            else ""
        ),
        excluded_table=_excluded_table(excluded, data.metric),
        metric=escape(data.metric),
        metric_title=escape(metric_title(data.metric)),
        metric_note=escape(metric_note(data.metric)),
        flops_convention=escape(FLOPS_CONVENTION),
        baseline_rule=escape(data.baseline_rule),
        literature_note=escape(literature_note),
        hypervolume_text=escape(hypervolume_text(data.metric)),
    )


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


def _cards(data: ReportData) -> str:
    reduction = data.reduction
    trials_run, states = trial_counts(data.state_counts)
    svd_row = reduction[reduction["kind"] == "svd"] if "kind" in reduction else reduction
    best_1pt = float(svd_row["within_1"].iloc[0]) if len(svd_row) else math.nan
    short = "acc" if data.metric == DEFAULT_METRIC else data.metric
    return "".join(
        [
            _card("dense reference", pct(data.reference_accuracy), mflops(data.reference_flops)),
            _card(
                "SVD trials",
                f"{trials_run:,}",
                states,
            ),
            _card("Pareto front", f"{len(data.front):,} points", "complete, full budget"),
            _card("best within 1 pt", times(best_1pt), "FLOPs reduction, SVD training"),
            _card("hypervolume", f"{data.hypervolume:.4f}", f"reference point ({short} 0, "
                  "FLOPs 1.0×)"),
        ]
    )


def _html_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return (
        f'<table id="{table_id}" data-testid="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _reduction_section(reduction: pd.DataFrame, metric: str, axis: str = "flops",
                       timed: str = "") -> str:
    what, ratio = (("FLOPs reduction", "reference FLOPs / point FLOPs") if axis == "flops" else
                   ("measured CPU speedup", "reference latency / point latency, measured on "
                    f"the deployed models, {escape(timed)}"))
    return (
        f"<section><h2>Largest {what} within a given {escape(metric)} drop</h2>"
        + _html_table(reduction_header(reduction), reduction_rows(reduction),
                      f"reduction-table-{axis}" if axis != "flops" else "reduction-table")
        + f'<p class="note">{what[0].upper() + what[1:]} = {ratio}, best over '
        f"the complete full-budget points whose validation {escape(metric)} is at most the "
        "given number of percentage points below the dense reference; — where none "
        "qualifies.</p></section>"
    )


def _excluded_count(excluded: pd.DataFrame) -> str:
    trials = int((excluded["kind"] == "svd").sum())
    runs = len(excluded) - trials
    text = f"{trials:,} trials"
    return text + (f" and {runs} failed baseline run{'s' if runs > 1 else ''}" if runs else "")


def _excluded_table(excluded: pd.DataFrame, metric: str) -> str:
    if not len(excluded):
        return "<p>None: every finished trial was trained on the full budget.</p>"
    rows = [
        [r.label, str(r.state), r.reason, pct(r.accuracy), mflops(r.flops)]
        for r in excluded.head(MAX_TABLE_ROWS).itertuples()
    ]
    table = _html_table(["trial", "state", "reason", metric, "FLOPs"], rows, "excluded-table")
    return f'<div class="scroll">{table}</div>'

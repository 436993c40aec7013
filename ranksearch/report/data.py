"""What the report shows, shaped once from a study and its run directory; the renderers (the
plotly page, pareto.png, summary.md) only draw it.

:func:`report_data` reads the study into a :class:`ReportData`; its :class:`ParetoChart` is the
accuracy-against-cost chart as a list of :class:`Series` (which rows, how named, which colour),
drawn by both :mod:`.figures` (plotly) and :mod:`.png` (matplotlib), as Optuna's
``_ParetoFrontInfo`` is by its plotly and matplotlib modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import optuna
import pandas as pd

from ranksearch import config as cfg
from ranksearch import literature
from ranksearch.dominance import nondominated
from ranksearch.report.pareto import (
    LOW_FIDELITY_KIND,
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
from ranksearch.report.text import DEFAULT_METRIC, baseline_rule
from ranksearch.report.timings import latency_source

__all__ = [
    "ReportData", "ParetoChart", "Series", "report_data", "HYPERVOLUME_REFERENCE",
    "MAX_DOMINATED_POINTS", "FRONT_COLOR", "BASELINE_COLORS",
]

#: Reference point of the hypervolume, in the normalised space (accuracy, FLOPs / reference).
HYPERVOLUME_REFERENCE: tuple[float, float] = (0.0, 1.0)
# Dominated points drawn at most in the interactive chart: beyond this the page grows past
# a few MB and the browser slows, while the shape of the cloud is already clear. The front
# is always drawn in full.
MAX_DOMINATED_POINTS = 2000
# Above this many points a chart switches to WebGL (scattergl); below, SVG is crisper and
# works where WebGL is unavailable.
WEBGL_THRESHOLD = 1000

FRONT_COLOR = "#1f5fbf"
CLOUD_COLOR = "#7fa7e0"
TRUNCATED_COLOR = "#9e9e9e"
LOW_FIDELITY_COLOR = "#a9c4eb"
QUOTED_COLOR = "#444444"
REFERENCE_COLOR = "#111111"
BASELINE_COLORS = ("#e8710a", "#188038", "#9334e6", "#b0413e", "#00838f", "#827717")

Role = Literal["dominated", "truncated", "lowfi", "front", "baseline", "quoted", "reference"]
Axis = Literal["flops", "latency_ms"]


@dataclass(frozen=True)
class Series:
    """Points drawn alike, e.g. one baseline method's runs."""

    role: Role
    label: str
    key: str
    """Stable id: the page's trace uid (with the axis appended)."""
    rows: pd.DataFrame
    """Rows of the trials frame with their index; for ``quoted``, the published points with
    ``flops`` placed at the reference's FLOPs / quoted reduction."""
    color: str
    position: int = 0
    """Index among the series of its role (marker cycles)."""
    brief: str = ""
    """A shorter label, for the legend of a static image; the label when empty."""

    @property
    def short_label(self) -> str:
        return self.brief or self.label


@dataclass(frozen=True)
class ParetoChart:
    """Accuracy against FLOPs (or latency) of every point: the SVD front, the other complete
    SVD trials, each baseline method, published (quoted) points and the dense reference.

    ``sample`` is the index of the non-front trials the page draws: all of ``others``, or a
    fixed random sample of ``max_dominated`` of them. ``accuracy_range`` is the initial
    accuracy axis (%), None (autorange) without a front.
    """

    front: pd.DataFrame
    others: pd.DataFrame
    sample: pd.Index
    eligible: pd.Series
    baselines: dict[str, pd.DataFrame]
    quoted: list[Series]
    reference: pd.DataFrame
    low_fidelity: pd.DataFrame
    """Sweep candidates evaluated without fine-tuning (proxy accuracy)."""
    complete_count: int
    unplottable: int
    accuracy_range: list[float] | None = field(default=None)

    @property
    def shown(self) -> int:
        """SVD trials the page draws."""
        return len(self.front) + len(self.sample)

    @property
    def use_webgl(self) -> bool:
        return self.shown > WEBGL_THRESHOLD

    def series(self, axis: Axis = "flops", *, sampled: bool = True) -> list[Series]:
        """What is drawn against ``axis``, in drawing order: only rows with a value on that
        axis, and quoted points only against FLOPs. With ``sampled``, the non-front trials
        are the page's sample; else all of them. The cloud and the front are always listed
        (maybe empty); other series only when they hold a point."""
        others = self.others.loc[self.sample] if sampled else self.others
        eligible = self.eligible.loc[others.index]
        front, front_label = self.front, "SVD training: Pareto front"
        if axis != "flops":
            # The front on this axis, computed on it: the FLOPs front drawn against latency
            # would hide points that are slower in FLOPs but faster in time.
            pool = pd.concat([self.front,
                              self.others[self.eligible.loc[self.others.index]]])
            pool = pool[np.isfinite(pool[axis].to_numpy(dtype=float))]
            front = pool[nondominated(pool["accuracy"], pool[axis])].sort_values(axis)
            # The FLOPs front's points off this front are drawn with the others.
            others = pd.concat([others, self.front]).sort_index()
            others = others[~others.index.isin(front.index)]
            eligible = self.eligible.loc[others.index]
            front_label = "SVD training: latency front"
        listed = [
            Series("lowfi", "SVD candidates before fine-tuning (low fidelity, never on the "
                   "front)", "svd-lowfi", self.low_fidelity, LOW_FIDELITY_COLOR,
                   brief="before fine-tuning"),
            Series("dominated", "SVD trials (dominated)", "svd-dominated", others[eligible],
                   CLOUD_COLOR, brief="SVD trials"),
            Series("truncated", "SVD trials (truncated, diverged or outside the constraints; "
                   "never on the front)",
                   "svd-truncated", others[~eligible], TRUNCATED_COLOR,
                   brief="truncated, diverged or infeasible"),
            Series("front", front_label, "svd-front", front, FRONT_COLOR),
        ]
        listed.extend(
            Series("baseline", kind_label(kind), kind.replace(":", "-"), frame.sort_values(axis),
                   BASELINE_COLORS[i % len(BASELINE_COLORS)], i)
            for i, (kind, frame) in enumerate(self.baselines.items())
        )
        if axis == "flops":
            listed.extend(self.quoted)
        listed.append(Series("reference", "dense reference", "reference", self.reference,
                             REFERENCE_COLOR))
        drawn = []
        for s in listed:
            rows = s.rows[np.isfinite(s.rows[axis].to_numpy(dtype=float))]
            if len(rows) or s.role in ("dominated", "front"):
                drawn.append(dataclasses.replace(s, rows=rows))
        return drawn

    def note(self) -> str:
        """What the accuracy-vs-FLOPs chart of the page shows, in words."""
        note = (
            f"{self.shown:,} of {self.complete_count:,} complete SVD trials drawn "
            f"({len(self.front):,} on the front)"
        )
        if len(self.others) > len(self.sample):
            note += (
                f"; the others are a random sample (seed 0) of {len(self.sample):,} out of "
                f"{len(self.others):,}, while the front is drawn in full"
            )
        if self.unplottable:
            note += f"; {self.unplottable:,} complete trials have no accuracy or FLOPs"
        if self.accuracy_range is not None:
            low = self.accuracy_range[0]
            below = int((self.others["accuracy"] * 100 < low).sum())
            if below:
                note += (
                    f"; {below:,} trials lie below the initial accuracy axis "
                    "(double-click the chart to show everything)"
                )
            below = int((self.low_fidelity["accuracy"] * 100 < low).sum())
            if below:
                note += (f"; {below:,} candidates before fine-tuning lie below the initial "
                         "accuracy axis")
        return note + "."


def pareto_chart(df: pd.DataFrame, front: pd.DataFrame, quoted_points: pd.DataFrame,
                 max_dominated: int) -> ParetoChart:
    """The chart of the trials frame ``df`` (its SVD ``front`` given), with the published
    points ``quoted_points`` (columns of :func:`ranksearch.literature.points`)."""
    eligible = eligible_mask(df)
    complete = (df["kind"] == "svd") & (df["state"] == "COMPLETE")
    plottable = complete & np.isfinite(df["accuracy"]) & np.isfinite(df["flops"])
    others = df[plottable & ~df.index.isin(front.index)]
    sample = others.index
    if len(others) > max_dominated:
        # A fixed seed keeps the page identical between runs of the same study.
        sample = others.sample(n=max_dominated, random_state=0).sort_index().index
    reference = df[df["kind"] == "reference"]
    ref_flops = reference_flops(df)
    quoted = []
    if not quoted_points.empty and np.isfinite(ref_flops):
        for i, (method, frame) in enumerate(quoted_points.groupby("method", sort=True)):
            rows = frame.assign(flops=ref_flops / frame["flops_reduction"], latency_ms=np.nan)
            quoted.append(Series("quoted", f"quoted: {method}", f"quoted-{i}", rows,
                                 QUOTED_COLOR, i))
    chart = ParetoChart(
        front=front,
        others=others,
        sample=sample,
        eligible=eligible,
        baselines={
            kind: df[(df["kind"] == kind) & eligible].sort_values("flops")
            for kind in sorted(k for k in df["kind"].unique() if k.startswith("baseline:"))
        },
        quoted=quoted,
        reference=reference,
        low_fidelity=df[(df["kind"] == LOW_FIDELITY_KIND) & np.isfinite(df["accuracy"])
                        & np.isfinite(df["flops"])],
        complete_count=int(complete.sum()),
        unplottable=int((complete & ~plottable).sum()),
    )
    return dataclasses.replace(chart, accuracy_range=_accuracy_range(chart, quoted_points))


def _latency_reduction(df: pd.DataFrame, ref_accuracy: float) -> pd.DataFrame:
    """:func:`reduction_table` on ``latency_speedup`` = reference latency / point latency."""
    ref_latency = df.loc[df["kind"] == "reference", "latency_ms"]
    if not np.isfinite(ref_accuracy) or ref_latency.empty or not np.isfinite(
            ref_latency.iloc[0]) or not np.isfinite(df["latency_ms"]).sum() > 1:
        return pd.DataFrame()
    timed = df.assign(latency_speedup=ref_latency.iloc[0] / df["latency_ms"])
    return reduction_table(timed, ref_accuracy, column="latency_speedup")


def _accuracy_range(chart: ParetoChart, quoted_points: pd.DataFrame) -> list[float] | None:
    """Accuracy axis (%) framing the front, baselines, reference and quoted points: trials far
    below them (a diverging corner of the space) would squash the region that matters."""
    if chart.front.empty:
        return None
    parts = [chart.front["accuracy"], chart.reference["accuracy"]]
    parts.extend(b["accuracy"] for b in chart.baselines.values())
    if not quoted_points.empty:
        parts.append(quoted_points["accuracy"])
    focus = pd.concat([p for p in parts if len(p)], ignore_index=True)
    focus = focus[np.isfinite(focus)]
    # Nothing is hidden above the axis: not a dominated trial, nor a low-fidelity point.
    high = max([float(focus.max())] + [float(frame["accuracy"].max())
                                       for frame in (chart.others, chart.low_fidelity)
                                       if len(frame)])
    low = float(focus.min())
    pad = max(0.005, 0.05 * (high - low))
    return [100 * (low - pad), 100 * (high + pad)]


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows. ``trials`` is :func:`~.pareto.trials_frame`; ``front``
    its SVD front; ``excluded`` the SVD trials that may not stand on it and the failed
    baseline runs, with a ``reason`` and a ``label``;
    ``metric`` the name of the study's quality metric (the ``accuracy`` columns hold it)."""

    title: str
    subtitle: str
    metric: str
    trials: pd.DataFrame
    front: pd.DataFrame
    chart: ParetoChart
    quoted_points: pd.DataFrame
    reference_accuracy: float
    reference_flops: float
    reduction: pd.DataFrame
    latency_reduction: pd.DataFrame
    """The same table on measured latency (reference latency / point latency); empty when no
    point has a latency."""
    latency_source: str
    """How the latencies were timed (:func:`~.timings.latency_source`)."""
    history: pd.DataFrame
    hypervolume: float
    excluded: pd.DataFrame
    importances: dict[str, dict[str, float]]
    state_counts: dict[str, int]
    baseline_rule: str
    """How the baselines were trained (:func:`~.text.baseline_rule`)."""

    @property
    def has_latency(self) -> bool:
        """Whether any point but the reference has a measured latency."""
        latency = self.trials.loc[self.trials["kind"] != "reference", "latency_ms"]
        return bool(np.isfinite(latency).any())


def report_data(
    study: optuna.Study,
    run_dir: Path | None,
    *,
    title: str | None = None,
    model: str | None = None,
    dataset: str | None = None,
    metric: str | None = None,
    max_dominated: int = MAX_DOMINATED_POINTS,
) -> ReportData:
    """The report of ``study``, with the baselines of ``run_dir`` (none when None); see
    :func:`ranksearch.report.write_report` for the arguments."""
    config = _study_config(study, run_dir)
    df = trials_frame(study, run_dir, config.baselines if config is not None else None)
    if config is not None:
        model = model or config.model.name
        dataset = dataset or config.data.name
        metric = metric or config.metric.name
    title = title or (
        f"{model} on {dataset}: SVD training Pareto report"
        if model and dataset
        else f"{study.study_name}: SVD training Pareto report"
    )
    quoted_points = literature.points(model, dataset) if model and dataset else pd.DataFrame()
    front = pareto_front(df)
    ref_acc = reference_accuracy(df)
    history = hypervolume_history(df, HYPERVOLUME_REFERENCE)
    return ReportData(
        title=title,
        subtitle=f"study {study.study_name}" + (f" · {model} · {dataset}" if model else ""),
        metric=metric or DEFAULT_METRIC,
        trials=df,
        front=front,
        chart=pareto_chart(df, front, quoted_points, max_dominated),
        quoted_points=quoted_points,
        reference_accuracy=ref_acc,
        reference_flops=reference_flops(df),
        reduction=reduction_table(df, ref_acc) if np.isfinite(ref_acc) else pd.DataFrame(),
        latency_reduction=_latency_reduction(df, ref_acc),
        latency_source=latency_source(run_dir),
        history=history,
        hypervolume=float(history["hypervolume"].iloc[-1]) if len(history) else 0.0,
        excluded=_excluded_trials(df),
        importances=param_importances(study),
        state_counts={
            str(k): int(v) for k, v in df.loc[df["kind"] == "svd", "state"].value_counts().items()
        },
        baseline_rule=baseline_rule(config.baselines if config is not None else None),
    )


def _study_config(study: optuna.Study, run_dir: Path | None) -> cfg.StudyConfig | None:
    """The study's config, for its model and dataset names (matching literature points) and
    its metric's name: the run's ``config.yaml``, else the config the search keeps in the
    study's ``config`` user attr. None when neither is there or valid: the report then quotes
    nothing and names the metric accuracy."""
    config_path = Path(run_dir) / "config.yaml" if run_dir is not None else None
    try:
        if config_path is not None and config_path.is_file():
            return cfg.load(config_path)
        if isinstance(study.user_attrs.get("config"), str):
            return cfg.loads(study.user_attrs["config"], "the study's config")
    except cfg.ConfigError:
        pass
    return None


def _excluded_trials(df: pd.DataFrame) -> pd.DataFrame:
    """SVD trials that ran but may not stand on the front (failed, pruned, truncated,
    diverged, outside the constraints), then the baseline runs that failed, with the reason
    why and a ``label`` naming each (``#12``, ``slimming 2x (baseline)``)."""
    svd = df[(df["kind"] == "svd") & df["state"].isin(["COMPLETE", "FAIL", "PRUNED"])]
    excluded = svd[~eligible_mask(svd)].sort_values("number")
    failed_baselines = df[df["kind"].str.startswith("baseline:") & (df["state"] == "FAIL")]
    excluded = pd.concat([excluded, failed_baselines.sort_values(["method", "target"])])
    excluded["label"] = [f"#{int(row.number)}" if row.kind == "svd"
                         else f"{row.method} {row.target:g}x (baseline)"
                         for row in excluded.itertuples()]
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
        elif not row.feasible:
            reasons.append("outside the study's constraints")
        else:
            reasons.append("no accuracy or FLOPs recorded")
    excluded["reason"] = reasons
    return excluded

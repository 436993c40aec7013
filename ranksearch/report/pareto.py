"""The tables behind the Pareto report, built with pandas from an Optuna study and a run directory.

Every point of the report is one row of :func:`trials_frame`: the dense reference, every SVD
trial and every baseline run, told apart by the ``kind`` column (``reference``, ``svd``,
``baseline:<method>``). Accuracies are fractions (0-1) and FLOPs are absolute counts; only the
charts convert them to percent and millions.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ranksearch import config as cfg
from ranksearch.dominance import hypervolume_2d, nondominated
from ranksearch.objectives import OBJECTIVE_NAMES
from ranksearch.report.timings import use_timings

__all__ = [
    "METRIC_COLUMNS", "LOW_FIDELITY_KIND", "eligible_mask", "nondominated", "kind_label",
    "reference_accuracy", "reference_flops", "trials_frame", "pareto_front", "fronts_by_kind",
    "reduction_table", "hypervolume_2d", "hypervolume_history", "param_importances",
]

#: Metric columns of :func:`trials_frame`, in order; ``param_<name>`` columns follow them.
METRIC_COLUMNS: tuple[str, ...] = (
    "kind",
    "number",
    "state",
    "status",
    "accuracy",
    "test_accuracy",
    "flops",
    "flops_reduction",
    "params",
    "latency_ms",
    "wall_time_s",
    "full_budget",
    "feasible",
    "fail_reason",
    "datetime_complete",
    "method",
    "target",
    "epochs",
    "ranks",
    "candidate",
    "spectrum_rank_before",
    "spectrum_rank_after",
)

_NUMERIC_COLUMNS = tuple(c for c in METRIC_COLUMNS if c not in (
    "kind", "state", "status", "full_budget", "feasible", "fail_reason", "datetime_complete",
    "method", "ranks", "candidate"))

#: ``kind`` of the threshold candidates a multi-fidelity sweep evaluated without fine-tuning.
LOW_FIDELITY_KIND = "svd-proxy"

# Accuracy comparisons against "reference - drop" allow for float rounding of the drop
# (0.9174 - 0.005 is not exactly 0.9124 in binary).
_ACCURACY_TOLERANCE = 1e-9


def _number(value: Any) -> float:
    """``value`` as a float, NaN when it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _reference_row(reference: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "reference",
        "state": "COMPLETE",
        "status": "complete",
        "accuracy": _number(reference.get("accuracy")),
        "test_accuracy": _number(reference.get("test_accuracy")),
        "flops": _number(reference.get("flops")),
        "flops_reduction": 1.0,
        "params": _number(reference.get("params")),
        "latency_ms": _number(reference.get("latency_ms")),
        "wall_time_s": _number(reference.get("wall_time_s")),
        "full_budget": True,
        "method": "dense",
        "epochs": _number(reference.get("epochs")),
    }


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    metrics = trial.user_attrs.get("metrics") or {}
    values = trial.values or []
    # The metrics dict is the full record; trial.values is the fallback for trials added
    # by other tools, which carry only the objectives.
    accuracy = _number(metrics.get("accuracy", values[0] if len(values) > 0 else None))
    flops = _number(metrics.get("flops", values[1] if len(values) > 1 else None))
    ranks = metrics.get("ranks")
    row: dict[str, Any] = {
        "kind": "svd",
        "number": trial.number,
        "state": trial.state.name,
        "status": metrics.get("status"),
        "accuracy": accuracy,
        "test_accuracy": _number(metrics.get("test_accuracy")),
        "flops": flops,
        "flops_reduction": _number(metrics.get("flops_reduction")),
        "params": _number(metrics.get("params")),
        "latency_ms": _number(metrics.get("latency_ms")),
        "wall_time_s": _number(metrics.get("wall_time_s")),
        "epochs": _number(metrics.get("epochs")),
        # A trial without the flag predates it or was added by hand; only the pipeline
        # truncates, and it always writes the flag.
        "full_budget": bool(metrics.get("full_budget", True)),
        # The study's constraints as Optuna reads them (each satisfied at <= 0).
        "feasible": all(v <= 0 for v in trial.constraints.values()),
        "fail_reason": trial.user_attrs.get("fail_reason"),
        "datetime_complete": (
            trial.datetime_complete.isoformat() if trial.datetime_complete else None
        ),
        "method": "svd",
        "ranks": json.dumps(ranks, separators=(",", ":")) if ranks else None,
        **_spectrum_columns(metrics),
    }
    for name, value in {**metrics.get("constants", {}), **trial.params}.items():
        row[f"param_{name}"] = value
    return row


def _spectrum_columns(metrics: dict[str, Any]) -> dict[str, float]:
    """Summed rank at e = 0.01 before and after SVD training, on the trial that trained the
    model only (the trials reusing it would repeat the numbers)."""
    spectrum = metrics.get("spectrum")
    if not spectrum or metrics.get("svd_cached", True):
        return {}
    return {"spectrum_rank_before": float(sum(b for b, _ in spectrum.values())),
            "spectrum_rank_after": float(sum(a for _, a in spectrum.values()))}


def _sweep_rows(trial: optuna.trial.FrozenTrial, ref_flops: float,
                promotions_done: set[Any]) -> list[dict[str, Any]]:
    """The low-fidelity points of a trial's sweep (proxy accuracy): every candidate but the
    trial's own and those fine-tuned by a completed trial (``promotions_done``: their ids);
    one still queued, or failed, leaves its candidate here."""
    rows = []
    for candidate in trial.user_attrs.get("sweep") or []:
        ident = candidate.get("candidate")  # another sweep of a shared model may promote it
        legacy = candidate.get("promoted") and (trial.number, _number(candidate.get("flops")))
        if candidate.get("own") or (ident or legacy) in promotions_done:
            continue
        flops = _number(candidate.get("flops"))
        rows.append({
            "kind": LOW_FIDELITY_KIND,
            "number": trial.number,
            "state": "COMPLETE",
            "status": "low-fidelity",
            "accuracy": _number(candidate.get("proxy_accuracy")),
            "flops": flops,
            "flops_reduction": ref_flops / flops if flops > 0 else math.nan,
            "wall_time_s": _number(candidate.get("seconds")),
            "full_budget": False,
            "method": "svd",
            "candidate": json.dumps({"energy": candidate.get("energy"),
                                     "source": candidate.get("source", "sweep")},
                                    separators=(",", ":")),
        })
    return rows


def _baseline_rows(run_dir: Path, spec: cfg.BaselineSpec | None) -> list[dict[str, Any]]:
    rows, left_out = [], 0
    for path in sorted((run_dir / "baselines").glob("*/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            # Files are written atomically, so this is a damaged directory: report the
            # rest rather than nothing.
            warnings.warn(f"skipping unreadable baseline result {path}: {exc}", stacklevel=3)
            continue
        if spec is not None and not spec.is_current(metrics):
            left_out += 1
            continue
        method = str(metrics.get("method") or path.parent.name.rsplit("-", 1)[0])
        status = str(metrics.get("status", "complete"))
        failed = status != "complete"
        rows.append(
            {
                "kind": f"baseline:{method}",
                "state": "FAIL" if failed else "COMPLETE",
                "status": status,
                "fail_reason": status.removeprefix("failed: ") if failed else None,
                "full_budget": True,
                "method": method,
                **{key: _number(metrics.get(key)) for key in (
                    "accuracy", "test_accuracy", "flops", "flops_reduction", "params",
                    "latency_ms", "wall_time_s", "target", "epochs")},
                # The rate that did best, where baselines.lr tuned it: beside a searched lr.
                **({"param_lr": _number(metrics.get("lr"))} if "lr_tried" in metrics else {}),
            }
        )
    if left_out:
        warnings.warn(f"{left_out} baseline result(s) in {run_dir / 'baselines'} left out: not "
                      "asked by the study's config, or made with other settings (the next "
                      "search or 'ranksearch baselines' makes them again)", stacklevel=3)
    return rows


def trials_frame(study: optuna.Study, run_dir: Path | None = None,
                 baselines: cfg.BaselineSpec | None = None) -> pd.DataFrame:
    """One row per point of the report: the reference, every SVD trial, every baseline run.

    Columns are :data:`METRIC_COLUMNS` followed by one ``param_<name>`` column per search
    parameter (sorted by name; empty where a trial did not sample it). ``kind`` is
    ``reference`` (from ``study.user_attrs["reference"]``, absent when the study has none),
    ``svd`` (every trial, whatever its state), ``svd-proxy`` (a multi-fidelity sweep's
    candidate evaluated without fine-tuning: ``accuracy`` is its proxy accuracy,
    ``full_budget`` false, ``number`` the trial that swept it, ``candidate`` its thresholds
    as JSON) or ``baseline:<method>`` (one per ``run_dir/baselines/*/metrics.json``; with
    ``baselines``, the config's section, only those it asks for, made with its settings, and
    a warning counts the rest). ``state`` is the Optuna state name
    (``COMPLETE``, ``FAIL``, ``RUNNING``, ``PRUNED``, ``WAITING``); the reference and baselines
    are ``COMPLETE``. ``ranks`` is the trial's ``{layer: kept rank}`` as compact JSON.
    ``spectrum_rank_before`` / ``_after``: on the trial that SVD-trained a model, the rank kept
    at e = 0.01 summed over its layers before and after SVD training.
    ``feasible`` is false on a trial that violates the study's constraints (a FLOPs ceiling,
    an accuracy floor): Optuna's samplers steer away from it and no front holds it.
    ``flops_reduction`` missing from a record is filled in as reference FLOPs / FLOPs.
    ``latency_ms`` comes from ``run_dir/latency.json`` when ``ranksearch latency`` wrote it
    (see :func:`ranksearch.report.timings.latency_source`).

    The study is read with a single ``get_trials(deepcopy=False)`` call, so that remote
    storages holding thousands of trials are queried once.
    """
    rows: list[dict[str, Any]] = []
    reference = study.user_attrs.get("reference")
    if reference:
        rows.append(_reference_row(reference))
    trials = study.get_trials(deepcopy=False)
    rows.extend(_trial_row(trial) for trial in trials)
    ref_flops = _number(reference.get("flops")) if reference else math.nan
    done = [t.user_attrs for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and "promoted_from" in t.user_attrs]
    # By id; by (sweeping trial, FLOPs) for sweeps recorded before candidates had ids.
    promotions_done = {a["candidate"] for a in done if "candidate" in a} | {
        (a["promoted_from"], _number(a.get("proxy_flops"))) for a in done}
    for trial in trials:
        rows.extend(_sweep_rows(trial, ref_flops, promotions_done))
    if run_dir is not None:
        rows.extend(_baseline_rows(Path(run_dir), baselines))
        use_timings(rows, Path(run_dir))

    df = pd.DataFrame.from_records(rows)
    param_columns = sorted(c for c in df.columns if c.startswith("param_"))
    df = df.reindex(columns=[*METRIC_COLUMNS, *param_columns])
    for column in _NUMERIC_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    df["full_budget"] = df["full_budget"].fillna(False).astype(bool)
    df["feasible"] = df["feasible"].fillna(True).astype(bool)
    df["kind"] = df["kind"].astype(str)
    df["state"] = df["state"].astype(str)

    ref_flops = reference_flops(df)
    if not math.isnan(ref_flops):
        missing = df["flops_reduction"].isna() & (df["flops"] > 0)
        df.loc[missing, "flops_reduction"] = ref_flops / df.loc[missing, "flops"]
    return df


def reference_flops(df: pd.DataFrame) -> float:
    """FLOPs of the dense reference row of ``df``; NaN when there is none."""
    flops = df.loc[df["kind"] == "reference", "flops"]
    return float(flops.iloc[0]) if len(flops) else math.nan


def reference_accuracy(df: pd.DataFrame) -> float:
    """Accuracy (fraction) of the dense reference row of ``df``; NaN when there is none."""
    accuracy = df.loc[df["kind"] == "reference", "accuracy"]
    return float(accuracy.iloc[0]) if len(accuracy) else math.nan


def eligible_mask(df: pd.DataFrame) -> pd.Series:
    """Rows that may stand on a front: complete, trained on the full budget, not diverged,
    within the study's constraints (``feasible``, where the frame has it), with a finite
    accuracy and FLOPs. Pruned, failed, running and truncated trials never may.
    """
    feasible = df["feasible"].astype(bool) if "feasible" in df else True
    return (
        (df["state"] == "COMPLETE")
        & df["full_budget"].astype(bool)
        & feasible
        & (df["status"].fillna("complete") != "diverged")
        & np.isfinite(df["accuracy"])
        & np.isfinite(df["flops"])
    )


def pareto_front(df: pd.DataFrame, kind: str = "svd") -> pd.DataFrame:
    """The :func:`nondominated` rows of ``kind`` among :func:`eligible_mask` rows (accuracy
    against FLOPs), sorted by FLOPs, then accuracy and trial number. The rows keep their
    index labels in ``df``."""
    candidates = df[(df["kind"] == kind) & eligible_mask(df)].sort_values(
        ["flops", "accuracy", "number"], ascending=[True, False, True], kind="mergesort"
    )
    return candidates[nondominated(candidates["accuracy"], candidates["flops"])]


def fronts_by_kind(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`pareto_front` of every kind but the reference: ``svd`` first, then each
    ``baseline:<method>`` in name order."""
    kinds = sorted(k for k in df["kind"].unique() if k.startswith("baseline:"))
    if (df["kind"] == "svd").any():
        kinds.insert(0, "svd")
    return {kind: pareto_front(df, kind) for kind in kinds}


def kind_label(kind: str) -> str:
    """Human name of a ``kind`` value: ``SVD training``, ``reference``, ``<method> pruning``."""
    if kind == "svd":
        return "SVD training"
    if kind.startswith("baseline:"):
        return f"{kind.split(':', 1)[1]} pruning"
    return kind


def reduction_table(
    df: pd.DataFrame, ref_accuracy: float, drops: Sequence[float] = (0.5, 1, 2),
    column: str = "flops_reduction",
) -> pd.DataFrame:
    """Largest FLOPs reduction within each accuracy drop of the reference, per method.

    One row for SVD training (eligible trials only) and one per baseline method, with columns
    ``kind`` (``svd``, ``baseline:<method>``), ``method`` (its label: ``SVD training``,
    ``<method> pruning``) and, for each ``drop`` in percentage points, ``within_<drop>``
    (``within_0.5``, ``within_1``, ...): the largest ``flops_reduction`` (reference FLOPs /
    point FLOPs) among the points whose accuracy is at least ``ref_accuracy - drop / 100``
    (accuracies are fractions); NaN where no point qualifies. ``column`` names another
    larger-is-better ratio to report instead (e.g. ``latency_speedup``).
    """
    eligible = df[eligible_mask(df)]
    rows = []
    for kind in fronts_by_kind(df):
        points = eligible[eligible["kind"] == kind]
        row: dict[str, Any] = {"kind": kind, "method": kind_label(kind)}
        for drop in drops:
            qualifies = points["accuracy"] >= ref_accuracy - drop / 100 - _ACCURACY_TOLERANCE
            row[f"within_{drop:g}"] = float(points.loc[qualifies, column].max())
        rows.append(row)
    return pd.DataFrame(rows, columns=["kind", "method", *(f"within_{d:g}" for d in drops)])


def hypervolume_history(
    df: pd.DataFrame, ref_point: tuple[float, float] = (0.0, 1.0)
) -> pd.DataFrame:
    """Hypervolume of the SVD front after each eligible trial, in order of completion.

    The space is normalised: (accuracy as a fraction, FLOPs / reference FLOPs), with accuracy
    maximised and the FLOPs ratio minimised. The default reference point ``(0.0, 1.0)`` is
    zero accuracy at the dense model's cost, so the hypervolume reads as the mean, over FLOPs
    budgets from 0 to the dense model's, of the best accuracy found within that budget; it
    lies in [0, 1] and points costing as much as the dense model add nothing. Without a
    reference row the largest SVD FLOPs stand in for the reference FLOPs.

    Returns columns ``order`` (1, 2, ...), ``number``, ``datetime_complete``, ``accuracy``,
    ``flops_ratio`` and ``hypervolume``.
    """
    points = df[(df["kind"] == "svd") & eligible_mask(df)].sort_values(
        ["datetime_complete", "number"], kind="mergesort", na_position="last"
    )
    ref_flops = reference_flops(df)
    if math.isnan(ref_flops):
        ref_flops = float(points["flops"].max()) if len(points) else 1.0
    ratios = points["flops"].to_numpy() / ref_flops
    accuracies = points["accuracy"].to_numpy()

    # Only the current front matters for the next value, and it stays small, so each step
    # works on the front and the new point instead of every trial so far.
    front_accuracy = np.empty(0)
    front_ratio = np.empty(0)
    volume = 0.0
    history = np.empty(len(points))
    for i, (accuracy, ratio) in enumerate(zip(accuracies, ratios, strict=True)):
        with_new = (np.append(front_accuracy, accuracy), np.append(front_ratio, ratio))
        keep = nondominated(*with_new)
        if keep[-1]:  # the new point is on the front: the volume may have grown
            front_accuracy, front_ratio = with_new[0][keep], with_new[1][keep]
            volume = hypervolume_2d(front_accuracy, front_ratio, ref_point)
        history[i] = volume
    return pd.DataFrame(
        {
            "order": np.arange(1, len(points) + 1),
            "number": points["number"].to_numpy(),
            "datetime_complete": points["datetime_complete"].to_numpy(),
            "accuracy": accuracies,
            "flops_ratio": ratios,
            "hypervolume": history,
        }
    )


def param_importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Importance of each search parameter for each objective, ``{objective: {param: value}}``.

    Uses Optuna's PED-ANOVA evaluator (fast on thousands of trials) over the complete
    trials, with maximised objectives negated because it scores parameters for reaching low
    target values. Objectives are named as in :data:`ranksearch.objectives.OBJECTIVE_NAMES`.
    Returns ``{}`` when there are fewer than two complete trials or no varying parameter, and
    leaves out an objective whose evaluation fails (with a warning): importances are an aid
    to reading the study, never a reason to withhold the report.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    varying = {
        name
        for name in {name for trial in complete for name in trial.params}
        if len({repr(trial.params.get(name)) for trial in complete}) > 1
    }
    if not varying:
        return {}

    result: dict[str, dict[str, float]] = {}
    for index, direction in enumerate(study.directions):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        name = OBJECTIVE_NAMES[index] if index < len(OBJECTIVE_NAMES) else f"objective_{index}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(
                    study,
                    evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                    target=lambda trial, i=index, s=sign: s * trial.values[i],
                )
        except Exception as exc:  # any evaluator failure only drops one chart
            warnings.warn(f"parameter importances for {name} unavailable: {exc}", stacklevel=2)
            continue
        result[name] = {param: float(value) for param, value in importances.items()}
    return result

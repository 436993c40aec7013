"""The latency of every model of a run, timed one model at a time after the search.

A trial times its model in its own process while the other workers on the host train, so on
a shared host its figure carries their load (on 2 cores with 2 workers, the same structure
timed 32 ms in one trial and 115 ms in another). ``ranksearch latency RUN_DIR`` times the
dense reference, every complete trial's deployed model and every baseline's pruned structure
again, one after the other, on this machine, and writes ``RUN_DIR/latency.json``; the report
then draws its latency figures from that file and says so. Copy a run directory to the
machine you deploy on and run the command there to get that machine's front.

On a shared machine the load changes from one model to the next (two runs of the same
command, each model's median pass, put one model's time relative to the reference's 0.66x to
1.42x apart). So the reference is timed first, its fastest pass, and every other model
alternates with it pass by pass: a model's figure is its fastest pass over the reference's
in the same window, times the reference's figure. The fastest pass is the least disturbed one,
and the ratio, which the latency front plots, carries no drift between models.

Latency depends on a model's structure, not on its weights. A trial's structure is its
``plan.json``. A baseline's is rebuilt by pruning the cached reference again, which is
deterministic; one whose FLOPs differ from those its run recorded is skipped with a warning,
never timed as something else.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import baselines, export, measure, models, pipeline, svd
from . import config as cfg
from .conventions import baseline_key, trial_key
from .errors import UserError
from .precision import cpu_name
from .runs import DamagedFile, RunDir, load_state, read_json, write_json
from .search.study import open_run_study

if TYPE_CHECKING:  # a type hint only; the study is opened through search.study
    import optuna

__all__ = ["measure_run", "run_models"]


Builder = Callable[[], nn.Module]


_FIELDS = ("latency_ms", "latency_batch1_ms")  # at the run's batch size, at batch 1


def _seconds(model: nn.Module, reference: nn.Module | None, reference_ms: float | None,
             input_shape: tuple[int, ...], batch_size: int, passes: int) -> float:
    """``model``'s seconds per pass: its fastest pass against the reference's, the two
    alternating pass by pass, times the reference's own figure ``reference_ms``; its own
    fastest pass for the reference itself, or where the run has none."""
    if reference is None or model is reference or reference_ms is None:
        return measure.fastest_passes([model], input_shape, batch_size, passes)[0]
    reference_s, model_s = measure.fastest_passes([reference, model], input_shape, batch_size,
                                                  passes)
    return 1e-3 * reference_ms * model_s / reference_s


def _models(run: RunDir, config: cfg.StudyConfig, study: optuna.Study
            ) -> tuple[dict[str, tuple[Builder, float | None]], tuple[int, ...]]:
    """Every model to time, by key: a function building its deployed form and the FLOPs its
    run recorded (None where the structure is stored, not rebuilt); and the input shape."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
              and (run.trial_dir(t.number) / "plan.json").is_file()}
    if not trials:
        raise UserError(f"{run.path}: no complete trial with a saved model to time")
    plan = read_json(run.trial_dir(next(iter(trials))) / "plan.json")
    input_shape = tuple(plan["input_shape"])
    found: dict[str, tuple[Builder, float | None]] = {}
    entry = run.cache("reference", pipeline.reference_key(config))
    dense: nn.Module | None = None
    if entry.is_valid():
        dense = models.create(plan["model"], num_classes=plan["num_classes"],
                              in_channels=plan["in_channels"])
        dense.load_state_dict(load_state(entry.file("model.safetensors")))
        reference = dense
        found["reference"] = (lambda: svd.for_inference(reference), None)
    else:
        warnings.warn(f"{run.path}: the trained reference is not in its cache, so neither it nor "
                      "the baselines (pruned from it) are timed, and each trial is timed on its "
                      f"own; 'ranksearch baselines {run.path}' trains it again", stacklevel=3)
    for number in sorted(trials):
        folder = run.trial_dir(number)
        found[trial_key(number)] = (lambda folder=folder: export.load(folder), None)
    for metrics in run.baseline_results():
        if dense is None or "flops" not in metrics:
            continue
        method, target = metrics["method"], float(metrics["target"])
        build = baselines.baseline_structure(config, run, dense, input_shape, metrics)
        found[baseline_key(method, target)] = (
            _missing_sparsity_training if build is None else
            lambda build=build: svd.for_inference(build()), float(metrics["flops"]))
    return found, input_shape


def _missing_sparsity_training() -> nn.Module:
    raise UserError("the sparsity-trained model this slimming baseline was pruned from is not "
                    "in the run's cache; remove the baseline's folder and run 'ranksearch "
                    "baselines' to make it again")


def run_models(run_dir: str | Path) -> tuple[dict[str, Builder], tuple[int, ...]]:
    """The models :func:`measure_run` times, each as a function that builds its deployed form
    (``reference``, ``trial:<number>``, ``baseline:<method>-<target>x``), and their input
    shape. A baseline is rebuilt by pruning the cached reference again.

    Raises:
        UserError: no such run directory, or no trial with a saved model.
    """
    run, config, study = open_run_study(run_dir)
    found, input_shape = _models(run, config, study)
    return {key: build for key, (build, _) in found.items()}, input_shape


def measure_run(
    run_dir: str | Path, *, batch_size: int | None = None, threads: int | None = None,
    repeats: int = 30,
) -> dict[str, Any]:
    """Time every model of a run one at a time and write ``RUN_DIR/latency.json``.

    Each model is timed at ``batch_size`` (default: the config's ``latency.batch_size``) and
    at batch 1 on ``threads`` threads (default: the config's ``latency.threads``, else
    PyTorch's), in fp32, its fastest of ``repeats`` passes beside the reference's (the module
    docstring); ``OMP_WAIT_POLICY=PASSIVE`` draws a warning, as it slows small passes. The file is
    rewritten after each model, so an interrupted call keeps what it timed and the next call
    with the same settings times only the rest; other settings start it over.

    Returns the file's content: ``batch_size``, ``threads``, ``repeats``, ``timing``,
    ``host``, ``cpu``, ``torch`` and ``models``, a mapping of ``reference``, ``trial:<number>`` and
    ``baseline:<method>-<target>x`` to ``{latency_ms, latency_batch1_ms, flops}``.

    Raises:
        UserError: no such run directory, or no trial with a saved model.
        ValueError: ``batch_size``, ``threads`` or ``repeats`` below 1.
    """
    for name, value in (("batch_size", batch_size), ("threads", threads), ("repeats", repeats)):
        if value is not None and value < 1:  # 0 would time nothing and write NaN over timings
            raise ValueError(f"{name} must be at least 1, got {value}")
    run, config, study = open_run_study(run_dir)
    batch_size = batch_size or config.latency.batch_size
    threads = threads or config.latency.threads or torch.get_num_threads()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        warnings.warn("OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep between operators, "
                      "so every timing includes their wake-ups (2-5x at batch 1 on 2 cores); "
                      "time without it", stacklevel=2)
    # "timing" names the method, so that a file timed the earlier way (each model's median
    # pass on its own) starts over instead of mixing the two.
    settings = {"batch_size": batch_size, "threads": threads, "repeats": repeats,
                "timing": "fastest pass beside the reference"}
    try:
        previous = read_json(run.latency_path) if run.latency_path.is_file() else {}
    except DamagedFile as err:  # timings can always be taken again
        warnings.warn(f"{err}; timing every model again", stacklevel=2)
        previous = {}
    # Timings resume only on the same machine and PyTorch: a run directory copied to the
    # deployment host is timed there anew, not labelled with the search host's figures.
    machine = {"host": platform.node(), "cpu": cpu_name(), "torch": torch.__version__}
    result: dict[str, Any] = {**settings, **machine, "models": {}}
    if all(previous.get(k) == v for k, v in {**settings, **machine}.items()):
        result["models"] = previous.get("models", {})
    found, input_shape = _models(run, config, study)
    # A baseline run again since (other settings, another rate) has another structure.
    for key, (_, recorded) in found.items():
        entry = result["models"].get(key)
        if entry and recorded is not None and abs(entry["flops"] - recorded) > 1e-6 * recorded:
            del result["models"][key]
    reference = found["reference"][0]() if "reference" in found else None
    on_disk = previous
    kept = sum(key in result["models"] for key in found)
    timed_now = 0
    for key, (build, recorded_flops) in found.items():
        if key in result["models"]:
            continue
        try:
            model = reference if key == "reference" else build()
        except UserError as err:  # one damaged trial folder: time the others
            warnings.warn(f"{key} not timed: {err}", stacklevel=2)
            continue
        flops = measure.flops(model, input_shape)
        if recorded_flops is not None and abs(flops - recorded_flops) > 1e-6 * recorded_flops:
            warnings.warn(f"{key}: pruning the reference again gave {flops:,} FLOPs, not the "
                          f"{recorded_flops:,.0f} its run recorded; not timed", stacklevel=2)
            continue
        timed = {}
        with measure.num_threads(threads):
            for batch in dict.fromkeys((batch_size, 1)):
                own = result["models"].get("reference", {}).get(_FIELDS[batch == 1])
                timed[batch] = _seconds(model, reference, own, input_shape, batch, repeats)
        result["models"][key] = {"latency_ms": 1e3 * timed[batch_size],
                                 "latency_batch1_ms": 1e3 * timed[1], "flops": flops}
        print(f"{key}: " + ", ".join(f"{1e3 * seconds:.2f} ms at batch {batch}"
                                     for batch, seconds in timed.items()),
              file=sys.stderr, flush=True)
        write_json(run.latency_path, result)
        on_disk = result
        timed_now += 1
    untimed = len(found) - kept - timed_now
    print(", ".join([f"{timed_now} models timed now"]
                    + [f"{kept} kept from an earlier call with the same settings on this "
                       "machine"] * bool(kept)
                    + [f"{untimed} not timed (see the warnings)"] * bool(untimed)),
          file=sys.stderr, flush=True)
    if result != on_disk:  # nothing timed now, yet the file is new or from other settings
        write_json(run.latency_path, result)
    return result

"""Equal-budget baseline runs in a run directory: each baseline is pruned from the study's
reference and trained for the budget of one SVD trial, its result stored once."""

from __future__ import annotations

import functools
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import config as cfg
from .. import pipeline
from ..runs import CacheEntry, DamagedFile, RunDir, read_json, write_json
from ..train import Diverged, MetricFailed
from . import slimming
from .prune import prune_to_flops

__all__ = ["pruned_reference", "baseline_structure", "run_baselines", "run_baselines_for_run"]


def _phase_seed(config: cfg.StudyConfig, phase: int) -> int:
    """The seed of a baseline's training phase 0 or 1: a seed per phase, as a trial's two
    phases have (seed + 1, seed + 2), so that no batch order is replayed."""
    return config.seed + 3 + phase


def pruned_reference(dense: nn.Module, input_shape: Sequence[int], method: str, target: float,
                     seed: int) -> nn.Module:
    """``dense`` pruned as a baseline run prunes it (the global seed set first, for criteria
    that draw from it), so that ``ranksearch latency`` rebuilds the same structure."""
    torch.manual_seed(seed)
    return prune_to_flops(dense, input_shape, method, target, seed=seed)


def _penalty(settings: dict[str, Any]) -> float:
    """Network slimming's penalty in a baseline's settings (:meth:`BaselineSpec.settings`,
    the config's or those its result records): above 0, the reference is sparsity-trained
    before it is pruned."""
    return settings.get("slimming_penalty", 0.0)


def _phases(config: cfg.StudyConfig, lr: float | None) -> list[tuple[str, cfg.Schedule]]:
    """A baseline's two training phases, one trial's budget (:func:`pipeline.trial_budget`):
    at the schedule's rates, or at ``lr`` and the fine-tuning rate scaled alike."""
    budget = pipeline.trial_budget(config)
    if lr is None:
        return list(budget.items())
    return [("svd", budget["svd"].model_copy(update={"lr": lr})),
            ("finetune", budget["finetune"].model_copy(
                update={"lr": pipeline.finetune_lr(config, lr)}))]


def baseline_structure(config: cfg.StudyConfig, run: RunDir, dense: nn.Module,
                       input_shape: Sequence[int], metrics: dict[str, Any]
                       ) -> Callable[[], nn.Module] | None:
    """A function rebuilding the pruned, untrained network of the run's baseline whose
    result is ``metrics``, as the run pruned it, with the settings the result records (for
    ``ranksearch latency``; pruning waits for the call). Network slimming with its penalty
    prunes the sparsity-trained reference from the run's cache: None when the cache lacks
    it."""
    method, target = metrics["method"], float(metrics["target"])
    penalty = _penalty(metrics.get("settings", {}))
    start = dense
    if penalty > 0:
        schedule = _phases(config, metrics.get("lr"))[0][1]
        start = slimming.cached_sparsity_trained(config, run, dense, schedule,
                                                 seed=_phase_seed(config, 0), penalty=penalty)
        if start is None:
            return None
    return functools.partial(pruned_reference, start, input_shape, method, target, config.seed)


def _baseline_run(config: cfg.StudyConfig, run: RunDir, method: str, target: float,
                  lr: float | None, progress: bool) -> dict[str, Any]:
    """One baseline with the budget of one SVD trial: the SVD-training schedule, then the
    fine-tuning one, each for the most epochs a trial may get, at the schedule's rates or
    at ``lr`` (:func:`_phases`).

    Filter pruning prunes the reference to ``target``x fewer FLOPs and trains the pruned
    network for both. Network slimming with a ``slimming_penalty`` trains the reference with
    its L1 penalty on the batch-norm scales for the first (:mod:`.slimming`), prunes by those
    scales and fine-tunes for the second: regularise, prune, fine-tune, as SVD training does.
    """
    start = time.perf_counter()
    data = pipeline.dataset(config)
    dense, ref_metrics = pipeline.reference(config, run, progress=progress)
    assert config.baselines is not None
    settings = config.baselines.settings(method, tuned=False)
    schedules = _phases(config, lr)
    phases = list(enumerate(schedules))
    epochs, train_seconds = 0, 0.0
    metrics: dict[str, Any] = {"lr": schedules[0][1].lr}
    try:
        if _penalty(settings) > 0:
            (_, (_, schedule)), *phases = phases
            dense, sparsity = slimming.sparsity_trained(
                config, run, dense, schedule, seed=_phase_seed(config, 0),
                penalty=_penalty(settings), progress=progress)
            epochs, train_seconds = sparsity["epochs"], sparsity["seconds"]
            metrics.update(bn_scales=sparsity["bn_scales"])
        try:
            pruned = pruned_reference(dense, data.input_shape, method, target, config.seed)
        except RuntimeError:
            raise
        except Exception as err:  # torch-pruning cannot prune every architecture
            raise RuntimeError(f"{type(err).__name__} while pruning with torch-pruning: "
                               f"{err}") from err
        for phase, (budget, schedule) in phases:
            result = pipeline.train(config, pruned, "baseline", schedule,
                                    seed=_phase_seed(config, phase),
                                    desc=f"{method} {target:g}x ({budget} budget)",
                                    progress=progress)
            epochs += result.epochs
            train_seconds += result.seconds
        metrics.update(pipeline.measured(pruned, data, config))
        status = "complete"
    # Diverged, a metric with no finite value, no channel could be removed, or a graph
    # torch-pruning cannot handle: that baseline failed, the study goes on.
    except (Diverged, MetricFailed, RuntimeError) as err:
        status = f"failed: {err}"
    metrics.update(method=method, target=target, epochs=epochs, status=status,
                   train_time_s=train_seconds, wall_time_s=time.perf_counter() - start,
                   settings=settings)
    if "flops" in metrics:
        metrics["flops_reduction"] = ref_metrics["flops"] / metrics["flops"]
    return metrics


def _tuned_run(config: cfg.StudyConfig, run: RunDir, method: str, target: float,
               progress: bool) -> dict[str, Any]:
    """A baseline at each rate of ``baselines.lr`` (each kept in ``lr-<rate>/`` of its folder,
    so that a killed run redoes only the rate it was at), the best by the validation metric
    returned with every rate's metric under ``lr_tried``; without rates, the one run.

    ``train_time_s`` and ``epochs`` stay the best run's (the budget a trial is compared on);
    ``wall_time_s`` is every rate's together (what finding that result cost) and
    ``tuning_train_time_s`` their training time."""
    assert config.baselines is not None
    if not config.baselines.lr:
        return _baseline_run(config, run, method, target, None, progress)
    settings = config.baselines.settings(method, tuned=False)
    tried: dict[float, dict[str, Any]] = {}
    for lr in config.baselines.lr:
        # repr: the shortest text that reads back as this float, so distinct rates never
        # share a folder (":g" keeps 6 digits).
        path = run.baseline_dir(method, target) / f"lr-{lr!r}" / "metrics.json"
        if not _current(path, settings):
            write_json(path, _baseline_run(config, run, method, target, lr, progress))
        tried[lr] = read_json(path)
    complete = [m for m in tried.values() if m["status"] == "complete"]
    best = max(complete, key=lambda m: m["accuracy"], default=next(iter(tried.values())))
    return {**best, "settings": config.baselines.settings(method),
            "lr_tried": {repr(lr): m.get("accuracy") for lr, m in tried.items()},
            "tuning_train_time_s": sum(m["train_time_s"] for m in tried.values()),
            "wall_time_s": sum(m["wall_time_s"] for m in tried.values())}


def run_baselines(config: cfg.StudyConfig, run: RunDir, *, progress: bool = True
                  ) -> list[dict[str, Any]]:
    """Run every baseline the config asks for that the run directory does not hold yet, or
    holds with other settings. Each result is written atomically once its run ends, under a
    lock, so a killed run is redone by the next call and a finished one never twice."""
    spec = config.baselines
    if spec is None:
        return []
    pending = [(m, t) for m in spec.methods for t in spec.targets]
    # First pass: skip runs another worker holds, so that several workers share the runs;
    # second pass: wait for those, so that every result exists when this returns.
    for blocking in (False, True):
        for method, target in pending:
            folder = run.baseline_dir(method, target)
            result_path = folder / "metrics.json"
            with CacheEntry(folder).lock(blocking=blocking) as held:
                if held and not _current(result_path, spec.settings(method)):
                    metrics = _tuned_run(config, run, method, target, progress)
                    write_json(result_path, metrics)
                    outcome = (metrics["status"] if metrics["status"] != "complete" else
                               f"{config.metric.name} {metrics['accuracy']:.4f}, "
                               f"{metrics['flops_reduction']:.2f}x fewer FLOPs")
                    if "lr_tried" in metrics and metrics["status"] == "complete":
                        outcome += f" at lr {metrics['lr']:g}"
                    print(f"baseline {method} {target:g}x: {outcome}", file=sys.stderr,
                          flush=True)
    return [read_json(run.baseline_dir(m, t) / "metrics.json") for m, t in pending]


def _current(result_path: Path, settings: dict[str, Any]) -> bool:
    """Whether a baseline's result is there, reads and was made with ``settings``; a damaged
    one, or one of other settings, is run again."""
    if not result_path.is_file():
        return False
    try:
        made_with = read_json(result_path).get("settings", {})
    except DamagedFile as err:
        warnings.warn(f"{err}; running that baseline again", stacklevel=2)
        return False
    if made_with != settings:
        warnings.warn(f"{result_path} was made with other settings ({made_with or 'defaults'}, "
                      f"now {settings or 'defaults'}); it is made again with these (a rate "
                      "already run with them is kept)", stacklevel=2)
        return False
    return True


def run_baselines_for_run(run_dir: str | Path, *, progress: bool = True
                          ) -> list[dict[str, Any]]:
    """``ranksearch baselines RUN_DIR``: run or complete the baselines of an existing run."""
    run = RunDir(run_dir).require_existing()
    config = cfg.load(run.config_path)
    if config.baselines is None:
        raise cfg.ConfigError(f"{run.config_path}: no 'baselines' section; add one, e.g. "
                              "baselines: {methods: [l1, fpgm, slimming], targets: [2, 4]}")
    return run_baselines(config, run, progress=progress)

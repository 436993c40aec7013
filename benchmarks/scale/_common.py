"""Shared pieces of the machinery benchmarks: the real search space, a stand-in trial, results.

Nothing here trains a network. The stand-in replaces only ``ranksearch.pipeline.run_trial`` (the
training and evaluation of one trial): it sleeps for a configurable time and returns synthetic
accuracy/FLOPs metrics shaped like the real ones (``docs/internals.md``), so that the real
worker loop, ``Objective``, samplers, storages, Ray backend and report do all their usual work
around it. Every number these benchmarks produce is a cost of that machinery, never a
compression result.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ranksearch import config as cfg
from ranksearch.config import Range, TrialParams
from ranksearch.objectives import directions
from ranksearch.runs import RunDir, write_json
from ranksearch.search.space import suggest

REPO = Path(__file__).resolve().parents[2]
SPACE_FILE = REPO / "search_spaces" / "digits_quickstart.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
LABEL = "machinery benchmark (stand-in trials with synthetic metrics; not a compression result)"

# FLOPs of the synthetic dense reference: the order of ResNet-20 on 8x8 digits. Only ratios
# between trials matter to the samplers and the report.
REFERENCE_FLOPS = 2_600_000
REFERENCE_ACCURACY = 0.975
REFERENCE_PARAMS = 270_000


def load_config(sampler: str = "tpe", name: str = "scale", trials: int = 12) -> cfg.StudyConfig:
    """The quickstart search space with another sampler and study name; the sampler keeps the
    quickstart's settings (seed, ``n_startup_trials``), the rest what ``make_sampler`` sets."""
    config = cfg.load(SPACE_FILE)
    spec = config.sampler.model_copy(update={"name": sampler})
    return config.model_copy(update={"name": name, "trials": trials, "sampler": spec})


def layer_ranks(config: cfg.StudyConfig) -> dict[str, int]:
    """Full rank of every decomposable layer of the config's model (real layer names), for
    the synthetic ``ranks`` and ``plan`` metrics. Builds the model once; trains nothing."""
    import torch

    from ranksearch import models, svd

    # One thread: benchmark processes are forked after this, and a child must not inherit a
    # started OpenMP pool.
    torch.set_num_threads(1)
    model = models.create(config.model.name, num_classes=10, in_channels=1)
    layers = svd.svd_layers(svd.decompose(model, exclude=tuple(config.model.exclude)))
    return {name: int(layer.s.shape[0]) for name, layer in layers.items()}


def _position(value: float, spec: Any, decay: str) -> float:
    """Where ``value`` lies in its search range, 0-1 (log scale for log ranges)."""
    if isinstance(spec, dict):
        spec = spec[decay]
    if not isinstance(spec, Range) or spec.high == spec.low:
        return 0.5
    if spec.log:
        return math.log(value / spec.low) / math.log(spec.high / spec.low)
    return (value - spec.low) / (spec.high - spec.low)


def synthetic_metrics(params: TrialParams, space: cfg.SearchSpace, ranks: dict[str, int],
                      rng: np.random.Generator) -> dict[str, Any]:
    """Metrics of one made-up trial, with every key ``run_trial`` returns.

    A larger energy threshold prunes more (fewer FLOPs, lower accuracy) and a larger λ_s costs
    a little accuracy, with noise: a plausible trade-off with a Pareto front of a few dozen
    points, so that samplers and the report see realistic shapes.
    """
    energy = params.energy if isinstance(params.energy, float) else np.mean(
        list(params.energy.values()))
    lambda_s = params.lambda_s if isinstance(params.lambda_s, float) else np.mean(
        list(params.lambda_s.values()))
    u = _position(float(energy), space.energy, params.decay)
    v = _position(float(lambda_s), space.lambda_s, params.decay) if lambda_s > 0 else 0.0
    kept = float(np.clip(0.06 + 0.94 * (1 - u) ** 1.5 * (1 - 0.25 * v)
                         * rng.uniform(0.9, 1.1), 0.03, 1.0))
    if params.scheme == "spatial":
        kept = min(1.0, kept * 0.92)
    accuracy = float(np.clip(REFERENCE_ACCURACY - 0.08 * (1 - kept) ** 2 - 0.01 * v
                             + rng.normal(0, 0.004), 0.0, 1.0))
    flops = int(REFERENCE_FLOPS * (0.04 + 0.96 * kept))
    layer_kept = {name: max(1, round(full * math.sqrt(kept) * rng.uniform(0.8, 1.2)))
                  for name, full in ranks.items()}
    layer_kept = {name: min(rank, ranks[name]) for name, rank in layer_kept.items()}
    train_s, eval_s = float(rng.uniform(50, 60)), float(rng.uniform(2, 3))
    return {
        "accuracy": accuracy,
        "test_accuracy": float(np.clip(accuracy + rng.normal(0, 0.003), 0.0, 1.0)),
        "flops": flops,
        "params": int(REFERENCE_PARAMS * (0.04 + 0.96 * kept)),
        "flops_reduction": REFERENCE_FLOPS / flops,
        "reference_accuracy": REFERENCE_ACCURACY,
        "ranks": layer_kept,
        # compaction_plan: None where the low-rank pair would cost more than the dense layer.
        "plan": {name: (None if 2 * rank >= ranks[name] else rank)
                 for name, rank in layer_kept.items()},
        "svd_cached": False,
        "train_time_s": train_s,
        "eval_time_s": eval_s,
        "wall_time_s": train_s + eval_s + 0.5,
        "status": "complete",
        "full_budget": True,
    }


def reference_metrics() -> dict[str, Any]:
    """The synthetic dense reference, as the study's ``reference`` user attr."""
    return {"accuracy": REFERENCE_ACCURACY, "test_accuracy": REFERENCE_ACCURACY,
            "flops": REFERENCE_FLOPS, "params": REFERENCE_PARAMS, "wall_time_s": 900.0,
            "epochs": 15}


class StandInTrial:
    """Drop-in for ``ranksearch.pipeline.run_trial`` (same signature and return value): sleeps
    about ``duration_s`` instead of training, writes ``metrics.json`` into the trial folder as
    the real one does (the run directory's share of the machinery), and returns synthetic
    metrics whose ``train_time_s`` is the time slept, so that the study itself tells trial time
    from machinery time.

    ``sleeps`` records (start, end) of every sleep (``time.time()``, comparable across
    processes): everything outside them is machinery.
    """

    def __init__(self, duration_s: float, ranks: dict[str, int], seed: int) -> None:
        self.duration_s = duration_s
        self.ranks = ranks
        self.rng = np.random.default_rng(seed)
        self.sleeps: list[tuple[float, float]] = []

    def __call__(self, config: cfg.StudyConfig, params: TrialParams, run: RunDir,
                 trial_dir: Path | None = None, *, progress: bool = True) -> dict[str, Any]:
        start = time.time()
        # Real trials vary in length (±20 % here): equal ones would keep workers that started
        # together asking in lockstep, which a real study does not do.
        time.sleep(self.duration_s * self.rng.uniform(0.8, 1.2))
        end = time.time()
        self.sleeps.append((start, end))
        metrics = synthetic_metrics(params, config.space, self.ranks, self.rng)
        metrics.update(train_time_s=end - start, eval_time_s=0.0, wall_time_s=end - start)
        if trial_dir is not None:
            write_json(trial_dir / "metrics.json", metrics)
        return metrics


def synthetic_trials(config: cfg.StudyConfig, n: int, ranks: dict[str, int], seed: int = 0
                     ) -> list[optuna.trial.FrozenTrial]:
    """``n`` complete trials of the real space: points from Optuna's random sampler through
    ``ranksearch.search.space.suggest`` (so names and distributions are the real ones), values
    and the ``metrics`` user attr from :func:`synthetic_metrics`."""
    study = optuna.create_study(directions=directions(config),
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        trial = study.ask()
        metrics = synthetic_metrics(suggest(trial, config.space, {}), config.space, ranks, rng)
        trial.set_user_attr("metrics", metrics)
        study.tell(trial, [metrics["accuracy"], float(metrics["flops"])])
    return study.get_trials(deepcopy=False)


def summary(values: list[float]) -> dict[str, float | int]:
    """Count, median, 95th percentile and maximum of a list of seconds (empty-safe)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
            "max": ordered[-1]}


def machine() -> dict[str, Any]:
    """What ran the benchmark; the load average shows how shared the machine was."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "python": platform.python_version(), "optuna": optuna.__version__,
            "note": "2-core machine shared with other work: compare ratios within one run"}


def write_result(name: str, data: dict[str, Any], quick: bool) -> Path:
    """Write ``results/<name>.json`` (``<name>-quick.json`` for a smoke run) and return it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    record = {"benchmark": name, "label": LABEL, "quick": quick, "machine": machine(), **data}
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    return path

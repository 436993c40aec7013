"""Machinery benchmark: Ray Tune's scheduling overhead per trial, with hundreds of trials.

Runs the real ``ranksearch.search.ray_backend.run_ray_search`` (Tuner, the study-backed
``OptunaSearch``, the trainable with its ``Heartbeat`` and ``Objective``, the journal storage
in the run directory) on a private local Ray cluster started here for each cell
(``include_dashboard=False``, shut down at its end). Each trial reserves a fraction of a CPU
(``--cpus-per-trial``) so that many run at once on this machine: 0.25 x 8 concurrent trials
takes every CPU, as one GPU per trial does on a full cluster, while 0.05 leaves Tune free
CPUs. In every Ray worker process a setup hook swaps ``run_trial`` for the stand-in of
``_common.StandInTrial`` (sleep ``--durations`` seconds, synthetic metrics), which records the
time slept as the trial's ``train_time_s``.

From the study afterwards: per trial, the time between the searcher's ask (Optuna's
``datetime_start``) and its tell (``datetime_complete``) that is not the stand-in's sleep
(placing the trial, the trainable opening the storage, reporting, the searcher's
bookkeeping), split at the trainable's first heartbeat. Slot efficiency is the share of
``concurrency x window`` spent inside trials; the slot time per trial beyond the trial also
counts the gaps between one trial's tell and the next trial's ask, which Tune's controller
spends between trials.

    PYTHONPATH=. python benchmarks/scale/ray_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import ray
from _common import (
    REPO,
    StandInTrial,
    layer_ranks,
    load_config,
    reference_metrics,
    summary,
    synthetic_trials,
    write_result,
)
from optuna.trial import FrozenTrial, TrialState

from ranksearch.runs import RunDir
from ranksearch.search.storage import heartbeat_folder, open_storage
from ranksearch.search.study import TARGET_ATTR, create_study

DURATION_ENV = "RANKSEARCH_BENCH_DURATION"
RANKS_ENV = "RANKSEARCH_BENCH_RANKS"


def install_stand_in() -> None:
    """Ray worker setup hook: the stand-in trial instead of training (settings from the
    environment the driver gave the workers)."""
    from ranksearch.search import objective

    ranks = json.loads(os.environ[RANKS_ENV])
    objective.run_trial = StandInTrial(float(os.environ[DURATION_ENV]), ranks, os.getpid())
    # The real method builds the model to name its layers; the stand-in has the names.
    objective.Objective.layer_groups = lambda self: {name: name for name in ranks}


def run_cell(work: Path, trials: int, concurrency: int, duration_s: float, cpus: float,
             sampler: str, ranks: dict[str, int], prefill: list[FrozenTrial]) -> dict[str, Any]:
    """One ``run_ray_search`` of ``trials`` trials in a fresh run directory whose study
    already holds the ``prefill`` trials."""
    from ranksearch.search import objective
    from ranksearch.search.ray_backend import run_ray_search

    # A new study name per cell: a finished study of the same name would need no trial.
    config = load_config(sampler, name=f"scale-ray-{len(list(work.iterdir()))}",
                         trials=len(prefill) + trials)
    run = RunDir(work / config.name).create()
    study = create_study(config, open_storage(str(run.journal_path)))
    study.set_user_attr(TARGET_ATTR, len(prefill) + trials)
    study.set_user_attr("reference", reference_metrics())
    study.add_trials(prefill)
    # The driver names the layers too (for the searcher's space).
    objective.Objective.layer_groups = lambda self: {name: name for name in ranks}
    start = time.time()
    run_ray_search(config, run, str(run.journal_path), concurrency=concurrency, progress=False,
                   gpus_per_trial=0.0, cpus_per_trial=cpus)
    wall = time.time() - start

    done = optuna.load_study(study_name=config.name, storage=open_storage(
        str(run.journal_path))).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = sorted((t for t in done if t.datetime_start.timestamp() >= start),
                  key=lambda t: t.datetime_start)
    starts = [t.datetime_start.timestamp() for t in done]
    ends = [t.datetime_complete.timestamp() for t in done]
    slept = [t.user_attrs["metrics"]["train_time_s"] for t in done]
    # The heartbeat's first stamp marks the trainable running, storage open (trials shorter
    # than HEARTBEAT_S keep that first stamp): on a journal, the time of the trial's file.
    beats = heartbeat_folder(str(run.journal_path))
    running = [(beats / str(t._trial_id)).stat().st_mtime for t in done]
    outside = [e - s - d for s, e, d in zip(starts, ends, slept, strict=True)]
    to_trainable = [r - s for s, r in zip(starts, running, strict=True)]
    after = [e - r - d for r, e, d in zip(running, ends, slept, strict=True)]
    window = max(ends) - min(starts)
    return {
        "trials": trials, "prefill": len(prefill), "complete": len(done),
        "concurrency": concurrency,
        "duration_s": duration_s, "cpus_per_trial": cpus, "sampler": sampler,
        "wall_s": wall, "first_ask_after_s": min(starts) - start, "window_s": window,
        "finished_per_s": len(done) / window,
        "ideal_per_s": concurrency / duration_s if duration_s > 0 else None,
        "slot_efficiency": sum(slept) / (concurrency * window),
        # Trials in flight on average (ask to tell), and what each trial costs a slot beyond its
        # own sleep: the gaps between a tell and the next ask count here, not in outside_trial.
        "in_flight_mean": sum(e - s for s, e in zip(starts, ends, strict=True)) / window,
        "slot_s_per_trial": concurrency * window / len(done) - sum(slept) / len(done),
        # The first wave pays for starting the Ray worker processes (imports, storage).
        "first_wave_outside_s": summary(outside[:concurrency]),
        "outside_trial_s": summary(outside[concurrency:]),
        "ask_to_trainable_s": summary(to_trainable[concurrency:]),
        "trial_end_to_tell_s": summary(after[concurrency:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one-minute smoke version")
    parser.add_argument("--trials", type=int, default=None, help="trials per cell (default 200)")
    parser.add_argument("--concurrency", default=None, help="concurrent trials (default 8)")
    parser.add_argument("--durations", default=None,
                        help="stand-in seconds per trial, per cell (default 2)")
    parser.add_argument("--prefill", default=None,
                        help="complete trials in the study before each cell (default 0): "
                             "every trial's worker opens the study")
    parser.add_argument("--cpus-per-trial", default=None,
                        help="CPUs each trial reserves, per cell (default 0.25: with 8 "
                             "concurrent trials every CPU is taken, as with one GPU per trial "
                             "on a full cluster; 0.05 leaves free CPUs)")
    parser.add_argument("--sampler", default="random",
                        help="random isolates Ray Tune; the sampler's cost is sampler_latency.py's")
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args()
    quick = args.quick
    trials = args.trials or (16 if quick else 200)
    concurrencies = [int(c) for c in (args.concurrency or ("4" if quick else "8")).split(",")]
    durations = [float(d) for d in (args.durations or ("0.5" if quick else "2")).split(",")]
    prefills = [int(p) for p in (args.prefill or "0").split(",")]
    cpus = [float(c) for c in (args.cpus_per_trial or ("0.5" if quick else "0.25")).split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    ranks = layer_ranks(load_config())
    pool = synthetic_trials(load_config(), max(prefills), ranks)
    work = Path(tempfile.mkdtemp(prefix="ranksearch-ray-bench-"))
    cells: list[dict[str, Any]] = []

    def save() -> Path:
        # After every cell: a cell that breaks the run leaves the earlier ones recorded.
        return write_result(args.name or "ray_overhead", {
            "settings": {"trials": trials, "concurrency": concurrencies,
                         "durations_s": durations, "prefill": prefills, "cpus_per_trial": cpus,
                         "sampler": args.sampler, "storage": "journal file in the run directory",
                         "ray": ray.__version__},
            "cells": cells, "wall_s": time.perf_counter() - started,
        }, quick)

    try:
        for concurrency, cpu, duration, prefill in itertools.product(
                concurrencies, cpus, durations, prefills):
            # A Ray worker takes its environment from the cluster's runtime_env when it
            # starts, so each cell gets its own cluster with its own duration.
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, runtime_env={
                         "worker_process_setup_hook": "ray_overhead.install_stand_in",
                         "env_vars": {"PYTHONPATH": f"{REPO}:{Path(__file__).resolve().parent}",
                                      RANKS_ENV: json.dumps(ranks), DURATION_ENV: str(duration)},
                     })
            try:
                cell = run_cell(work, trials, concurrency, duration, cpu, args.sampler, ranks,
                                pool[:prefill])
            finally:
                ray.shutdown()
            # Ray workers keep the storage open between trials (ray_backend._trainable).
            cell["storage_kept_open"] = True
            cells.append(cell)
            print(_line(cell), flush=True)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {save()}")


def _line(cell: dict[str, Any]) -> str:
    def median(key: str) -> float:
        return cell[key].get("median", float("nan"))

    cached = "" if cell.get("storage_kept_open") else " [storage opened per trial]"
    return (f"concurrency {cell['concurrency']:>3} x {cell['cpus_per_trial']:g} CPU, "
            f"{cell['duration_s']:g} s trials, prefill "
            f"{cell['prefill']:>5}{cached}: {cell['finished_per_s']:.2f} finished/s "
            f"(ideal {cell['ideal_per_s'] or float('inf'):.2f}), slot efficiency "
            f"{100 * cell['slot_efficiency']:.0f} %, {cell['in_flight_mean']:.1f} trials in "
            f"flight on average, {cell['slot_s_per_trial']:.1f} s of slot time per trial beyond "
            f"the trial; outside the trial: median "
            f"{median('outside_trial_s'):.2f} s, p95 {cell['outside_trial_s'].get('p95', 0):.2f} s"
            f" (ask to trainable {median('ask_to_trainable_s'):.2f} s, trial end to tell "
            f"{median('trial_end_to_tell_s'):.2f} s); first wave "
            f"{median('first_wave_outside_s'):.1f} s; wall {cell['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

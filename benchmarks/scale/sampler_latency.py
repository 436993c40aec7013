"""Machinery benchmark: how long a sampler takes to suggest one point, against study size.

For each sampler (random, NSGA-II, TPE, GP, built by ``ranksearch.search.study.make_sampler``
from the quickstart's settings) and each number of finished trials, a fresh in-memory study is
filled with that many synthetic complete trials of the real search space
(``search_spaces/digits_quickstart.yaml``) plus ``--running`` RUNNING trials, the other workers'
trials in flight (TPE's constant liar counts them). One suggestion is ``study.ask()`` plus
``ranksearch.search.space.suggest`` on it, exactly what a worker does before its trial starts
(Optuna samples lazily, so the work happens inside ``suggest``). The storage is in memory so
that this measures the sampler alone; ``storage_throughput.py`` measures the storages.

Each size runs in a child process given ``--cell-timeout-s``. A cell that runs out of time
records how long its unfinished suggestion had run (a lower bound), and the sampler's larger
sizes are skipped: a sampler that slow needs no more precise number.

    PYTHONPATH=. python benchmarks/scale/sampler_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import optuna
from _common import load_config, summary, synthetic_trials, write_result
from optuna.trial import TrialState, create_trial

from ranksearch.objectives import directions
from ranksearch.search.space import suggest
from ranksearch.search.study import make_sampler

SAMPLERS = ("random", "nsga2", "tpe", "gp")


def _running(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The same points as RUNNING trials (params set, no values yet)."""
    return [create_trial(state=TrialState.RUNNING, params=t.params, distributions=t.distributions)
            for t in trials]


def measure_cell(sampler: str, finished: int, running: int,
                 pool: list[optuna.trial.FrozenTrial], repeats: int, budget_s: float,
                 starting: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Time up to ``repeats`` suggestions (at least two, then until ``budget_s`` is spent) on a
    study of ``finished`` complete and ``running`` running trials; ``starting`` is called
    before each."""
    config = load_config(sampler)
    study = optuna.create_study(directions=directions(config),
                                sampler=make_sampler(config.sampler))
    study.add_trials(pool[:finished])
    study.add_trials(_running(pool[finished:finished + running]))
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (len(times) < 2 or spent < budget_s):
        starting()
        start = time.perf_counter()
        trial = study.ask()
        suggest(trial, config.space, {})
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        # A told trial joins the history, as in a real study (n grows by one per sample).
        study.tell(trial, [0.9, 1.0e6])
    return {"sampler": sampler, "finished": finished, "running": running, "measured": True,
            "first_s": times[0], "seconds": summary(times), "samples": times}


def measure_bounded(timeout_s: float, sampler: str, finished: int, *args: Any
                    ) -> dict[str, Any]:
    """:func:`measure_cell` in a child process given ``timeout_s``. A cell that runs out of
    time is returned unmeasured, with how long its unfinished suggestion had run (a lower
    bound on one suggestion: a sampler that slow needs no more precise number)."""
    ctx = mp.get_context("fork")  # the child inherits the trial pool
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=lambda: send.send(
        measure_cell(sampler, finished, *args, starting=lambda: send.send(time.time()))))
    child.start()
    deadline = time.time() + timeout_s
    result: dict[str, Any] | None = None
    last_start = time.time()
    while result is None and receive.poll(max(0.0, deadline - time.time())):
        message = receive.recv()
        if isinstance(message, dict):
            result = message
        else:
            last_start = message
    child.kill()
    child.join()
    if result is None:
        result = {"sampler": sampler, "finished": finished, "measured": False,
                  "suggestion_over_s": time.time() - last_start}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one-minute smoke version")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--sizes", default=None,
                        help="finished trials (default 100,300,1000,2000,5000)")
    parser.add_argument("--running", type=int, default=31,
                        help="RUNNING trials, as other workers of a 32-worker study have")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cell-budget-s", type=float, default=None,
                        help="stop repeating a cell (after two samples) once this is spent")
    parser.add_argument("--cell-timeout-s", type=float, default=None,
                        help="give up a cell (and larger sizes of its sampler) after this long")
    args = parser.parse_args()
    quick = args.quick
    sizes = [int(s) for s in
             (args.sizes or ("50,200" if quick else "100,300,1000,2000,5000")).split(",")]
    repeats = args.repeats or (3 if quick else 9)
    budget_s = args.cell_budget_s or (5.0 if quick else 30.0)
    timeout_s = args.cell_timeout_s or (30.0 if quick else 240.0)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # GP warns on every dynamic parameter

    start = time.perf_counter()
    pool = synthetic_trials(load_config(), max(sizes) + args.running, ranks={})
    cells: list[dict[str, Any]] = []
    for sampler in args.samplers.split(","):
        over: float | None = None  # a smaller size's unfinished suggestion ran this long
        for finished in sizes:
            if over is None:
                cell = measure_bounded(timeout_s, sampler, finished, args.running, pool,
                                       repeats, budget_s)
                if not cell["measured"]:
                    over = cell["suggestion_over_s"]
            else:
                cell = {"sampler": sampler, "finished": finished, "measured": False,
                        "skipped_after_s": over}
            cells.append(cell)
            print(f"{sampler:>6} {finished:>6} finished: {_shown(cell, timeout_s)}", flush=True)
    path = write_result("sampler_latency", {
        "space": "search_spaces/digits_quickstart.yaml", "storage": "in-memory",
        "settings": {"sizes": sizes, "running": args.running, "repeats": repeats,
                     "cell_budget_s": budget_s, "cell_timeout_s": timeout_s},
        "cells": cells, "wall_s": time.perf_counter() - start,
    }, quick)
    print(f"wrote {path}")


def _shown(cell: dict[str, Any], timeout_s: float) -> str:
    if cell["measured"]:
        return (f"{cell['seconds']['median'] * 1e3:10.1f} ms median "
                f"(first {cell['first_s'] * 1e3:.1f} ms, n={cell['seconds']['n']})")
    if "suggestion_over_s" in cell:
        return (f"cell over {timeout_s:.0f} s: its unfinished suggestion had run "
                f"{cell['suggestion_over_s']:.0f} s")
    return f"skipped (a smaller size already took over {cell['skipped_after_s']:.0f} s)"


if __name__ == "__main__":
    main()

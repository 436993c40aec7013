"""Machinery benchmark: trials started and finished per second, and per-trial machinery time,
with 1-32 concurrent worker processes on the journal file, SQLite and PostgreSQL storages.

Each worker process runs the real ``ranksearch.search.optuna_backend.run_worker`` (its
exact-count loop, host lock, stale-trial check, ``Heartbeat``, ``Objective`` with its
enqueued energy-reuse trials, ``make_sampler``, ``open_storage``) against one study; only
``run_trial`` is the stand-in of ``_common.StandInTrial`` (sleep ``--duration`` seconds,
synthetic metrics, ``metrics.json`` written in the run directory). The study is first filled
with ``--prefill`` synthetic complete trials, and the workers start together after each has
loaded the study, so that start-up (a journal replay, or the first full read of an RDB
storage) is reported apart from steady work. Workers share one run directory, i.e. one host
and one ask lock, as ``ranksearch search --workers N`` runs them.

Timing comes from wrappers, in each worker, around ``_next_trial``, the host's ask lock (time
spent queueing for it), ``Study.ask``, ``Study.tell`` and the storages'
``set_trial_user_attr`` (heartbeats and metrics); "machinery per trial" is the time a worker
spends outside the stand-in's sleep between two trials. Round trips count the calls that
reach the database (each ``RDBStorage`` method is one session) or the journal file
(``read_logs``, ``append_logs``).

PostgreSQL: a local server on 127.0.0.1 (Debian's ``postgresql`` package), started here when it
is down and stopped again at the end; the benchmark's own role and database are created.

    PYTHONPATH=. python benchmarks/scale/storage_throughput.py [--quick]
    PYTHONPATH=. python benchmarks/scale/storage_throughput.py --storages postgresql \
        --workers 32 --prefill 5000 --sampler tpe --duration 20 --trials 96   # goal check
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from _common import (
    StandInTrial,
    layer_ranks,
    load_config,
    reference_metrics,
    summary,
    synthetic_trials,
    write_result,
)
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ranksearch.runs import RunDir
from ranksearch.search import objective, optuna_backend
from ranksearch.search.storage import open_storage
from ranksearch.search.study import TARGET_ATTR, create_study

PG_ROLE = "ranksearch_bench"
PG_PASSWORD = "ranksearch-bench"  # a throw-away role on a loopback-only server
# A bare postgresql:// URL, as users write it: SQLAlchemy 2.1 opens it with psycopg 3, which
# ranksearch's ``postgres`` and ``test`` extras install. (The results up to now were measured
# with postgresql+psycopg2://; both drivers speak the same protocol to the same server.)
PG_URL = f"postgresql://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:5432/{PG_ROLE}"
# 32 workers each reading a 5,000-trial database need minutes to start on 2 cores.
STARTUP_TIMEOUT_S = 480.0
CELL_TIMEOUT_S = 240.0


# --- PostgreSQL on loopback ------------------------------------------------------------------
def _psql(sql: str) -> str:
    return subprocess.run(["su", "postgres", "-c", f'psql -qtAc "{sql}"'], check=True,
                          capture_output=True, text=True, cwd="/").stdout.strip()


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL database for the benchmark on 127.0.0.1; the server is stopped at the end
    when this started it."""
    status = subprocess.run(["service", "postgresql", "status"], capture_output=True, text=True)
    started = status.returncode != 0
    if started:
        subprocess.run(["service", "postgresql", "start"], check=True, capture_output=True)
    try:
        if _psql(f"SELECT 1 FROM pg_roles WHERE rolname='{PG_ROLE}'") != "1":
            _psql(f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{PG_PASSWORD}'")
        if _psql(f"SELECT 1 FROM pg_database WHERE datname='{PG_ROLE}'") != "1":
            subprocess.run(["su", "postgres", "-c", f"createdb -O {PG_ROLE} {PG_ROLE}"],
                           check=True, capture_output=True)
        yield PG_URL
    finally:
        if started:
            subprocess.run(["service", "postgresql", "stop"], capture_output=True)


# --- one worker process ----------------------------------------------------------------------
class _Recorder:
    """Per-process timings and storage round trips, written as JSON when the worker ends."""

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {"next_trial": [], "ask": [], "tell": [],
                                             "user_attr": [], "lock_wait": []}
        self.round_trips: Counter[str] = Counter()
        self._depth = threading.local()

    def count(self, cls: type) -> None:
        """Count the calls of ``cls``'s methods that reach the database or the journal file;
        a call made inside another is part of it (one round trip, or one transaction)."""
        for name, fn in list(vars(cls).items()):
            if not inspect.isfunction(fn) or name.startswith("__"):
                continue

            def counted(*args: Any, _fn: Callable[..., Any] = fn, _name: str = name,
                        **kwargs: Any) -> Any:
                depth = getattr(self._depth, "value", 0)
                if depth == 0:
                    self.round_trips[_name] += 1
                self._depth.value = depth + 1
                try:
                    return _fn(*args, **kwargs)
                finally:
                    self._depth.value = depth

            setattr(cls, name, counted)

    def wrap(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, recording (start, end[, outcome]) of each call under ``kind``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            result = fn(*args, **kwargs)
            end = time.time()
            if kind == "next_trial":
                outcome = "done" if result is False else "wait" if result is None else "trial"
                self.events[kind].append((start, end, outcome))
            elif kind == "tell":
                complete = kwargs.get("state") in (None, TrialState.COMPLETE) and (
                    len(args) > 2 or kwargs.get("values") is not None)
                self.events[kind].append((start, end, complete))
            else:
                self.events[kind].append((start, end))
            return result

        return timed

    def wrap_lock(self, lock: Callable[[RunDir], Any]) -> Callable[[RunDir], Any]:
        """The host's ask lock, recording how long each caller waited to get it: queueing
        behind the other workers of the host, not work."""

        @contextlib.contextmanager
        def timed(run: RunDir) -> Iterator[None]:
            start = time.time()
            with lock(run):
                self.events["lock_wait"].append((start, time.time()))
                yield

        return timed


def _worker(index: int, url: str, run_path: str, study_name: str, sampler: str,
            duration_s: float, ranks: dict[str, int], barrier: Any, out: str) -> None:
    """One worker: the real ``run_worker`` with the stand-in trial and timing wrappers."""
    forked = time.time()
    # The worker's own log lines (one per trial) go to a file, not the benchmark's terminal.
    log = os.open(out + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    recorder = _Recorder()
    stand_in = StandInTrial(duration_s, ranks, seed=index)
    objective.run_trial = stand_in
    # The real method builds the model to name its layers; the quickstart space is global, so
    # the names only shape the synthetic ranks, which the stand-in already has.
    objective.Objective.layer_groups = lambda self: {name: name for name in ranks}
    optuna_backend._next_trial = recorder.wrap("next_trial", optuna_backend._next_trial)
    optuna_backend._ask_lock = recorder.wrap_lock(optuna_backend._ask_lock)
    optuna.Study.ask = recorder.wrap("ask", optuna.Study.ask)
    optuna.Study.tell = recorder.wrap("tell", optuna.Study.tell)
    for cls in (JournalStorage, _CachedStorage):
        cls.set_trial_user_attr = recorder.wrap("user_attr", cls.set_trial_user_attr)
    # What crosses to the storage: an RDB storage's methods (each one session), the journal
    # backend's reads and appends (behind the in-process replay).
    recorder.count(RDBStorage)
    recorder.count(JournalFileBackend)
    real_load = optuna_backend.load_study
    record: dict[str, Any] = {"index": index}

    def load_then_wait(*args: Any, **kwargs: Any) -> optuna.Study:
        # The first read replays the journal or fills the RDB cache: start-up, not steady work.
        study = real_load(*args, **kwargs)
        study.get_trials(deepcopy=False)
        record["startup_s"] = time.time() - forked
        barrier.wait(timeout=STARTUP_TIMEOUT_S)
        return study

    optuna_backend.load_study = load_then_wait
    config = load_config(sampler, name=study_name)
    try:
        record["completed"] = optuna_backend.run_worker(
            config, RunDir(run_path), url, worker=index, progress=False)
    except BaseException as err:  # recorded: a storage that fails under load is a result
        record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    record["events"] = recorder.events
    record["round_trips"] = recorder.round_trips
    record["sleeps"] = stand_in.sleeps
    Path(out).write_text(json.dumps(record))


# --- one cell: a storage, a study size, a number of workers ----------------------------------
def _gaps(record: dict[str, Any], go: float, lock_wait: bool
          ) -> tuple[list[float], list[float]]:
    """Machinery seconds before each trial of one worker (first trial, later trials): from the
    end of the previous stand-in sleep (or the start signal) to the start of the next, left
    out when a wait (``_next_trial`` returned None, the exact-count poll) fell in between.
    Without ``lock_wait``, less the time spent queueing for the host's ask lock."""
    waits = [start for start, _, outcome in record["events"]["next_trial"] if outcome == "wait"]
    queued = record["events"].get("lock_wait", [])
    gaps: list[float] = []
    previous = go
    for start, end in record["sleeps"]:
        waited = any(previous <= w < start for w in waits)
        gap = start - previous
        if not lock_wait:
            gap -= sum(e - s for s, e in queued if previous <= s < start)
        gaps.append(float("nan") if waited else gap)
        previous = end
    kept = [g for g in gaps[1:] if g == g]  # NaN marks a gap with a wait in it
    return [g for g in gaps[:1] if g == g], kept


def analyse(records: list[dict[str, Any]], go: float, duration_s: float) -> dict[str, Any]:
    """Throughput and latency of one cell from every worker's records."""
    events = {k: [e for r in records for e in r.get("events", {}).get(k, [])]
              for k in ("next_trial", "ask", "tell", "user_attr", "lock_wait")}
    finished = sorted(end for _, end, complete in events["tell"] if complete)
    started = [s for s, _, outcome in events["next_trial"] if outcome == "trial"]
    window = (finished[-1] - go) if finished else float("nan")
    first: list[float] = []
    later: list[float] = []
    served: list[float] = []
    for record in records:
        f, g = _gaps(record, go, lock_wait=True)
        first.extend(f)
        later.extend(g)
        served.extend(_gaps(record, go, lock_wait=False)[1])
    round_trips: Counter[str] = Counter()
    for record in records:
        round_trips.update(record.get("round_trips", {}))
    per_trial = {k: v / len(finished) for k, v in round_trips.most_common()} if finished else {}
    return {
        "errors": [r["error"] for r in records if "error" in r],
        "round_trips_per_trial": per_trial,
        "round_trips_per_trial_total": sum(per_trial.values()),
        "startup_s": summary([r["startup_s"] for r in records if "startup_s" in r]),
        "finished": len(finished), "started": len(started), "window_s": window,
        "finished_per_s": len(finished) / window if finished else 0.0,
        "started_per_s": len(started) / window if finished else 0.0,
        "ideal_per_s": len(records) / duration_s if duration_s > 0 else None,
        "next_trial_s": summary([e - s for s, e, o in events["next_trial"] if o == "trial"]),
        "ask_s": summary([e - s for s, e in events["ask"]]),
        "tell_s": summary([e - s for s, e, _ in events["tell"]]),
        "user_attr_s": summary([e - s for s, e in events["user_attr"]]),
        "lock_wait_s": summary([e - s for s, e in events["lock_wait"]]),
        "waits": sum(1 for _, _, o in events["next_trial"] if o == "wait"),
        "machinery_first_trial_s": summary(first),
        "machinery_per_trial_s": summary(later),
        "machinery_per_trial_unqueued_s": summary(served),
    }


def _storage_url(kind: str, folder: Path, pg_url: str | None) -> str:
    if kind == "journal":
        return str(folder / "study.journal")
    if kind == "sqlite":
        return f"sqlite:///{folder / 'study.db'}"
    assert pg_url is not None
    return pg_url


def _release(storage: Any) -> None:
    """Close the parent's database connections before forking: a child must not share them."""
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def run_cell(url: str, study_name: str, sampler: str, workers: int, trials: int,
             duration_s: float, ranks: dict[str, int], run_path: Path, work: Path
             ) -> dict[str, Any]:
    """Run ``workers`` worker processes until the study holds ``trials`` more complete ones."""
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    study.set_user_attr(TARGET_ATTR, before + trials)
    _release(storage)
    del study, storage
    gc.collect()

    ctx = mp.get_context("fork")  # children inherit the imports: no per-process torch import
    barrier = ctx.Barrier(workers + 1)
    outs = [work / f"worker-{i}.json" for i in range(workers)]
    for out in outs:
        out.unlink(missing_ok=True)
    procs = [ctx.Process(target=_worker, args=(i, url, str(run_path), study_name, sampler,
                                                duration_s, ranks, barrier, str(out)))
             for i, out in enumerate(outs)]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=STARTUP_TIMEOUT_S)
        go = time.time()
    except threading.BrokenBarrierError:
        go = float("nan")
    deadline = time.time() + CELL_TIMEOUT_S
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.time()))
    timed_out = [p.pid for p in procs if p.is_alive()]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    records = [json.loads(out.read_text()) for out in outs if out.is_file()]
    result = analyse(records, go, duration_s)
    result.update(workers=workers, trials=trials, finished_before=before,
                  workers_reporting=len(records), timed_out_workers=len(timed_out))
    return result


def _new_study(url: str, name: str, sampler: str, prefill: list[optuna.trial.FrozenTrial]
               ) -> float:
    """Create the study as ``ranksearch search`` does and add the prefill; returns seconds."""
    storage = open_storage(url)
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage)
    study = create_study(load_config(sampler, name=name), storage)
    study.set_user_attr("reference", reference_metrics())
    start = time.perf_counter()
    study.add_trials(prefill)
    elapsed = time.perf_counter() - start
    _release(storage)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one-minute smoke version")
    parser.add_argument("--storages", default="journal,sqlite,postgresql")
    parser.add_argument("--workers", default=None, help="worker counts (default 1,4,16,32)")
    parser.add_argument("--prefill", default=None,
                        help="complete trials in the study before the workers start "
                             "(default 0,5000)")
    parser.add_argument("--sampler", default="random",
                        help="random isolates the storage; the sampler's own cost is "
                             "sampler_latency.py's")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds per stand-in trial (0 = saturate the machinery)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials to finish per cell (default max(48, 4 x workers))")
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args()
    quick = args.quick
    worker_counts = [int(w) for w in (args.workers or ("1,4" if quick else "1,4,16,32")).split(",")]
    prefills = [int(p) for p in (args.prefill or ("0" if quick else "0,5000")).split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    config = load_config(args.sampler)
    ranks = layer_ranks(config)
    pool = synthetic_trials(config, max(prefills), ranks)
    storages = args.storages.split(",")
    cells: list[dict[str, Any]] = []
    started = time.perf_counter()

    def save() -> Path:
        # After every cell: a cell that breaks the run leaves the earlier ones recorded.
        return write_result(args.name or "storage_throughput", {
            "settings": {"sampler": args.sampler, "duration_s": args.duration,
                         "layout": "one host: shared run directory and ask lock",
                         "space": "search_spaces/digits_quickstart.yaml",
                         "energy_trials_per_model": config.space.energy_trials_per_model},
            "cells": cells, "wall_s": time.perf_counter() - started,
        }, quick)

    work = Path(tempfile.mkdtemp(prefix="ranksearch-storage-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            pg_url = stack.enter_context(postgres()) if "postgresql" in storages else None
            for kind in storages:
                for prefill in prefills:
                    folder = work / f"{kind}-{prefill}"
                    folder.mkdir()
                    url = _storage_url(kind, folder, pg_url)
                    name = f"scale-{kind}-{prefill}"
                    prefill_s = _new_study(url, name, args.sampler, pool[:prefill])
                    for workers in worker_counts:
                        trials = args.trials or (8 if quick else max(48, 4 * workers))
                        cell = run_cell(url, name, args.sampler, workers, trials,
                                        args.duration, ranks, folder / "run", folder)
                        cell.update(storage=kind, prefill=prefill, prefill_s=prefill_s)
                        cells.append(cell)
                        print(_line(cell), flush=True)
                        save()
                    if kind == "postgresql":
                        optuna.delete_study(study_name=name, storage=url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {save()}")


def _line(cell: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        s = cell[key]
        return f"{s['median'] * 1e3:7.1f}" if s.get("n") else "      -"

    errors = f"  ERRORS {len(cell['errors'])}: {cell['errors'][0]}" if cell["errors"] else ""
    return (f"{cell['storage']:>10} prefill {cell['prefill']:>5} workers {cell['workers']:>2}: "
            f"{cell['finished_per_s']:6.1f} finished/s {cell['started_per_s']:6.1f} started/s  "
            f"ms median next_trial {ms('next_trial_s')} tell {ms('tell_s')} "
            f"attr {ms('user_attr_s')} machinery/trial {ms('machinery_per_trial_s')}  "
            f"round trips/trial {cell['round_trips_per_trial_total']:.0f}  "
            f"startup {cell['startup_s'].get('median', float('nan')):.1f}s{errors}")


if __name__ == "__main__":
    main()

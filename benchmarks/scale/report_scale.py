"""Machinery benchmark: time to write the Pareto report, and the size of ``index.html``, for
studies of thousands of synthetic trials.

Each study lives in a run directory with the default journal storage, as ``ranksearch search``
leaves it: the quickstart config, a synthetic dense reference, and trials built with
``optuna.trial.create_trial`` + ``study.add_trials`` whose ``metrics`` user attr has every key
of ``docs/internals.md`` (real ResNet-20 layer names in ``ranks`` and ``plan``). A few percent
of the trials failed (with a ``fail_reason``), were truncated (``full_budget`` false) or
diverged, as in a real study, so that every part of the report has work to do.

Timed: ``ranksearch report RUN_DIR`` in a fresh process, as a user runs it (imports, opening the
storage, replaying the journal, writing every file); then, median of ``--repeats`` in one warm
process, the same ``write_report_for_run`` split into loading the study and ``write_report``
on the loaded study. With ``--trial-minutes T`` a second study per size also holds the
heartbeat lines that trials of T minutes wrote into the journal (one per ``HEARTBEAT_S``)
before ranksearch moved a journal's heartbeats to files: the cost that change removed.

    PYTHONPATH=. python benchmarks/scale/report_scale.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from _common import (
    REPO,
    layer_ranks,
    load_config,
    reference_metrics,
    synthetic_trials,
    write_result,
)
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from ranksearch import config as cfg
from ranksearch.app import write_report_for_run
from ranksearch.report import write_report
from ranksearch.runs import RunDir, atomic_write_text
from ranksearch.search.storage import open_storage
from ranksearch.search.study import (
    HEARTBEAT_ATTR,
    HEARTBEAT_S,
    TARGET_ATTR,
    create_study,
    open_run_study,
)

GOAL_SECONDS = 10.0
GOAL_MB = 10.0


def realistic_states(trials: list[FrozenTrial], seed: int = 0) -> list[FrozenTrial]:
    """The complete synthetic trials with 3 % failed, 2 % truncated and 1 % diverged, and
    every other one reusing its predecessor's SVD training (``energy_trials_per_model: 2``)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, trial in enumerate(trials):
        metrics = dict(trial.user_attrs["metrics"])
        attrs: dict[str, Any] = {}
        if i % 2:
            attrs["reuses_training_of"] = i - 1
        draw = rng.uniform()
        if draw < 0.03:
            attrs["fail_reason"] = "diverged: loss is NaN at epoch 2"
            out.append(create_trial(state=TrialState.FAIL, params=trial.params,
                                    distributions=trial.distributions, user_attrs=attrs))
            continue
        if draw < 0.05:
            metrics["full_budget"] = False
        elif draw < 0.06:
            metrics["status"] = "diverged"
        out.append(create_trial(params=trial.params, distributions=trial.distributions,
                                values=trial.values, user_attrs={**attrs, "metrics": metrics}))
    return out


def build_run(folder: Path, trials: list[FrozenTrial], heartbeats: int) -> tuple[RunDir, float]:
    """A run directory holding a study of ``trials``, plus ``heartbeats`` heartbeat lines in its
    journal; returns it and the seconds spent adding the trials."""
    config = load_config(name="scale-report", trials=len(trials))
    run = RunDir(folder).create()
    atomic_write_text(run.config_path, cfg.dump(config))
    storage = open_storage(str(run.journal_path))
    study = create_study(config, storage)
    study.set_user_attr(TARGET_ATTR, len(trials))
    study.set_user_attr("reference", reference_metrics())
    start = time.perf_counter()
    study.add_trials(trials)
    added = time.perf_counter() - start
    if heartbeats:
        _add_heartbeat_lines(study, storage, run.journal_path, heartbeats)
    return run, added


def _add_heartbeat_lines(study: optuna.Study, storage: JournalStorage, journal: Path,
                         count: int) -> None:
    """Append ``count`` heartbeat lines to the journal. One heartbeat is written through the
    real storage on a running trial; its line, exactly as Optuna wrote it, is then repeated
    (one ``fsync``'d write per line would take hours), and the trial is finished."""
    trial = study.ask()
    storage.set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
    line = journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with journal.open("ab") as handle:
        handle.write((line + b"\n") * (count - 1))
    study.tell(trial, state=TrialState.FAIL)


# Run in a fresh process: the memory and time one process (a worker joining, a report) needs to
# hold the study, i.e. to open the storage and read every trial once.
_LOAD_PROBE = """
import json, sys, time
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from ranksearch.search.storage import open_storage
from ranksearch.search.study import load_study
before, start = rss(), time.perf_counter()
trials = load_study(open_storage(sys.argv[1])).get_trials(deepcopy=False)
print(json.dumps({"load_s": time.perf_counter() - start, "rss_mb": rss() - before}))
"""


def probe_load(run: RunDir) -> dict[str, float]:
    """Seconds and resident MB for a fresh process to read the whole study."""
    done = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(run.journal_path)],
                          check=True, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(done.stdout)


# What a cold ``ranksearch report`` spends importing: everything it imports now, the torch and
# torchvision part of that (which the report itself never uses), and the libraries it needs.
IMPORTS = {
    "ranksearch_report_imports": "import ranksearch.cli, ranksearch.app, "
                                 "ranksearch.report.writer, ranksearch.baselines",
    "torch_torchvision": "import torch, torchvision.models",
    "report_libraries": "import numpy, pandas, optuna, plotly.graph_objects, plotly.io, "
                        "matplotlib.figure, yaml",
}


def time_imports() -> dict[str, float]:
    """Seconds each of :data:`IMPORTS` takes in a fresh process, less a bare interpreter's."""
    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        return time.perf_counter() - start

    bare = run("pass")
    return {name: run(code) - bare for name, code in IMPORTS.items()}


def time_report(run: RunDir, out: Path, repeats: int) -> dict[str, Any]:
    """Seconds of ``ranksearch report`` as a user runs it (a fresh process: imports included),
    then medians in this warm process of the same path, of loading the study and of
    ``write_report`` alone; sizes of the written files."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ranksearch", "report", str(run.path), "--out",
                    str(out)], check=True, capture_output=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    cold = time.perf_counter() - start
    total, load, write = [], [], []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        write_report_for_run(run.path, out)
        total.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, _, study = open_run_study(run.path)
        study.get_trials(deepcopy=False)
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        write_report(study, run.path, out)
        write.append(time.perf_counter() - start)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return {"cli_report_s": cold, "report_s": statistics.median(total),
            "load_s": statistics.median(load), "write_report_s": statistics.median(write),
            "report_samples_s": total,
            "files_bytes": sizes, "index_html_mb": sizes["index.html"] / 1e6,
            "journal_mb": run.journal_path.stat().st_size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one-minute smoke version")
    parser.add_argument("--sizes", default=None, help="trials per study (default 1000,5000)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--trial-minutes", type=float, default=None,
                        help="also time a journal holding the heartbeat lines of trials this "
                             "long, as ranksearch wrote them before heartbeats on a journal "
                             "became file times (10 gives the old 5,000-trial figure)")
    args = parser.parse_args()
    quick = args.quick
    sizes = [int(s) for s in (args.sizes or ("500" if quick else "1000,5000")).split(",")]
    repeats = args.repeats or (1 if quick else 3)
    per_trial = int(args.trial_minutes * 60 / HEARTBEAT_S) if args.trial_minutes else 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    config = load_config()
    ranks = layer_ranks(config)
    pool = realistic_states(synthetic_trials(config, max(sizes), ranks))
    work = Path(tempfile.mkdtemp(prefix="ranksearch-report-bench-"))
    cells = []
    try:
        for size in sizes:
            for heartbeats in sorted({0, per_trial * size}):
                folder = work / f"run-{size}-{heartbeats}"
                run, added = build_run(folder, pool[:size], heartbeats)
                cell = time_report(run, work / "report", repeats)
                probe = probe_load(run)
                cell.update(trials=size, heartbeat_lines=heartbeats, add_trials_s=added,
                            fresh_load_s=probe["load_s"], study_rss_mb=probe["rss_mb"])
                cells.append(cell)
                verdict = ", ".join(
                    f"{what} {'yes' if cell[key] < limit else 'NO'}"
                    for what, key, limit in (
                        ("write_report", "write_report_s", GOAL_SECONDS),
                        ("warm report", "report_s", GOAL_SECONDS),
                        ("cold CLI", "cli_report_s", GOAL_SECONDS),
                        ("page size", "index_html_mb", GOAL_MB)))
                print(f"{size:>6} trials, {heartbeats:>7} heartbeat lines "
                      f"(journal {cell['journal_mb']:.1f} MB): ranksearch report "
                      f"{cell['cli_report_s']:.2f} s; warm {cell['report_s']:.2f} s "
                      f"= load {cell['load_s']:.2f} s + write {cell['write_report_s']:.2f} s; "
                      f"index.html {cell['index_html_mb']:.2f} MB; a fresh process reads "
                      f"the study in {cell['fresh_load_s']:.1f} s, holding "
                      f"{cell['study_rss_mb']:.0f} MB [goal <{GOAL_SECONDS:g} s, <{GOAL_MB:g} MB "
                      f"met: {verdict}]", flush=True)
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    imports = time_imports()
    print("cold imports (s): " + ", ".join(f"{k} {v:.1f}" for k, v in imports.items()))
    path = write_result("report_scale", {
        "settings": {"sizes": sizes, "repeats": repeats, "trial_minutes": args.trial_minutes,
                     "heartbeat_s": HEARTBEAT_S, "storage": "journal file (the default)",
                     "states": "3 % failed, 2 % truncated, 1 % diverged"},
        "goals": {"report_s": GOAL_SECONDS, "index_html_mb": GOAL_MB},
        "cells": cells, "cold_imports_s": imports, "wall_s": time.perf_counter() - started,
    }, quick)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Framework overhead per trial of a finished study, whichever backend ran it.

    python benchmarks/framework_overhead.py RUN_DIR [RUN_DIR ...] [--out FILE.json]

Per complete trial, from the study itself:
- inside the trial: ``framework_time_s`` (suggesting, loading the cached reference,
  decomposing, pruning, compacting, writing files: everything but training and evaluation)
  as a share of the trial's ``wall_time_s``;
- around the trial: Optuna's ``datetime_complete - datetime_start`` minus ``wall_time_s``,
  i.e. what the backend spends between asking for the trial and telling its result (for Ray
  Tune: placing the trial, the trainable opening the study, reporting).
Prints the medians and maxima (and writes them to ``--out``, one entry per run directory);
the issue's goal is at most 3 % of a trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ranksearch.search.study import open_run_study


def overhead(run_dir: str) -> dict:
    """The figures of one finished study (fractions of a trial, seconds)."""
    _, config, study = open_run_study(run_dir)
    inside, around, total, walls = [], [], [], []
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        m = t.user_attrs["metrics"]
        span = (t.datetime_complete - t.datetime_start).total_seconds()
        walls.append(m["wall_time_s"])
        inside.append(m["framework_time_s"] / m["wall_time_s"])
        around.append(max(span - m["wall_time_s"], 0.0))
        total.append((m["framework_time_s"] + max(span - m["wall_time_s"], 0.0)) / span)
    return {"study": config.name, "trials": len(inside),
            "median_trial_s": statistics.median(walls),
            "inside_median": statistics.median(inside), "inside_max": max(inside),
            "around_median_s": statistics.median(around), "around_max_s": max(around),
            "together_median": statistics.median(total), "together_max": max(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    results = {}
    for run_dir in args.run_dirs:
        r = results[run_dir] = overhead(run_dir)
        print(f"{run_dir} ({r['study']}, {r['trials']} trials, median trial "
              f"{r['median_trial_s']:.0f} s): inside the trial median "
              f"{100 * r['inside_median']:.2f} % (max {100 * r['inside_max']:.2f} %); around it "
              f"median {r['around_median_s']:.2f} s (max {r['around_max_s']:.2f} s); together "
              f"median {100 * r['together_median']:.2f} % (max {100 * r['together_max']:.2f} %) "
              "of the trial")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

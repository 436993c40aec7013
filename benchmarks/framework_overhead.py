"""Framework overhead per trial of a finished study, whichever backend ran it.

    python benchmarks/framework_overhead.py RUN_DIR [RUN_DIR ...]

Per complete trial, from the study itself:
- inside the trial: ``framework_time_s`` (suggesting, loading the cached reference,
  decomposing, pruning, compacting, writing files: everything but training and evaluation)
  as a share of the trial's ``wall_time_s``;
- around the trial: Optuna's ``datetime_complete - datetime_start`` minus ``wall_time_s``,
  i.e. what the backend spends between asking for the trial and telling its result (for Ray
  Tune: placing the trial, the trainable opening the study, reporting).
Prints the medians and maxima; the issue's goal is at most 3 % of a trial.
"""

from __future__ import annotations

import argparse
import statistics

from ranksearch.search.study import open_run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    args = parser.parse_args()
    for run_dir in args.run_dirs:
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
        print(f"{run_dir} ({config.name}, {len(inside)} trials, median trial "
              f"{statistics.median(walls):.0f} s): "
              f"inside the trial median {100 * statistics.median(inside):.2f} % (max "
              f"{100 * max(inside):.2f} %); around it median {statistics.median(around):.2f} s "
              f"(max {max(around):.2f} s); together median {100 * statistics.median(total):.2f} %"
              f" (max {100 * max(total):.2f} %) of the trial")


if __name__ == "__main__":
    main()

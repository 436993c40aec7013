"""Wall time of `ranksearch quickstart` as a newcomer runs it: a fresh folder, no cache.

    python benchmarks/quickstart_time.py [--repeats 1]

Runs the installed `ranksearch quickstart` in a new temporary working directory (so the
reference, every trial, the baselines, the report and the export are computed from nothing),
records the wall time, the CPU count and the load average around it, and the three summary
lines it prints. Writes benchmarks/results/quickstart_time.json. The goal (issue #6): at most
5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ranksearch.precision import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "quickstart_time.json"
GOAL_S = 300.0


def one_run() -> dict:
    work = Path(tempfile.mkdtemp(prefix="ranksearch-quickstart-"))
    try:
        load_before = os.getloadavg()
        start = time.perf_counter()
        done = subprocess.run([shutil.which("ranksearch") or "ranksearch", "quickstart"],
                              cwd=work, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"quickstart failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return {"wall_s": round(wall, 1), "load_before": load_before,
                "load_after": os.getloadavg(), "summary": done.stdout.strip().splitlines()[-3:]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        runs.append(one_run())
        print(json.dumps(runs[-1]), flush=True)
    result = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "cpu": cpu_name(),
              "goal_s": GOAL_S,
              "runs": runs}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    walls = [r["wall_s"] for r in runs]
    print(f"quickstart wall time: {', '.join(f'{w:.0f} s' for w in walls)} "
          f"(goal <= {GOAL_S:.0f} s on 2 cores): {'met' if max(walls) <= GOAL_S else 'missed'}")


if __name__ == "__main__":
    main()

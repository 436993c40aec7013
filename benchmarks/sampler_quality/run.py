"""Search quality: hypervolume after K trials for TPE, NSGA-II and random, three seeds each.

Every study is a real ranksearch search of the quickstart space (ResNet-20 on the bundled
digits, SVD training in every trial); only the sampler and its seed change. The dense
reference is trained once and its verified cache copied into each study's run directory, so
every study starts from the same model and spends its whole budget on trials.

The hypervolume is computed from the search objectives the samplers see (validation accuracy,
FLOPs / reference FLOPs), reference point (0, 1), after each completed trial in completion
order; test accuracy gives a second column.

    python benchmarks/sampler_quality/run.py [--trials 24] [--seeds 0 1 2] [--parallel 2]

Writes benchmarks/sampler_quality/results.json and prints the Markdown table of
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from ranksearch import config as cfg
from ranksearch import pipeline
from ranksearch.report.pareto import hypervolume_history, trials_frame
from ranksearch.runs import RunDir
from ranksearch.search.study import open_run_study

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SAMPLERS = {
    # The defaults ranksearch ships (TPE: multivariate, constant liar), with the quickstart's
    # 6 start-up trials; NSGA-II with a population that fits several generations in K.
    "tpe": {"name": "tpe", "n_startup_trials": 6},
    "nsga2": {"name": "nsga2", "population_size": 8},
    "random": {"name": "random"},
}


def space(sampler: dict[str, Any], seed: int, trials: int) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "search_spaces" / "digits_quickstart.yaml").read_text())
    config.pop("baselines", None)
    config.update(name="sampler-quality", trials=trials, sampler={**sampler, "seed": seed})
    return config


def run_study(work: Path, label: str, config: dict[str, Any], reference: Path) -> float:
    run = work / label
    space_path = work / f"{label}.yaml"
    space_path.write_text(yaml.safe_dump(config, sort_keys=False))
    if not (run / "cache" / "reference").exists():
        shutil.copytree(reference, run / "cache" / "reference")
    # One thread per study: the studies run side by side on the machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ranksearch", "search", str(space_path),
                    "--run-dir", str(run), "--quiet"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def history(run: Path) -> dict[str, list[float]]:
    """Hypervolume after each complete trial (validation and test accuracy), as the report
    computes it (:func:`~ranksearch.report.pareto.hypervolume_history`)."""
    _, _, study = open_run_study(run)
    frame = trials_frame(study, run)
    on_test = frame.assign(accuracy=frame["test_accuracy"])
    return {"val": hypervolume_history(frame)["hypervolume"].tolist(),
            "test": hypervolume_history(on_test)["hypervolume"].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sampler-quality")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    # The reference, trained once in this process; each study gets a copy of its cache.
    shared = RunDir(args.work / "reference")
    pipeline.reference(cfg.loads(yaml.safe_dump(space(SAMPLERS["tpe"], 0, args.trials))),
                       shared, progress=False)
    reference = shared.path / "cache" / "reference"

    jobs = [(f"{name}-seed{seed}", space(sampler, seed, args.trials))
            for seed in args.seeds for name, sampler in SAMPLERS.items()]
    with ThreadPoolExecutor(args.parallel) as pool:
        walls = dict(zip([label for label, _ in jobs], pool.map(
            lambda job: run_study(args.work, *job, reference), jobs), strict=True))

    studies = {}
    for label, _ in jobs:
        studies[label] = {"wall_s": walls[label], **history(args.work / label)}
    result = {"trials": args.trials, "seeds": args.seeds, "samplers": SAMPLERS,
              "studies": studies}
    (HERE / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    """Mean ± standard deviation over seeds of the hypervolume at K/2 and K trials, and each
    sampler's margin over random at K."""
    k = result["trials"]
    checkpoints = sorted({k // 2, k})

    def values(name: str, metric: str, at: int) -> list[float]:
        return [s[metric][at - 1] for label, s in result["studies"].items()
                if label.startswith(f"{name}-")]

    header = ["sampler", *(f"HV ({m}) after {c}" for m in ("val", "test") for c in checkpoints),
              f"vs random after {k} (val)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    random_k = statistics.mean(values("random", "val", k))
    for name in SAMPLERS:
        cells = [name]
        for metric in ("val", "test"):
            for c in checkpoints:
                v = values(name, metric, c)
                cells.append(f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}")
        margin = statistics.mean(values(name, "val", k)) - random_k
        cells.append("–" if name == "random" else
                     f"{margin:+.4f} ({100 * margin / random_k:+.1f} %)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

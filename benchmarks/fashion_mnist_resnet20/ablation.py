"""Why the Fashion-MNIST search fell short: single trials that change one thing at a time.

Each variant is one `ranksearch train` run (a real SVD-training trial: decompose the cached
reference, SVD-train, prune by energy, fine-tune, measure on the test split) on the run
directory of the benchmark, so every variant starts from the same reference. The base point
is the searched trial with the largest FLOPs reduction (channel, L1, lambda_s 0.022, e 0.5).

    python benchmarks/fashion_mnist_resnet20/ablation.py [RUN_DIR]

Writes fashion_mnist_resnet20/ablation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BASE_PARAMS = {"scheme": "channel", "init": "svd", "decay": "l1", "lambda_o": 1.0,
               "lambda_s": 0.022, "energy": 0.5}
# (name, what changes, params update, model update, schedule update)
VARIANTS: list[tuple[str, str, dict, dict, dict]] = [
    ("base", "the searched point (every layer decomposed)", {}, {}, {}),
    ("keep-ends", "conv1 and fc kept dense", {}, {"exclude": ["conv1", "fc"]}, {}),
    ("keep-ends-e0.3", "conv1 and fc dense, e 0.3", {"energy": 0.3},
     {"exclude": ["conv1", "fc"]}, {}),
    ("keep-ends-spatial", "conv1 and fc dense, spatial scheme", {"scheme": "spatial"},
     {"exclude": ["conv1", "fc"]}, {}),
    ("keep-ends-prune-early", "conv1 and fc dense, 10 SVD-training + 60 fine-tuning steps",
     {}, {"exclude": ["conv1", "fc"]},
     {"svd": {"max_batches": 10}, "finetune": {"max_batches": 60}}),
]


def trial_config(space: dict[str, Any], params: dict, model: dict, schedule: dict
                 ) -> dict[str, Any]:
    config = {k: v for k, v in space.items() if k not in ("space", "baselines")}
    config["params"] = {**BASE_PARAMS, **params}
    config["model"] = {**config["model"], **model}
    config["schedule"] = {phase: {**values, **schedule.get(phase, {})}
                          for phase, values in config["schedule"].items()}
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=str(ROOT / "runs/fashion-mnist-resnet20"))
    args = parser.parse_args()
    run = Path(args.run_dir)
    space = yaml.safe_load((ROOT / "search_spaces/fashion_mnist_resnet20.yaml").read_text())
    # The reference schedule of the benchmark, so that its cached reference is reused.
    space["model"].pop("exclude", None)
    rows = []
    for name, change, params, model, schedule in VARIANTS:
        out = run / "ablation" / name
        path = run / "ablation" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(trial_config(space, params, model, schedule)))
        if not (out / "metrics.json").is_file():
            subprocess.run([sys.executable, "-m", "ranksearch", "train", str(path), "--run-dir",
                            str(run), "--out", str(out), "--quiet"], check=True,
                           env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"variant": name, "change": change,
                     "test_accuracy": metrics["test_accuracy"],
                     "flops_reduction": metrics["flops_reduction"],
                     "ranks": metrics["ranks"]})
        print(f"{name}: test {100 * metrics['test_accuracy']:.2f} %, "
              f"{metrics['flops_reduction']:.2f}x", flush=True)
    (HERE / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| variant | change | test accuracy | FLOPs reduction |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['change']} | {100 * r['test_accuracy']:.2f} % | "
              f"{r['flops_reduction']:.2f}x |" for r in rows]
    (HERE / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

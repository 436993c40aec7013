"""Does an SVD trial gain from another learning rate, at its own structure?

The counterpart of ``baseline_lr.py`` for SVD training: the trial of ``config`` (a run's
``trials/N/config.yaml``, whose ``params.ranks`` fix the structure it was pruned to) is run
again with ``params.lr`` at each ``--rates`` (the fine-tuning rate scaled alike, as a searched
``lr`` scales it), through ``ranksearch.app.train_trial`` in the run directory whose reference
it used. Each rate's metrics go to ``--out`` as it ends; a rerun skips those there.

    python benchmarks/trial_lr.py runs/fashion-mnist-resnet20-v3/trials/11/config.yaml \\
        --run-dir runs/fashion-mnist-resnet20-v3 --rates 3e-4 1e-3 3e-3 \\
        --out benchmarks/results/trial_lr_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ranksearch import app
from ranksearch import config as cfg
from ranksearch.runs import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--rates", type=float, nargs="+", required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/trial-lr"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = cfg.load(args.config)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update(config=str(args.config), schedule_lr=config.schedule.svd.lr)
    rows = results.setdefault("rates", {})
    for rate in args.rates:
        if repr(rate) in rows:
            continue
        params = config.params.model_copy(update={"lr": rate})
        metrics, _ = app.train_trial(config.model_copy(update={"params": params}),
                                     args.run_dir, args.work / f"lr-{rate!r}", progress=False)
        rows[repr(rate)] = {key: metrics.get(key) for key in (
            "accuracy", "test_accuracy", "flops", "flops_reduction", "train_time_s")}
        write_json(args.out, results)
    for rate, row in rows.items():
        print(f"lr {rate}: val {row['accuracy']:.4f}, test {row['test_accuracy']:.4f}, "
              f"{row['flops_reduction']:.2f}x fewer FLOPs")


if __name__ == "__main__":
    main()

"""Do the baselines gain from a tuned learning rate?

Runs the baselines of a search space with ``baselines.lr`` set to ``--rates``: every method at
every target is trained at each rate for the space's own budget (one SVD trial's; the
fine-tuning rate scaled alike), and the rate best on the validation split is kept, as a study
does. Reports, per method and target, each rate's validation and test accuracy, the rate kept
and how far it is from the schedule's own rate.

One run directory per seed under ``--work`` (the reference loaded or trained once); a rerun
resumes what a killed one left (``ranksearch.baselines`` keeps each rate's result).

    python benchmarks/baseline_lr.py search_spaces/fashion_mnist_resnet20.yaml \\
        --methods l1 slimming --targets 4 --rates 3e-4 1e-3 3e-3 \\
        --out benchmarks/results/baseline_lr_fashion_mnist.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ranksearch import config as cfg
from ranksearch.baselines import run_baselines
from ranksearch.runs import RunDir, read_json, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", type=Path)
    parser.add_argument("--methods", nargs="+", default=["l1", "fpgm", "slimming"])
    parser.add_argument("--targets", type=float, nargs="+", default=[4.0])
    parser.add_argument("--rates", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("runs/baseline-lr"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    base = cfg.load(args.space)
    spec = cfg.BaselineSpec(methods=args.methods, targets=args.targets, lr=args.rates)
    rows = {}
    for seed in args.seeds:
        config = base.model_copy(update={"seed": seed, "baselines": spec})
        run = RunDir(args.work / base.name / f"seed{seed}")
        run.path.mkdir(parents=True, exist_ok=True)
        for result in run_baselines(config, run):
            folder = run.baseline_dir(result["method"], result["target"])
            per_rate = {rate: read_json(folder / f"lr-{rate!r}" / "metrics.json")
                        for rate in args.rates}
            rows[f"seed {seed}, {result['method']} {result['target']:g}x"] = {
                "schedule_lr": base.schedule.svd.lr, "kept_lr": result["lr"],
                "rates": {repr(rate): {key: m.get(key) for key in (
                    "status", "accuracy", "test_accuracy", "flops_reduction")}
                    for rate, m in per_rate.items()}}
    means = {}
    for key, row in rows.items():
        for rate, metrics in row["rates"].items():
            mean = means.setdefault(f"{key.split(', ', 1)[1]} at lr {rate}", {
                "seeds": 0, "accuracy": 0.0, "test_accuracy": 0.0})
            mean["seeds"] += 1
            for name in ("accuracy", "test_accuracy"):
                mean[name] += (metrics[name] - mean[name]) / mean["seeds"]
    write_json(args.out, {"space": str(args.space), "rates": args.rates, "runs": rows,
                          "mean": means})
    for key, row in rows.items():
        at_schedule = row["rates"].get(repr(row["schedule_lr"]), {})
        kept = row["rates"][repr(row["kept_lr"])]
        print(f"{key}: kept lr {row['kept_lr']:g} (val {kept['accuracy']:.4f}, test "
              f"{kept['test_accuracy']:.4f}); at the schedule's {row['schedule_lr']:g}: val "
              f"{at_schedule.get('accuracy', float('nan')):.4f}, test "
              f"{at_schedule.get('test_accuracy', float('nan')):.4f}")
    for key, mean in means.items():
        print(f"mean over {mean['seeds']} seeds, {key}: val {mean['accuracy']:.4f}, test "
              f"{mean['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()

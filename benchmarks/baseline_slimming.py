"""Network slimming as a baseline: prune first, or sparsity-train first?

Runs the ``slimming`` baseline of a search space at each ``--penalties`` value of
``baselines.slimming_penalty`` with the space's own budget (one SVD trial's):

- 0: the reference pruned by its batch-norm scales, the pruned network trained for both of a
  trial's phases (ranksearch's default);
- above 0: network slimming proper (Liu et al. 2017), the reference trained with the L1
  penalty on its batch-norm scales for the SVD-training budget, then pruned by those scales
  and fine-tuned for the fine-tuning budget.

Each (seed, penalty) is a run directory of its own under ``--work`` (the reference trained or
loaded once per seed and copied); each result is written to ``--out`` as it ends, and a rerun
skips those already there. Accuracy is the validation split's (what the report's fronts
use), with the test split's beside it, and the batch-norm scales before and after the
sparsity training say whether the penalty moved them.

    python benchmarks/baseline_slimming.py search_spaces/digits_quickstart.yaml \\
        --seeds 0 1 2 --out benchmarks/results/baseline_slimming_digits.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ranksearch import config as cfg
from ranksearch.baselines import run_baselines
from ranksearch.runs import RunDir, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 1e-5, 1e-4, 1e-3])
    parser.add_argument("--work", type=Path, default=Path("runs/baseline-slimming"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    base = cfg.load(args.space)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("space", str(args.space))
    rows = results.setdefault("runs", {})
    for seed in args.seeds:
        reference = args.work / base.name / f"reference-seed{seed}"
        for penalty in args.penalties:
            keys = [f"seed {seed}, penalty {penalty:g}, {t:g}x" for t in args.targets]
            if all(k in rows for k in keys):
                continue
            spec = cfg.BaselineSpec(methods=["slimming"], targets=args.targets,
                                    slimming_penalty=penalty)
            config = base.model_copy(update={"seed": seed, "baselines": spec})
            run = RunDir(args.work / base.name / f"seed{seed}-penalty{penalty:g}")
            shutil.rmtree(run.path, ignore_errors=True)
            run.create()
            if reference.is_dir():
                shutil.copytree(reference, run.path / "cache" / "reference")
            for key, metrics in zip(keys, run_baselines(config, run), strict=True):
                rows[key] = {name: metrics.get(name) for name in (
                    "status", "accuracy", "test_accuracy", "flops_reduction", "epochs",
                    "train_time_s", "bn_scales")}
            if not reference.is_dir():
                shutil.copytree(run.path / "cache" / "reference", reference)
            write_json(args.out, results)
    for key, row in rows.items():
        print(f"{key}: val {row['accuracy']:.4f}, test {row['test_accuracy']:.4f}, "
              f"{row['flops_reduction']:.2f}x")
    results["mean"] = _means(rows)
    write_json(args.out, results)
    for key, mean in results["mean"].items():
        print(f"mean over {mean['seeds']} seeds, {key}: val {mean['accuracy']:.4f}, "
              f"test {mean['test_accuracy']:.4f}")


def _means(rows: dict[str, dict]) -> dict[str, dict]:
    """Validation and test accuracy per (penalty, target), averaged over the seeds run."""
    groups: dict[str, list[dict]] = {}
    for key, row in rows.items():
        groups.setdefault(key.split(", ", 1)[1], []).append(row)
    return {key: {"seeds": len(group),
                  **{m: sum(r[m] for r in group) / len(group)
                     for m in ("accuracy", "test_accuracy")}}
            for key, group in sorted(groups.items())}


if __name__ == "__main__":
    main()

"""SVD training, or just truncated SVD plus fine-tuning? An ablation at matched FLOPs.

Three ways from the same trained reference (the search space's ``model.weights``) to a
compact ResNet-20, each with the budget of one trial of the space (its SVD-training steps plus
its fine-tuning steps), channel scheme (``--scheme``: another), ``conv1`` and ``fc`` dense:

* ``svd-training``: SVD training with Hoyer sparsity (λ_s ``--lambda-s``, default the
  authors' ResNet-20 value 0.07) and orthogonality, then prune, then fine-tune;
* ``lambda_s=0``: the same SVD training with the sparsity term off (orthogonality only);
* ``truncated-svd``: no SVD training: the reference's exact SVD is pruned at once and the
  whole budget goes to fine-tuning (the classic baseline).

For each, one global energy threshold per FLOPs target (2x, 3x, 4x) is bisected so that the
deployed model's FLOPs land at the target (the space's rank rounding decides how close), the
pruned model is fine-tuned and its test accuracy measured (the trial pipeline's
``measured``: BN folded, fp32, official test split). The spectrum: per layer, the kept rank
at e = 0.01 before and after SVD training.

    python benchmarks/fashion_mnist_resnet20/ablation_svd_training.py

Writes ablation_svd_training.json and .md beside this file. Resumable: finished variants and
targets are read back from the JSON.

Where does each win? ``--finetune-budgets 0,100,400`` asks it along the fine-tuning budget:
every variant gets exactly that many fine-tuning steps per point, and SVD training's steps
are not charged to the point, because one SVD-trained model serves every point of its
threshold sweep (``ranksearch.fidelity``): its cost is shared, truncated SVD has none to
share. Writes ablation_svd_training_budget.json and .md.

Which decomposition scheme? ``--scheme pointwise_first`` (or ``spatial``, ``channel``) runs
the variants in that scheme and writes ablation_svd_training_<scheme>.json and .md, with the
space as it ships now (its precision included), so that schemes compare within one setting:

    python benchmarks/fashion_mnist_resnet20/ablation_svd_training.py --variants svd-training \
        --scheme pointwise_first

``--seed N`` (default 0, the space's) trains with another batch order and validation split
and writes files ending ``_seedN``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from ranksearch import config as cfg
from ranksearch import measure, models, pipeline, svd
from ranksearch.runs import RunDir
from ranksearch.train import Phase, fit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGETS = (2.0, 3.0, 4.0)
VARIANTS = ("svd-training", "lambda_s=0", "truncated-svd")


def load_config(seed: int = 0) -> cfg.StudyConfig:
    raw = yaml.safe_load((ROOT / "search_spaces" / "fashion_mnist_resnet20.yaml").read_text())
    raw.update(name="fmnist-ablation", measure_latency=False, seed=seed)
    raw.pop("baselines", None)
    return cfg.loads(yaml.safe_dump(raw))


def threshold_for(model, target: float, reference_flops: int, config, data) -> float:
    """Global energy threshold whose deployed model (``pipeline.deployable``) is ``target``x
    smaller (bisection on a log scale; FLOPs fall as the threshold grows)."""
    low, high = 1e-7, 0.999
    for _ in range(30):
        middle = (low * high) ** 0.5
        svd.unprune(model)
        svd.prune_by_energy(model, middle)
        deployed, _ = pipeline.deployable(model, data, config)
        if reference_flops / measure.flops(deployed, data.input_shape) >= target:
            high = middle
        else:
            low = middle
    return high


def run_variant(variant: str, target: float, config, run, dense, ref_metrics, args,
                finetune_steps: int | None = None) -> dict[str, Any]:
    """One compact model of ``variant`` at ``target``x fewer FLOPs, fine-tuned and measured.

    ``finetune_steps`` None: the space's budget per trial (truncated SVD fine-tunes for the
    SVD-training steps too); a number: exactly that many fine-tuning steps for every variant.
    """
    data = pipeline.dataset(config)
    params = cfg.TrialParams(scheme=args.scheme or "channel",
                             decay="none" if variant == "truncated-svd" else "hoyer",
                             lambda_s=args.lambda_s if variant == "svd-training" else 0.0,
                             lambda_o=1.0)
    groups = models.layer_groups(dense)
    start = time.perf_counter()
    if variant == "truncated-svd":
        model = svd.decompose(dense, scheme=args.scheme or "channel", init="svd",
                              exclude=("conv1", "fc"))
        svd_seconds, kept_after = 0.0, None
    else:
        model, meta = pipeline.svd_trained(config, params, run, dense, groups, progress=False)
        svd_seconds = meta.get("svd_train_time_s", 0.0)
        # The rank at e = 0.01 after SVD training, as the pipeline recorded it.
        kept_after = sum(after for _, after in meta["spectrum"].values())
    energy = threshold_for(model, target, ref_metrics["flops"], config, data)
    svd.unprune(model)
    svd.prune_by_energy(model, energy)
    before = pipeline.measured(pipeline.deployable(model, data, config)[0], data, config)
    phases = [config.schedule.finetune]
    if finetune_steps is not None:
        phases = [config.schedule.finetune.model_copy(update={"max_batches": finetune_steps})
                  ] if finetune_steps else []
    elif variant == "truncated-svd":  # the SVD-training steps go to fine-tuning too
        phases.insert(0, config.schedule.svd.model_copy(update={"lr": config.schedule.finetune.lr}))
    for i, schedule in enumerate(phases):
        fit(model, Phase("finetune", data, schedule, seed=config.seed + 2 + i,
                         precision=config.precision, channels_last=config.channels_last,
                         progress=False,
                         regulariser=lambda m: params.lambda_o * svd.orthogonality_loss(m)))
    compact, _ = pipeline.deployable(model, data, config)
    after = pipeline.measured(compact, data, config)
    return {
        "variant": variant, "target": target, "energy": energy,
        "flops_reduction": ref_metrics["flops"] / after["flops"],
        "test_accuracy_before_finetune": before["test_accuracy"],
        "val_accuracy_before_finetune": before["accuracy"],
        "test_accuracy": after["test_accuracy"], "val_accuracy": after["accuracy"],
        "reference_test_accuracy": ref_metrics["test_accuracy"],
        "svd_train_seconds": svd_seconds, "seconds": time.perf_counter() - start,
        "kept_rank_e0.01_after_svd_training": kept_after,
        "finetune_steps": finetune_steps,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Ablation: SVD training against truncated SVD plus fine-tuning (Fashion-MNIST, "
        "ResNet-20)", "",
        f"Reference test accuracy {100 * result['reference_test_accuracy']:.2f} %. Budget per "
        f"point: {result['budget_steps']} steps. Hoyer λ_s = {result['lambda_s']:g}. "
        "Accuracy on the official test split; FLOPs of the deployed model.", "",
        "| target | variant | FLOPs reduction | e | test acc. before fine-tuning | "
        "test acc. after | Δ vs reference |",
        "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(
            f"| {row['target']:g}x | {row['variant']} | {row['flops_reduction']:.2f}x | "
            f"{row['energy']:.3g} | {100 * row['test_accuracy_before_finetune']:.2f} % | "
            f"{100 * row['test_accuracy']:.2f} % | "
            f"{100 * (row['test_accuracy'] - row['reference_test_accuracy']):+.2f} |")
    lines += ["", "Kept rank at e = 0.01, summed over the decomposed layers "
              f"(reference: {result['spectrum']['reference']}):", ""]
    lines += [f"- {k}: {v}" for k, v in result["spectrum"].items() if k != "reference"]
    return "\n".join(lines) + "\n"


def budget_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Where does SVD training win? Test accuracy against the fine-tuning budget per point",
        "", f"Reference test accuracy {100 * result['reference_test_accuracy']:.2f} %. Hoyer "
        f"λ_s = {result['lambda_s']:g}. Every variant gets exactly the fine-tuning steps of its "
        "column; SVD training's own steps are shared by every point swept from one trained "
        f"model ({result['svd_steps']} steps per trained model), truncated SVD has none.", "",
        "| target | variant | FLOPs reduction | "
        + " | ".join(f"{k} steps" for k in result["budgets"]) + " |",
        "|---|---|---|" + "---|" * len(result["budgets"])]
    cells: dict[tuple[str, float], dict[int, dict[str, Any]]] = {}
    for row in result["rows"]:
        cells.setdefault((row["variant"], row["target"]), {})[row["finetune_steps"]] = row
    for (variant, target), by_budget in sorted(cells.items(), key=lambda kv: kv[0][1]):
        reduction = next(iter(by_budget.values()))["flops_reduction"]
        lines.append(f"| {target:g}x | {variant} | {reduction:.2f}x | " + " | ".join(
            f"{100 * by_budget[k]['test_accuracy']:.2f} %" if k in by_budget else "—"
            for k in result["budgets"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lambda-s", type=float, default=0.07)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "fmnist-ablation")
    parser.add_argument("--finetune-budgets", type=lambda text: [int(k) for k in text.split(",")],
                        help="comma-separated fine-tuning steps per point (the budget axis)")
    parser.add_argument("--targets", type=lambda text: [float(t) for t in text.split(",")],
                        default=list(TARGETS))
    parser.add_argument("--variants", type=lambda text: text.split(","), default=list(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--scheme", choices=svd.SCHEMES, default=None,
                        help="decomposition scheme (default channel); writes its own files")
    parser.add_argument("--seed", type=int, default=0,
                        help="the study seed (batch order, validation split); 0 as shipped")
    args = parser.parse_args()
    config = load_config(args.seed)
    run = RunDir(args.run_dir).create()
    dense, ref_metrics = pipeline.reference(config, run, progress=False)
    budgets = args.finetune_budgets
    stem = "ablation_svd_training_budget" if budgets else "ablation_svd_training"
    if args.scheme is not None:
        stem += f"_{args.scheme}"
    if args.seed:
        stem += f"_seed{args.seed}"
    out = HERE / f"{stem}.json"
    result = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    result.update(lambda_s=args.lambda_s, reference_test_accuracy=ref_metrics["test_accuracy"],
                  budget_steps=config.schedule.svd.max_batches
                  + config.schedule.finetune.max_batches)
    reference_svd = svd.decompose(dense, scheme=args.scheme or "channel",
                                  exclude=("conv1", "fc"))
    result.setdefault("spectrum", {})["reference"] = sum(
        svd.ranks_at_energy(reference_svd, pipeline.SPECTRUM_ENERGY).values())
    if budgets:
        result.update(budgets=budgets, svd_steps=config.schedule.svd.max_batches)
    done = {(r["variant"], r["target"], r.get("finetune_steps")) for r in result["rows"]}
    for variant in args.variants:
        for target in args.targets:
            for steps in budgets or [None]:
                if (variant, target, steps) in done:
                    continue
                row = run_variant(variant, target, config, run, dense, ref_metrics, args, steps)
                if row["kept_rank_e0.01_after_svd_training"] is not None:
                    result["spectrum"][variant] = row["kept_rank_e0.01_after_svd_training"]
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
                (HERE / f"{stem}.md").write_text(
                    budget_markdown(result) if budgets else markdown(result))


if __name__ == "__main__":
    main()

"""Does per-stage allocation from measured sensitivity find better thresholds than the sweep?

For every model a finished study SVD-trained (a trial with a sweep of its own), the sweep is
run again with ``sweep.allocate`` (``ranksearch.fidelity.allocate``): each stage's sensitivity
probed without fine-tuning, then thresholds allocated at ``--allocate`` FLOPs targets. Compared
on the proxy (accuracy on the validation subset, no fine-tuning), per model:

* each allocated candidate against the best sweep candidate (grid and random draws) with at
  most its FLOPs;
* the proxy hypervolume (accuracy, FLOPs / reference FLOPs; reference point (0, 1)) of the
  sweep's candidates alone, and with the probes and allocated candidates added;
* the sweep's cost with and without allocation.

    python benchmarks/multi_fidelity/allocation.py runs/fashion-mnist-resnet20

The models come from the run's cache (nothing is trained); the new sweeps are cached there
under their own keys. Writes allocation.json and allocation.md beside this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ranksearch import config as cfg
from ranksearch import fidelity, pipeline
from ranksearch.dominance import hypervolume_2d, nondominated
from ranksearch.search.space import granularity_units
from ranksearch.search.study import open_run_study

HERE = Path(__file__).resolve().parent


def front_volume(candidates: list[fidelity.Candidate], reference_flops: float) -> float:
    accuracy = np.array([c.proxy_accuracy for c in candidates])
    flops = np.array([c.flops / reference_flops for c in candidates])
    keep = nondominated(accuracy, flops) & (flops < 1)
    return hypervolume_2d(accuracy[keep], flops[keep], (0.0, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--allocate", type=int, default=4)
    parser.add_argument("--models", type=int, help="only the first this many trained models")
    args = parser.parse_args()
    run, config, study = open_run_study(args.run_dir)
    sweep_spec = config.space.sweep.model_copy(update={"allocate": args.allocate})
    space = config.space.model_copy(update={"sweep": sweep_spec})
    if space.granularity == "global":
        space = space.model_copy(update={"granularity": "stage"})
    config = config.model_copy(update={"space": space})
    dense, ref_metrics = pipeline.reference(config, run, progress=False)
    groups = pipeline.svd_layer_groups(config, dense)
    units = granularity_units(space, groups)
    rows = []
    trained = [t for t in study.get_trials(deepcopy=False)
               if t.state.name == "COMPLETE" and t.user_attrs.get("sweep")]
    for trial in trained[:args.models]:
        params = cfg.load(run.trial_dir(trial.number) / "config.yaml").params
        params = params.model_copy(update={"ranks": None})
        candidates = fidelity.sweep(config, params, run, groups, units)
        swept = [c for c in candidates if c.source == "sweep"]
        added = [c for c in candidates if c.source != "sweep"]
        allocated = [c for c in candidates if c.source == "allocated"]
        comparisons = []
        for c in allocated:
            rivals = [s for s in swept if s.flops <= c.flops]
            best = max(rivals, key=lambda s: s.proxy_accuracy) if rivals else None
            comparisons.append({
                "flops_reduction": ref_metrics["flops"] / c.flops, "proxy": c.proxy_accuracy,
                "best_sweep_at_most_its_flops": best.proxy_accuracy if best else None,
                "energy": c.energy})
        rows.append({
            "trial": trial.number, "decay": params.decay,
            "hypervolume_sweep": front_volume(swept, ref_metrics["flops"]),
            "hypervolume_with_allocation": front_volume(swept + added, ref_metrics["flops"]),
            "sweep_seconds": sum(c.seconds for c in swept),
            "allocation_seconds": sum(c.seconds for c in added),
            "allocated": comparisons})
        print(json.dumps(rows[-1], default=float), flush=True)
    wins = [a for r in rows for a in r["allocated"]
            if a["best_sweep_at_most_its_flops"] is not None]
    summary = {
        "models": len(rows), "units": units, "allocate": args.allocate,
        "allocated_ahead_of_sweep": sum(a["proxy"] > a["best_sweep_at_most_its_flops"]
                                        for a in wins),
        "allocated_compared": len(wins),
        "mean_proxy_gain_points": 100 * float(np.mean(
            [a["proxy"] - a["best_sweep_at_most_its_flops"] for a in wins])) if wins else None,
        "hypervolume_gain_mean": float(np.mean(
            [r["hypervolume_with_allocation"] - r["hypervolume_sweep"] for r in rows])),
        "allocation_seconds_mean": float(np.mean([r["allocation_seconds"] for r in rows])),
        "sweep_seconds_mean": float(np.mean([r["sweep_seconds"] for r in rows])),
    }
    result = {"run": str(args.run_dir), "summary": summary, "models": rows}
    (HERE / "allocation.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    lines = [
        "# Per-stage allocation from sensitivity against the threshold sweep (proxy, no "
        "fine-tuning)", "", f"Run `{args.run_dir}`, {summary['models']} SVD-trained models, "
        f"units {', '.join(units)}, {args.allocate} allocated candidates per model.", "",
        f"- Allocated candidates ahead of the best sweep candidate at no more FLOPs: "
        f"{summary['allocated_ahead_of_sweep']} of {summary['allocated_compared']} "
        f"(mean gain {summary['mean_proxy_gain_points'] or 0:+.2f} points).",
        f"- Proxy hypervolume gain from adding probes and allocations: "
        f"{summary['hypervolume_gain_mean']:+.4f} (mean over models).",
        f"- Cost per model: sweep {summary['sweep_seconds_mean']:.0f} s, probes and "
        f"allocation {summary['allocation_seconds_mean']:.0f} s.", "",
        "| trial | decay | proxy HV, sweep | with allocation |", "|---|---|---|---|"]
    lines += [f"| {r['trial']} | {r['decay']} | {r['hypervolume_sweep']:.4f} | "
              f"{r['hypervolume_with_allocation']:.4f} |" for r in rows]
    (HERE / "allocation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Headline numbers of the Fashion-MNIST benchmark, on the official test split.

Reads the run directory through ranksearch's own report tables and writes
``results.json`` and ``results.md`` beside this script:

- the dense reference's test accuracy;
- for SVD training and each baseline, the largest FLOPs reduction within 0.5 and 1 point of
  the reference (test accuracy);
- the hypervolume of each front in (test accuracy, FLOPs / reference FLOPs), reference point
  (accuracy 0, FLOPs ratio 1.0): the mean over FLOPs budgets up to the dense model's of the
  best test accuracy reached within that budget;
- whether every baseline point between 2x and 6x is dominated by an SVD-training point;
- accuracy against measured CPU latency for the front points of every method;
- wall time of the whole run and per trial, and the framework's share of a trial (wall time
  outside training and evaluation, ``framework_time_s``).

Usage: python benchmarks/fashion_mnist_resnet20/summarize.py RUN_DIR [--wall-time SECONDS]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ranksearch.report.pareto import (
    eligible_mask,
    fronts_by_kind,
    hypervolume_2d,
    kind_label,
    reduction_table,
    trials_frame,
)
from ranksearch.search.study import open_run_study

HERE = Path(__file__).resolve().parent


def on_test_split(frame: pd.DataFrame) -> pd.DataFrame:
    """The same points with the test accuracy in the ``accuracy`` column."""
    out = frame.copy()
    out["val_accuracy"] = out["accuracy"]
    out["accuracy"] = out["test_accuracy"]
    return out


def dominance(frame: pd.DataFrame, low: float = 2.0, high: float = 6.0) -> dict:
    """Baseline points with a reduction in [low, high] and whether an SVD point dominates
    each (at least as many times fewer FLOPs and at least as accurate)."""
    eligible = frame[eligible_mask(frame)]
    svd = eligible[eligible["kind"] == "svd"]
    rows = []
    for row in eligible[eligible["kind"].str.startswith("baseline:")].itertuples():
        if not low <= row.flops_reduction <= high * 1.05:
            continue
        better = svd[(svd["flops_reduction"] >= row.flops_reduction)
                     & (svd["accuracy"] >= row.accuracy)]
        rows.append({"method": row.kind.split(":", 1)[1], "reduction": row.flops_reduction,
                     "test_accuracy": row.accuracy, "dominated": bool(len(better))})
    return {"points": rows, "dominated": sum(r["dominated"] for r in rows), "total": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--wall-time", type=float, help="seconds the whole run took")
    args = parser.parse_args()

    run, config, study = open_run_study(args.run_dir)
    frame = on_test_split(trials_frame(study, run.path))
    reference = frame[frame["kind"] == "reference"].iloc[0]
    ref_acc, ref_flops = float(reference["accuracy"]), float(reference["flops"])
    table = reduction_table(frame, ref_acc, drops=(0.5, 1, 2))
    fronts = fronts_by_kind(frame)
    hypervolume = {
        kind: hypervolume_2d(front["accuracy"].to_numpy(),
                             front["flops"].to_numpy() / ref_flops, (0.0, 1.0))
        for kind, front in fronts.items()
    }
    svd = frame[(frame["kind"] == "svd") & eligible_mask(frame)]
    latency = []
    for kind, front in fronts.items():
        for row in front.itertuples():
            latency.append({"kind": kind, "reduction": row.flops_reduction,
                            "test_accuracy": row.accuracy, "latency_ms": row.latency_ms,
                            "speedup": float(reference["latency_ms"]) / row.latency_ms
                            if row.latency_ms == row.latency_ms else None})
    trials = study.get_trials(deepcopy=False)
    shares = [t.user_attrs["metrics"]["framework_time_s"] / t.user_attrs["metrics"]["wall_time_s"]
              for t in trials if t.state.name == "COMPLETE"]
    results = {
        "study": config.name,
        "reference": {"test_accuracy": ref_acc, "val_accuracy": float(reference["val_accuracy"]),
                      "flops": ref_flops, "latency_ms": float(reference["latency_ms"])},
        "reduction_within": table.to_dict(orient="records"),
        "hypervolume": hypervolume,
        "hypervolume_reference_point": "test accuracy 0, FLOPs ratio 1.0 (the dense model)",
        "dominance_2x_6x": dominance(frame),
        "latency_of_front_points": latency,
        "trials": {"complete": int(len(svd)),
                   "failed": sum(t.state.name == "FAIL" for t in trials),
                   "median_wall_time_s": float(np.median(svd["wall_time_s"])),
                   "mean_wall_time_s": float(np.mean(svd["wall_time_s"])),
                   "median_framework_share": float(np.median(shares)),
                   "max_framework_share": float(np.max(shares))},
        "wall_time_s": args.wall_time,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=float))

    lines = [f"Reference (dense ResNet-20): test accuracy {100 * ref_acc:.2f} %, "
             f"{ref_flops / 1e6:.1f} MFLOPs, {results['reference']['latency_ms']:.2f} ms",
             "", "| method | within 0.5 pt | within 1 pt | within 2 pt | hypervolume |",
             "|---|---|---|---|---|"]
    for row in table.itertuples():
        cells = [f"{v:.2f}x" if v == v else "—" for v in (row[3], row[4], row[5])]
        lines.append(f"| {kind_label(row.kind)} | {' | '.join(cells)} | "
                     f"{hypervolume[row.kind]:.4f} |")
    d = results["dominance_2x_6x"]
    lines += ["", f"Baseline points between 2x and 6x dominated by an SVD-training point: "
              f"{d['dominated']} of {d['total']}.",
              "", f"Trials: median wall time {results['trials']['median_wall_time_s']:.0f} s; "
              f"framework (outside training and evaluation) median "
              f"{100 * results['trials']['median_framework_share']:.2f} %, at most "
              f"{100 * results['trials']['max_framework_share']:.2f} % of a trial."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

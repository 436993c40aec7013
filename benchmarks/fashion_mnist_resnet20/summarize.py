"""Headline numbers of the Fashion-MNIST benchmark, on the official test split.

Reads the run directory through ranksearch's own report tables and writes
``results.json`` and ``results.md`` beside this script (``--name`` gives another stem, e.g.
``results-v2`` for the fp32 run of issue #12):

- the dense reference's test accuracy;
- for SVD training and each baseline, the largest FLOPs reduction within 0.5 and 1 point of
  the reference (test accuracy);
- the hypervolume of each front in (test accuracy, FLOPs / reference FLOPs), reference point
  (accuracy 0, FLOPs ratio 1.0): the mean over FLOPs budgets up to the dense model's of the
  best test accuracy reached within that budget;
- whether every baseline point between 2x and 6x is dominated by an SVD-training point;
- accuracy against measured CPU latency for the front points of every method, and the front
  of each method computed on latency (test accuracy against latency at the space's latency
  batch): its hypervolume in (test accuracy, latency / dense latency), and how many points of
  each baseline's latency front an SVD-training point dominates;
- whether SVD training moved the spectrum: on every trial that SVD-trained a model, the rank
  kept at e = 0.01 summed over the decomposed layers, before and after SVD training;
- the multi-fidelity sweep: configurations evaluated (fine-tuned trials and swept candidates),
  sweep time per candidate, Spearman's correlation of proxy accuracy (no fine-tuning) with the
  final validation and test accuracy;
- the searched front against the ablation (``ablation_svd_training.json``: lambda_s = 0 and
  truncated SVD plus fine-tuning at 2x / 3x / 4x): the search's best point by validation
  accuracy within 5 % of each ablation point's FLOPs, on the test split;
- wall time of the whole run and per trial, and the framework's share of a trial (wall time
  outside training and evaluation, ``framework_time_s``).

Usage: python benchmarks/fashion_mnist_resnet20/summarize.py RUN_DIR [--wall-time SECONDS]
[--name STEM]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ranksearch.dominance import nondominated
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


def latency_fronts(frame: pd.DataFrame, ref_latency: float) -> dict:
    """Each method's front on (test accuracy, latency), its hypervolume against (0, the dense
    model's latency), and the baseline latency-front points an SVD point dominates."""
    eligible = frame[eligible_mask(frame) & frame["latency_ms"].notna()]
    fronts = {}
    for kind in sorted(eligible["kind"].unique()):
        if kind == "reference":
            continue
        rows = eligible[eligible["kind"] == kind].sort_values("latency_ms")
        fronts[kind] = rows[nondominated(rows["accuracy"], rows["latency_ms"])]
    out: dict = {"hypervolume": {}, "points": {}, "baseline_points_dominated_by_svd": {}}
    svd = fronts.get("svd", frame.iloc[:0])
    for kind, front in fronts.items():
        out["hypervolume"][kind] = hypervolume_2d(
            front["accuracy"].to_numpy(), front["latency_ms"].to_numpy() / ref_latency, (0, 1))
        out["points"][kind] = [{"latency_ms": r.latency_ms, "test_accuracy": r.accuracy,
                                "flops_reduction": r.flops_reduction}
                               for r in front.itertuples()]
        if kind.startswith("baseline:"):
            dominated = sum(bool(((svd["latency_ms"] <= r.latency_ms)
                                  & (svd["accuracy"] >= r.accuracy)).any())
                            for r in front.itertuples())
            out["baseline_points_dominated_by_svd"][kind] = [dominated, len(front)]
    return out


def spectrum(frame: pd.DataFrame) -> list[dict]:
    """The summed rank at e = 0.01 before and after SVD training, per trained model."""
    trained = frame[(frame["kind"] == "svd") & frame["spectrum_rank_before"].notna()]
    return [{"trial": int(r["number"]), "decay": r.get("param_decay"),
             "lambda_s": {c.removeprefix("param_"): v for c, v in r.items()
                          if c.startswith("param_lambda_s") and v == v},
             "rank_before": r["spectrum_rank_before"], "rank_after": r["spectrum_rank_after"]}
            for r in trained.to_dict("records")]


def multi_fidelity(trials: list) -> dict:
    """Configurations evaluated, sweep cost, and how well proxy accuracy ranks final accuracy."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    swept = [c for t in complete for c in t.user_attrs.get("sweep") or []]
    pairs = []
    for t in complete:
        metrics = t.user_attrs["metrics"]
        proxy = t.user_attrs.get("proxy_accuracy", metrics.get("proxy_accuracy"))
        if proxy is not None:
            pairs.append((proxy, metrics["accuracy"], metrics["test_accuracy"]))
    proxy, val, test = (list(column) for column in zip(*pairs, strict=True)) if pairs else ([],) * 3
    return {
        "fine_tuned_trials": len(complete),
        "promoted_trials": sum("promoted_from" in t.user_attrs for t in complete),
        "swept_candidates": len(swept),
        "configurations": len(complete) + sum(not (c.get("own") or c.get("promoted"))
                                              for c in swept),
        "sweep_seconds_per_candidate": float(np.mean([c["seconds"] for c in swept]))
        if swept else None,
        "pairs": len(pairs),
        "spearman_proxy_vs_val": float(spearmanr(proxy, val).statistic) if len(pairs) > 2
        else None,
        "spearman_proxy_vs_test": float(spearmanr(proxy, test).statistic) if len(pairs) > 2
        else None,
    }


def against_ablation(frame: pd.DataFrame, tolerance: float = 0.05) -> list[dict]:
    """The search's best point (validation accuracy) within ``tolerance`` of each ablation
    point's FLOPs reduction, with its test accuracy beside the ablation's."""
    path = HERE / "ablation_svd_training.json"
    if not path.is_file():
        return []
    svd = frame[(frame["kind"] == "svd") & eligible_mask(frame)]
    out = []
    for row in json.loads(path.read_text())["rows"]:
        reduction = row["flops_reduction"]
        near = svd[(svd["flops_reduction"] - reduction).abs() <= tolerance * reduction]
        best = near.loc[near["val_accuracy"].idxmax()] if len(near) else None
        out.append({"target": row["target"], "ablation_variant": row["variant"],
                    "ablation_reduction": reduction, "ablation_test_accuracy": row["test_accuracy"],
                    "search_reduction": None if best is None else float(best["flops_reduction"]),
                    "search_test_accuracy": None if best is None else float(best["accuracy"]),
                    "search_trial": None if best is None else int(best["number"])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--wall-time", type=float, help="seconds the whole run took")
    parser.add_argument("--name", default="results",
                        help="stem of the two files written beside this script")
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
        "latency_fronts": latency_fronts(frame, float(reference["latency_ms"])),
        "spectrum": spectrum(frame),
        "multi_fidelity": multi_fidelity(trials),
        "search_against_ablation": against_ablation(frame),
        "wall_time_s": args.wall_time,
    }
    (HERE / f"{args.name}.json").write_text(json.dumps(results, indent=2, default=float))

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
    lines += ["", "Latency fronts (test accuracy against latency at the space's latency batch): "
              "hypervolume in (accuracy, latency / dense latency)", "",
              "| method | latency hypervolume | its points dominated by an SVD point |",
              "|---|---|---|"]
    lat = results["latency_fronts"]
    for kind, volume in lat["hypervolume"].items():
        dominated = lat["baseline_points_dominated_by_svd"].get(kind)
        cell = f"{dominated[0]} of {dominated[1]}" if dominated else "—"
        lines.append(f"| {kind_label(kind)} | {volume:.4f} | {cell} |")
    lines += ["", "Summed rank kept at e = 0.01, before -> after SVD training, per trained model:",
              "", "| trial | decay | lambda_s | before | after |", "|---|---|---|---|---|"]
    for row in results["spectrum"]:
        lams = ", ".join(f"{v:.3g}" for v in row["lambda_s"].values())
        lines.append(f"| {row['trial']} | {row['decay']} | {lams} | {row['rank_before']:.0f} "
                     f"| {row['rank_after']:.0f} |")
    mf = results["multi_fidelity"]
    if mf["spearman_proxy_vs_val"] is not None:
        lines += ["", f"Multi-fidelity: {mf['configurations']} configurations evaluated "
                  f"({mf['fine_tuned_trials']} fine-tuned, {mf['promoted_trials']} of them "
                  f"promoted from a sweep; {mf['swept_candidates']} swept candidates at "
                  f"{mf['sweep_seconds_per_candidate']:.1f} s each); Spearman of proxy accuracy "
                  f"with final accuracy {mf['spearman_proxy_vs_val']:.2f} (val), "
                  f"{mf['spearman_proxy_vs_test']:.2f} (test), {mf['pairs']} trials."]
    if results["search_against_ablation"]:
        lines += ["", "The searched front against the ablation at matched FLOPs (within 5 %), "
                  "test accuracy:", "",
                  "| target | ablation variant | its reduction | its accuracy | search point "
                  "| its reduction | its accuracy |", "|---|---|---|---|---|---|---|"]
        for r in results["search_against_ablation"]:
            found = r["search_trial"] is not None
            lines.append(
                f"| {r['target']:g}x | {r['ablation_variant']} | {r['ablation_reduction']:.2f}x "
                f"| {100 * r['ablation_test_accuracy']:.2f} % | "
                + (f"trial {r['search_trial']} | {r['search_reduction']:.2f}x | "
                   f"{100 * r['search_test_accuracy']:.2f} % |" if found else "none | — | — |"))
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

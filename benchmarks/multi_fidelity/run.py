"""Multi-fidelity against one point per trial, at equal CPU time.

For each space (the digits quickstart, the Fashion-MNIST benchmark) and seed (0, 1, 2):

* ``single``: the space without its ``sweep``, every point a fine-tuned trial
  (``energy_trials_per_model`` as in the file: trials after the first of a model reuse it with
  thresholds the sampler picks), ``--single-trials`` complete trials (default: the file's);
* ``multi_fidelity``: the same space with ``sweep`` (thresholds swept without fine-tuning,
  the most promising promoted to fine-tuned trials) and ``energy_trials_per_model: 1``, run
  trial by trial while one more trial brings its CPU time nearer that of the ``single`` study
  of the same seed (a trial's cost estimated from the last one of its kind: fine-tuning a
  queued candidate, or SVD-training a new model).

Both run in this process, one study at a time (run nothing else heavy meanwhile), from the
same dense reference (trained once per space and copied into each run directory, so its
training is outside the budget). CPU time is ``time.process_time()`` of this process, all
threads. Hypervolume: the fine-tuned SVD points (test accuracy, FLOPs / reference FLOPs),
reference point (0, 1), as the report computes it. Configurations: every threshold setting
evaluated, fine-tuned or not. Spearman: proxy accuracy (swept, before fine-tuning) against
final validation accuracy, over every fine-tuned multi-fidelity trial of the space's seeds.

    python benchmarks/multi_fidelity/run.py [--spaces digits fashion-mnist] [--seeds 0 1 2]

Resumable: finished studies are read back from ``--work`` and from results.json; an
interrupted study continues where it stopped. Writes benchmarks/multi_fidelity/results.json:
``{"<space>": {"single": {"<seed>": {"hypervolume", "cpu_seconds", "configurations", ...}},
"multi_fidelity": {...}}, "spearman": {"<space>": rho}}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from scipy.stats import spearmanr

from ranksearch import app, pipeline
from ranksearch import config as cfg
from ranksearch.report.pareto import hypervolume_history, trials_frame
from ranksearch.runs import RunDir, atomic_write_text
from ranksearch.search.study import open_run_study

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SPACES = {
    "digits": ROOT / "search_spaces" / "digits_quickstart.yaml",
    "fashion-mnist": ROOT / "search_spaces" / "fashion_mnist_resnet20.yaml",
}
SWEEP = {"candidates": 24, "promote": 2, "proxy_samples": 2000, "bn_batches": 8}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(name: str, design: str, seed: int) -> dict[str, Any]:
    config = yaml.safe_load(SPACES[name].read_text())
    config.pop("baselines", None)
    config.update(name=f"mf-{name}-{design}-{seed}", seed=seed,
                  sampler={**config.get("sampler", {}), "seed": seed})
    config["space"].pop("sweep", None)
    if design == "multi_fidelity":
        config["space"].update(energy_trials_per_model=1, sweep=SWEEP)
    return config


def run_study(work: Path, name: str, design: str, seed: int, reference: Path,
              trials: int | None, budget: float | None) -> dict[str, Any]:
    """Run one study to ``trials`` complete trials, or trial by trial while one more trial
    brings its CPU time nearer ``budget`` (``next_trial_fits``); its CPU time and per-trial
    costs are kept in the run directory across interruptions."""
    run = RunDir(work / f"{name}-{design}-seed{seed}").create()
    if not (run.path / "cache" / "reference").exists():
        shutil.copytree(reference, run.path / "cache" / "reference")
    config = cfg.loads(yaml.safe_dump(space(name, design, seed)))
    atomic_write_text(run.config_path, cfg.dump(config))
    clock = run.path / "cpu_seconds.json"
    record = json.loads(clock.read_text()) if clock.is_file() else {"cpu_seconds": 0.0}
    record.setdefault("trials", [])
    done = len(trials_in(run.path, optuna.trial.TrialState.COMPLETE))
    while True:
        # Optuna runs waiting trials first: then the next one is a queued one.
        queued = bool(trials_in(run.path, optuna.trial.TrialState.WAITING))
        if (done >= (trials or config.trials) if budget is None
                else not next_trial_fits(record, queued, budget)):
            break
        done += 1
        start = time.process_time()
        app.run_search(config.model_copy(update={"trials": done}), run, progress=False)
        cost = time.process_time() - start
        record["cpu_seconds"] += cost
        record["trials"].append({"cpu_seconds": cost, "queued": queued})
        clock.write_text(json.dumps(record))
    return summarise(run.path, record["cpu_seconds"])


def trials_in(run: Path, state: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
    if not (run / "study.journal").exists():
        return []
    return open_run_study(run)[2].get_trials(deepcopy=False, states=(state,))


def next_trial_fits(record: dict[str, Any], queued: bool, budget: float) -> bool:
    """Whether one more trial, ``queued`` or not, leaves the CPU time nearer ``budget`` than
    stopping now.

    A trial's cost depends on its kind: a queued one (a promoted candidate, or one reusing a
    trained model) only fine-tunes; a sampled one SVD-trains a new model first, several times
    the cost. Its cost is taken as that of the last trial of its kind in ``record`` (unknown
    before the first: run it).
    """
    spent = record["cpu_seconds"]
    same_kind = [t["cpu_seconds"] for t in record["trials"] if t["queued"] == queued]
    return spent < budget and (not same_kind or spent + same_kind[-1] / 2 < budget)


def summarise(run: Path, cpu_seconds: float) -> dict[str, Any]:
    _, _, study = open_run_study(run)
    frame = trials_frame(study, run)
    on_test = frame.assign(accuracy=frame["test_accuracy"])
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    swept = [t.user_attrs["sweep"] for t in complete if "sweep" in t.user_attrs]
    promoted_done = sum("promoted_from" in t.user_attrs for t in complete)
    low_fidelity = sum(len(s) - 1 for s in swept) - promoted_done
    pairs = [(t.user_attrs.get("proxy_accuracy", t.user_attrs["metrics"].get("proxy_accuracy")),
              t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["test_accuracy"])
             for t in complete]
    return {
        "hypervolume": float(hypervolume_history(on_test)["hypervolume"].iloc[-1]),
        "hypervolume_val": float(hypervolume_history(frame)["hypervolume"].iloc[-1]),
        "cpu_seconds": cpu_seconds,
        "configurations": len(complete) + low_fidelity,
        "fine_tuned": len(complete),
        "svd_trained_models": sum(not t.user_attrs["metrics"]["svd_cached"] for t in complete),
        "proxy_pairs": [p for p in pairs if p[0] is not None],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--single-trials", type=int, default=None)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "multi-fidelity")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.spaces:
        entry = results.setdefault(name, {"single": {}, "multi_fidelity": {}})
        for seed in args.seeds:
            # The reference depends on the seed (its training, the validation split): one per
            # seed, trained outside the budget and shared by the seed's two studies.
            shared = RunDir(args.work / f"{name}-reference-seed{seed}").create()
            pipeline.reference(cfg.loads(yaml.safe_dump(space(name, "single", seed))), shared,
                               progress=False)
            reference = shared.path / "cache" / "reference"
            single = run_study(args.work, name, "single", seed, reference, args.single_trials,
                               None)
            entry["single"][str(seed)] = single
            multi = run_study(args.work, name, "multi_fidelity", seed, reference, None,
                              single["cpu_seconds"])
            entry["multi_fidelity"][str(seed)] = multi
            print(f"{name} seed {seed}: HV single {single['hypervolume']:.4f} "
                  f"({single['configurations']} configs, {single['cpu_seconds']:.0f} CPU s), "
                  f"multi-fidelity {multi['hypervolume']:.4f} ({multi['configurations']} "
                  f"configs, {multi['cpu_seconds']:.0f} CPU s)", flush=True)
            pairs = [p for s in entry["multi_fidelity"].values() for p in s["proxy_pairs"]]
            if len(pairs) >= 3:
                results.setdefault("spearman", {})[name] = float(
                    spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k == "spearman"}))


if __name__ == "__main__":
    main()

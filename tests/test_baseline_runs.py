"""Baselines inside a run directory: stored once, loaded by the report, resumable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings

import pandas as pd
import pytest

from ranksearch import app, baselines, cli, config
from ranksearch.baselines import TOLERANCE
from ranksearch.report.pareto import trials_frame
from ranksearch.runs import RunDir, atomic_write_text, read_json
from ranksearch.search.study import open_run_study


def test_two_methods_two_targets(tiny_space, tmp_path):
    space = tiny_space(trials=1, baselines={"methods": ["l1", "fpgm"], "targets": [2, 3]})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    results = RunDir(run).baseline_results()
    assert sorted((r["method"], r["target"]) for r in results) == [
        ("fpgm", 2), ("fpgm", 3), ("l1", 2), ("l1", 3)]
    for r in results:
        assert abs(r["flops_reduction"] / r["target"] - 1) < TOLERANCE
        assert r["epochs"] == 2  # one SVD trial's budget: 1 SVD-training + 1 fine-tuning epoch
    _, _, study = open_run_study(run)
    frame = trials_frame(study, run)
    assert (frame["kind"].str.startswith("baseline:")).sum() == 4


def test_baselines_get_the_longest_trial_budget_the_space_allows(tiny_space, tmp_path):
    space = tiny_space(trials=2, space={"svd_epochs": [1, 2], "finetune_epochs": [0, 2]},
                       baselines={"methods": ["l1"], "targets": [2]})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    assert [r["epochs"] for r in RunDir(run).baseline_results()] == [4]
    _, _, study = open_run_study(run)
    frame = trials_frame(study, run).set_index("number")
    for trial in study.trials:  # each trial's own budget, in trials.csv for comparison
        assert frame.loc[trial.number, "epochs"] == (
            trial.params["svd_epochs"] + trial.params["finetune_epochs"])


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("cannot reduce FLOPs 2x with slimming: no channel could be removed"),
     "cannot reduce FLOPs 2x with slimming"),
    # What torch-pruning raises on a graph it cannot handle (ShuffleNet): the study goes on.
    (ZeroDivisionError("division by zero"),
     "ZeroDivisionError while pruning with torch-pruning: division by zero"),
])
def test_a_failed_baseline_is_reported_as_failed_with_its_reason(tiny_space, tmp_path,
                                                                  monkeypatch, capsys, error,
                                                                  reason):
    def cannot_prune(*args, **kwargs):
        raise error

    monkeypatch.setattr(baselines.runs, "pruned_reference", cannot_prune)
    space = tiny_space(trials=1, baselines={"methods": ["slimming"], "targets": [2]})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run)])
    assert f"baseline slimming 2x: failed: {reason}" in capsys.readouterr().err
    assert f"  failed baseline slimming 2x: {reason}" in app.status_text(run)
    _, _, study = open_run_study(run)
    row = trials_frame(study, run).query("kind == 'baseline:slimming'").iloc[0]
    assert row["state"] == "FAIL" and row["fail_reason"].startswith(reason)
    cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"- Failed baseline run, never drawn: slimming 2x: {reason}" in summary
    page = (tmp_path / "report" / "index.html").read_text()
    assert "0 trials and 1 failed baseline run." in page and "slimming 2x (baseline)" in page


@pytest.mark.slow
def test_killed_baseline_is_completed_not_duplicated(tiny_space, tmp_path):
    space = tiny_space(trials=1, baselines={"methods": ["l1"], "targets": [2, 3, 4]})
    run = RunDir(tmp_path / "run").create()
    atomic_write_text(run.config_path, config.dump(config.load(space)))
    proc = subprocess.Popen([sys.executable, "-m", "ranksearch", "baselines", str(run.path),
                             "--quiet"])
    first = run.baseline_dir("l1", 2) / "metrics.json"
    deadline = time.time() + 300
    while time.time() < deadline and not first.is_file():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamp = first.stat().st_mtime_ns
    cli.main(["baselines", str(run.path), "--quiet"])
    assert first.stat().st_mtime_ns == stamp  # the finished run was not redone
    assert len(run.baseline_results()) == 3


def test_a_baselines_two_phases_see_different_batch_orders(tiny_space, tmp_path, monkeypatch):
    """As a trial's SVD-training and fine-tuning phases do: one seed for both replayed the
    same batches twice."""
    from ranksearch import pipeline

    seeds = []
    train = pipeline.train

    def recording(config, model, kind, schedule, *, seed, **kwargs):
        if kind == "baseline":
            seeds.append(seed)
        return train(config, model, kind, schedule, seed=seed, **kwargs)

    monkeypatch.setattr(pipeline, "train", recording)
    space = tiny_space(trials=1, baselines={"methods": ["l1"], "targets": [2]})
    cli.main(["search", str(space), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert len(seeds) == 2 and seeds[0] != seeds[1]


def test_slimming_sparsity_trains_the_reference_once_for_every_target(tiny_space, tmp_path,
                                                                       monkeypatch):
    """Network slimming: the reference trains with the L1 penalty on its batch-norm scales
    for the SVD-training budget (once, cached, for both targets), is pruned by those scales
    and fine-tuned for the fine-tuning budget."""
    from ranksearch import pipeline

    phases, train = [], pipeline.train

    def recording_train(config, model, name, schedule, **kwargs):
        phases.append(kwargs["desc"])
        return train(config, model, name, schedule, **kwargs)

    monkeypatch.setattr(pipeline, "train", recording_train)
    space = tiny_space(trials=1, baselines={"methods": ["slimming"], "targets": [2, 3],
                                            "slimming_penalty": 1.0})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    first, second = RunDir(run).baseline_results()
    assert [r["status"] for r in (first, second)] == ["complete", "complete"]
    assert first["epochs"] == second["epochs"] == 2  # sparsity training + fine-tuning
    assert first["settings"] == {"slimming_penalty": 1.0}
    # Three Adam steps with the penalty dominating: each of ResNet-20's 784 scales shrinks by
    # the step's rate, 1e-3 * (1 + 0.75 + 0.25) on the cosine schedule, 1.57 in all.
    scales = first["bn_scales"]
    assert 1.4 < scales["before"]["l1"] - scales["after"]["l1"] < 1.7
    assert second["bn_scales"] == scales
    assert len([p for p in (run / "cache" / "slimming").iterdir() if p.is_dir()]) == 1
    assert phases.count("slimming: sparsity training") == 1
    assert phases.count("slimming 2x (finetune budget)") == 1
    assert not [p for p in phases if "svd budget" in p]  # the pruned network: fine-tuned only


def test_slimming_without_a_penalty_prunes_the_reference_first(tiny_space, tmp_path):
    space = tiny_space(trials=1, baselines={"methods": ["slimming"], "targets": [2]})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    (result,) = RunDir(run).baseline_results()
    assert result["status"] == "complete" and result["epochs"] == 2
    assert "bn_scales" not in result and not (run / "cache" / "slimming").exists()


def test_baselines_tuned_over_rates_keep_the_best_on_validation(tiny_space, tmp_path,
                                                                 monkeypatch):
    """With baselines.lr, each rate is a full-budget run (the fine-tuning rate scaled as a
    searched lr scales a trial's), the best by validation metric is kept, and adding a rate
    later runs only that rate."""
    from ranksearch import pipeline
    from ranksearch.baselines import runs

    rates = []
    train = pipeline.train

    def recording_train(config, model, name, schedule, **kwargs):
        if name == "baseline":
            rates.append(schedule.lr)
        return train(config, model, name, schedule, **kwargs)

    monkeypatch.setattr(pipeline, "train", recording_train)
    space = tiny_space(trials=1, baselines={"methods": ["l1"], "targets": [2],
                                            "lr": [1e-4, 3e-3]})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    assert rates == pytest.approx([1e-4, 5e-5, 3e-3, 1.5e-3])  # schedule: 1e-3, then 5e-4
    (result,) = RunDir(run).baseline_results()
    tried = {float(lr): acc for lr, acc in result["lr_tried"].items()}
    assert set(tried) == {1e-4, 3e-3}
    assert result["lr"] == max(tried, key=tried.get)
    assert result["accuracy"] == max(tried.values())
    assert result["settings"] == {"lr": [1e-4, 3e-3]}
    each = [read_json(run / "baselines" / "l1-2x" / f"lr-{lr}" / "metrics.json")
            for lr in ("0.0001", "0.003")]
    # The report's wall time is the whole tuning's; the training time the kept run's.
    assert result["wall_time_s"] == pytest.approx(sum(m["wall_time_s"] for m in each))
    assert result["tuning_train_time_s"] == pytest.approx(sum(m["train_time_s"] for m in each))
    assert result["train_time_s"] in {m["train_time_s"] for m in each}

    original, calls = runs._baseline_run, []

    def counting(config, run, method, target, lr, progress):
        calls.append(lr)
        return original(config, run, method, target, lr, progress)

    monkeypatch.setattr(runs, "_baseline_run", counting)
    more = config.load(space).model_copy(update={"baselines": config.BaselineSpec(
        methods=["l1"], targets=[2], lr=[1e-4, 3e-3, 1e-2])})
    atomic_write_text(run / "config.yaml", config.dump(more))
    assert ("baselines: 0 of 1 done; 1 made with other settings, made again by the next search "
            "or 'ranksearch baselines'") in app.status_text(run)
    cli.main(["baselines", str(run), "--quiet"])
    assert "baselines: 1 of 1 done\n" in app.status_text(run)
    assert calls == [1e-2]
    (result,) = RunDir(run).baseline_results()
    assert set(result["lr_tried"]) == {"0.0001", "0.003", "0.01"}
    assert result["settings"] == {"lr": [1e-4, 3e-3, 1e-2]}
    # The report says how the baselines were trained.
    cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert ("at whichever of the rates 0.0001, 0.003, 0.01 did best on the validation split"
            in summary)
    rows = pd.read_csv(tmp_path / "report" / "trials.csv").set_index("kind")
    assert rows.loc["baseline:l1", "param_lr"] == result["lr"]


@pytest.mark.parametrize("lr, rates, warned", [
    ({"low": 1e-4, "high": 1e-2, "log": True}, None, True),
    ([1e-3, 3e-3], None, True),
    ({"low": 1e-4, "high": 1e-2, "log": True}, [1e-3], False),
    (3e-3, None, False),  # one rate for every trial: nothing is searched
])
def test_a_searched_lr_with_untuned_baselines_is_pointed_out(tiny_space, tmp_path, monkeypatch,
                                                            lr, rates, warned):
    monkeypatch.setattr(app, "make_backend", _no_backend)
    baselines = {"methods": ["l1"], "targets": [2], **({"lr": rates} if rates else {})}
    space = tiny_space(space={"lr": lr}, baselines=baselines)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(_Stop):
        warnings.simplefilter("always")
        app.run_search(config.load(space), RunDir(tmp_path / "run").create())
    said = [str(w.message) for w in caught if "baselines.lr" in str(w.message)]
    assert len(said) == int(warned)


class _Stop(Exception):
    pass


def _no_backend(*args, **kwargs):
    raise _Stop


def test_slimming_with_a_penalty_needs_batch_norms(tiny_space, tmp_path):
    from torch import nn

    from ranksearch import pipeline
    from ranksearch.baselines import slimming

    settings = config.load(tiny_space(baselines={"methods": ["slimming"], "targets": [2],
                                                 "slimming_penalty": 1e-4}))
    schedule = pipeline.trial_budget(settings)["svd"]
    with pytest.raises(RuntimeError, match="needs batch norms with scales to penalise"):
        slimming.sparsity_trained(settings, RunDir(tmp_path / "run").create(),
                                  nn.Sequential(nn.Conv2d(1, 4, 3)), schedule, seed=0,
                                  penalty=1e-4, progress=False)

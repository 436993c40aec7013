"""Baselines inside a run directory: stored once, loaded by the report, resumable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ranksearch import app, baselines, cli, config
from ranksearch.baselines import TOLERANCE
from ranksearch.report.pareto import trials_frame
from ranksearch.runs import RunDir, atomic_write_text
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

    monkeypatch.setattr(baselines, "pruned_reference", cannot_prune)
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

"""``ranksearch latency``: every model of a run timed again, one at a time, and the report
drawing its latencies from those timings."""

from __future__ import annotations

import shutil
import warnings

import pandas as pd
import pytest
import yaml

from ranksearch import cli, config, latency, measure
from ranksearch.runs import atomic_write_text, read_json, write_json


@pytest.fixture(scope="module")
def run_with_baselines(tmp_path_factory):
    """A finished 2-trial digits study with an L1 and a network slimming baseline (with its
    sparsity training), latency measured in-trial."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("latency")
    space = tmp / "space.yaml"
    config = {**TINY, "trials": 2, "measure_latency": True,
              "latency": {"batch_size": 4, "threads": 1},
              "baselines": {"methods": ["l1", "slimming"], "targets": [2],
                            "slimming_penalty": 1e-3}}
    space.write_text(yaml.safe_dump(config))
    cli.main(["search", str(space), "--run-dir", str(tmp / "run"), "--quiet"])
    return tmp / "run"


def test_every_model_is_timed_and_the_report_uses_the_timings(run_with_baselines, tmp_path,
                                                               monkeypatch, capsys):
    run = run_with_baselines
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuilt baseline whose FLOPs differ would warn
        cli.main(["latency", str(run), "--repeats", "2"])
    timings = read_json(run / "latency.json")
    assert (timings["batch_size"], timings["threads"]) == (4, 1)
    assert set(timings["models"]) == {"reference", "trial:0", "trial:1", "baseline:l1-2x",
                                      "baseline:slimming-2x"}
    # A baseline's structure is rebuilt by pruning the reference again (slimming: the
    # sparsity-trained reference, from the run's cache): the same FLOPs.
    for name in ("l1-2x", "slimming-2x"):
        baseline = read_json(run / "baselines" / name / "metrics.json")
        assert timings["models"][f"baseline:{name}"]["flops"] == baseline["flops"]
    trial = read_json(run / "trials" / "0" / "metrics.json")
    assert timings["models"]["trial:0"]["flops"] == trial["flops"]
    assert all(m["latency_ms"] > 0 and m["latency_batch1_ms"] > 0
               for m in timings["models"].values())

    cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    frame = pd.read_csv(tmp_path / "report" / "trials.csv")
    timed = frame.set_index(frame["kind"] + ":" + frame["number"].fillna(-1).astype(int)
                            .astype(str))["latency_ms"]
    assert timed["svd:1"] == pytest.approx(timings["models"]["trial:1"]["latency_ms"])
    assert timed["reference:-1"] == pytest.approx(timings["models"]["reference"]["latency_ms"])
    assert frame.loc[frame["kind"] == "baseline:l1", "latency_ms"].iloc[0] == pytest.approx(
        timings["models"]["baseline:l1-2x"]["latency_ms"])
    assert "ranksearch latency" in (tmp_path / "report" / "summary.md").read_text()

    # Same settings: nothing is timed again; other settings: everything is.
    calls = []
    monkeypatch.setattr(measure, "fastest_passes",
                        lambda models, *a, **k: calls.append(1) or [1e-3] * len(models))
    capsys.readouterr()
    cli.main(["latency", str(run), "--repeats", "2"])
    assert not calls
    out, err = capsys.readouterr()
    assert "0 models timed now, 5 kept from an earlier call" in err
    assert "latency.json: 5 models timed at batch 4 and 1 on 1 thread\n" in out
    cli.main(["latency", str(run), "--repeats", "2", "--batch-size", "2"])
    assert len(calls) == 2 * 5  # batch 2 and batch 1, five models
    assert capsys.readouterr().err.endswith("5 models timed now\n")
    timings = read_json(run / "latency.json")
    assert timings["batch_size"] == 2
    # Each model against the reference in the same window, times the reference's figure.
    assert {m["latency_ms"] for m in timings["models"].values()} == {1.0}


def test_a_model_is_timed_as_its_ratio_to_the_reference_beside_it(run_with_baselines,
                                                                   monkeypatch) -> None:
    def fastest_passes(models, *args, **kwargs):
        # The load doubles between the reference's own timing and the other models'.
        return [2e-3] if len(models) == 1 else [4e-3, 6e-3]

    monkeypatch.setattr(measure, "fastest_passes", fastest_passes)
    timings = latency.measure_run(run_with_baselines, repeats=2)["models"]
    assert timings["reference"]["latency_ms"] == pytest.approx(2.0)
    assert timings["trial:0"]["latency_ms"] == pytest.approx(3.0)  # 1.5x the reference


def test_a_file_timed_the_earlier_way_is_timed_again(run_with_baselines, monkeypatch) -> None:
    monkeypatch.setattr(measure, "fastest_passes", lambda models, *a, **k: [1e-3] * len(models))
    first = latency.measure_run(run_with_baselines, repeats=2)
    earlier = {key: value for key, value in first.items() if key != "timing"}
    earlier["models"] = {key: {**value, "latency_ms": 99.0}
                         for key, value in first["models"].items()}
    write_json(run_with_baselines / "latency.json", earlier)
    again = latency.measure_run(run_with_baselines, repeats=2)["models"]
    assert {m["latency_ms"] for m in again.values()} == {1.0}


@pytest.mark.parametrize("field", ["host", "cpu", "torch"])
def test_timings_from_another_machine_are_timed_again(run_with_baselines, monkeypatch,
                                                      field) -> None:
    """A run directory copied to the deployment host: its latency.json came from the
    search host, whose figures must not pass for this one's."""
    monkeypatch.setattr(measure, "fastest_passes", lambda models, *a, **k: [1e-3] * len(models))
    first = latency.measure_run(run_with_baselines, threads=1, repeats=2)
    elsewhere = {**first, field: "another", "models": {
        key: {**value, "latency_ms": 99.0} for key, value in first["models"].items()}}
    write_json(run_with_baselines / "latency.json", elsewhere)
    again = latency.measure_run(run_with_baselines, threads=1, repeats=2)
    assert {m["latency_ms"] for m in again["models"].values()} == {1.0}
    assert again[field] != "another"



@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"batch_size": 0}, {"threads": -1}])
def test_a_setting_below_one_keeps_the_timings_on_disk(run_with_baselines, monkeypatch,
                                                       kwargs) -> None:
    monkeypatch.setattr(measure, "fastest_passes", lambda models, *a, **k: [1e-3] * len(models))
    latency.measure_run(run_with_baselines, repeats=2)
    before = (run_with_baselines / "latency.json").read_text()
    with pytest.raises(ValueError, match="must be at least 1"):
        latency.measure_run(run_with_baselines, **kwargs)
    assert (run_with_baselines / "latency.json").read_text() == before

def test_timing_under_a_passive_openmp_policy_warns(run_with_baselines, monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setattr(measure, "fastest_passes", lambda models, *a, **k: [1e-3] * len(models))
    with pytest.warns(UserWarning, match="OMP_WAIT_POLICY=PASSIVE"):
        latency.measure_run(run_with_baselines, repeats=2)


def test_a_run_without_trials_is_one_line(tmp_path, tiny_space, capsys):
    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=1)), "--run-dir", str(run), "--quiet"])
    shutil.rmtree(run / "trials")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["latency", str(run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no complete trial with a saved model" in err[-1]


def test_several_workers_timing_latency_are_told_to_time_again(tiny_space, tmp_path,
                                                               monkeypatch):
    from ranksearch import app, pipeline
    from ranksearch import config as cfg
    from ranksearch.runs import RunDir

    ran = []

    class Backend:
        def check(self):
            pass

        def run(self, *args, **kwargs):
            ran.append(True)

    monkeypatch.setattr(app, "make_backend", lambda *a, **k: Backend())
    monkeypatch.setattr(pipeline, "reference", lambda *a, **k: (None, {"accuracy": 1.0}))
    config = cfg.load(tiny_space(measure_latency=True, baselines=None))
    run = RunDir(tmp_path / "run").create()
    with pytest.warns(UserWarning, match=f"ranksearch latency {run.path}"):
        app.run_search(config, run, workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.run_search(config, run, workers=1)
    assert len(ran) == 2


def test_run_models_builds_what_latency_times(run_with_baselines):
    from ranksearch.latency import run_models

    builders, input_shape = run_models(run_with_baselines)
    assert set(builders) == {"reference", "trial:0", "trial:1", "baseline:l1-2x",
                             "baseline:slimming-2x"}
    baseline = read_json(run_with_baselines / "baselines" / "l1-2x" / "metrics.json")
    pruned = builders["baseline:l1-2x"]()
    assert measure.flops(pruned, input_shape) == baseline["flops"]
    assert not pruned.training and measure.is_channels_last(pruned)


def test_a_baseline_made_again_is_timed_again_as_its_result_was_made(run_with_baselines,
                                                                     tmp_path, capsys) -> None:
    """A kept timing whose FLOPs are not the baseline result's (the baseline was made again
    since, with other settings) is timed again; a baseline is rebuilt with the settings its
    result records, not the config's now; one that cannot be rebuilt is counted."""
    run = tmp_path / "run"
    shutil.copytree(run_with_baselines, run)
    latency.measure_run(run, repeats=2)
    timings = read_json(run / "latency.json")
    timings["models"]["baseline:l1-2x"]["flops"] += 1000
    write_json(run / "latency.json", timings)
    settings = config.load(run / "config.yaml")
    penalty_off = settings.model_copy(update={"baselines": settings.baselines.model_copy(
        update={"slimming_penalty": 0.0})})
    atomic_write_text(run / "config.yaml", config.dump(penalty_off))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = latency.measure_run(run, repeats=2)["models"]
    assert capsys.readouterr().err.endswith("1 models timed now, 4 kept from an earlier call "
                                            "with the same settings on this machine\n")
    assert again["baseline:l1-2x"]["flops"] == timings["models"]["baseline:l1-2x"]["flops"] - 1000

    (run / "latency.json").unlink()
    shutil.rmtree(run / "cache" / "slimming")
    with pytest.warns(UserWarning, match="baseline:slimming-2x not timed: the sparsity-trained"):
        latency.measure_run(run, repeats=2)
    assert "4 models timed now, 1 not timed (see the warnings)" in capsys.readouterr().err

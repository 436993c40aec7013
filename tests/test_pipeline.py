"""One trial end to end, its caches, and how it fails."""

from __future__ import annotations

import pytest
import torch

from ranksearch import config as cfg
from ranksearch import export, pipeline
from ranksearch.runs import RunDir


def _config(tiny_space, **params) -> cfg.StudyConfig:
    values = {"scheme": "channel", "decay": "hoyer", "lambda_s": 3e-3, "energy": 0.3, **params}
    return cfg.load(tiny_space(space=None, params=values))


def test_one_trial_on_digits(tiny_space, tmp_path):
    config = _config(tiny_space)
    run = RunDir(tmp_path / "run").create()
    metrics = pipeline.run_trial(config, config.params, run, tmp_path / "trial", progress=False)
    assert 0 < metrics["accuracy"] <= 1 and 0 < metrics["test_accuracy"] <= 1
    assert metrics["flops"] > 0 and metrics["params"] > 0
    assert metrics["flops_reduction"] > 1  # e = 0.3 leaves ranks that save FLOPs
    assert set(metrics["ranks"]) >= {"layer1.0.conv1", "fc"}
    assert metrics["status"] == "complete" and metrics["full_budget"]
    # The trial folder rebuilds the same compact model without pickle.
    model = export.load(tmp_path / "trial")
    x = torch.randn(4, 1, 8, 8)
    assert model(x).shape == (4, 10)


def test_trial_is_reproducible(tiny_space, tmp_path):
    config = _config(tiny_space)
    run = RunDir(tmp_path / "run").create()
    first = pipeline.run_trial(config, config.params, run, progress=False)
    # A second run directory: the reference and SVD training are recomputed from scratch.
    second = pipeline.run_trial(config, config.params, RunDir(tmp_path / "other").create(),
                                progress=False)
    assert first["accuracy"] == second["accuracy"] and first["ranks"] == second["ranks"]


def test_exact_ranks_reproduce_a_trial(tiny_space, tmp_path):
    config = _config(tiny_space)
    run = RunDir(tmp_path / "run").create()
    first = pipeline.run_trial(config, config.params, run, tmp_path / "t", progress=False)
    rerun = cfg.load(tmp_path / "t" / "config.yaml")
    assert rerun.params.ranks == first["ranks"]
    second = pipeline.run_trial(rerun, rerun.params, run, progress=False)
    assert second["ranks"] == first["ranks"] and second["flops"] == first["flops"]


def test_huge_lambda_diverges(tiny_space, tmp_path):
    config = _config(tiny_space, decay="l1", lambda_s=1e38)
    with pytest.raises(pipeline.TrialFailed, match="diverged"):
        pipeline.run_trial(config, config.params, RunDir(tmp_path / "run").create(),
                           progress=False)


def test_corrupt_cache_is_retrained(tiny_space, tmp_path, monkeypatch):
    config = _config(tiny_space)
    run = RunDir(tmp_path / "run").create()
    pipeline.reference(config, run, progress=False)
    weights = next((tmp_path / "run" / "cache" / "reference").glob("*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # a truncated copy
    fits = []
    real_fit = pipeline.fit
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: fits.append(k["desc"]) or
                        real_fit(*a, **k))
    pipeline.reference(config, run, progress=False)
    assert fits == ["reference"]
    fits.clear()
    pipeline.reference(config, run, progress=False)  # now valid again: loaded, not trained
    assert fits == []


def test_stage_granularity_expands_to_layers():
    groups = {"layer1.0.conv1": "layer1", "layer2.0.conv1": "layer2", "fc": "fc"}
    expanded = pipeline.expand_by_layer({"layer1": 0.1, "fc": 0.3}, list(groups), groups)
    assert expanded == {"layer1.0.conv1": 0.1, "layer2.0.conv1": 0.0, "fc": 0.3}
    with pytest.raises(pipeline.TrialFailed, match="unknown layer or group"):
        pipeline.expand_by_layer({"layer9": 0.1}, list(groups), groups)

"""One trial end to end, its caches, and how it fails."""

from __future__ import annotations

import pytest
import torch

from ranksearch import config as cfg
from ranksearch import export, measure, models, pipeline
from ranksearch.runs import RunDir
from ranksearch.train import evaluate


def _config(tiny_space, **params) -> cfg.StudyConfig:
    values = {"scheme": "channel", "decay": "hoyer", "lambda_s": 3e-3, "energy": 0.3, **params}
    return cfg.load(tiny_space(space=None, params=values))


@pytest.mark.parametrize("scheme", ["channel", "spatial", "pointwise_first"])
def test_one_trial_on_digits(tiny_space, tmp_path, scheme):
    config = _config(tiny_space, scheme=scheme)
    run = RunDir(tmp_path / "run").create()
    metrics = pipeline.run_trial(config, config.params, run, tmp_path / "trial", progress=False)
    assert set(metrics["ranks"]) >= {"layer1.0.conv1", "fc"}
    assert metrics["status"] == "complete" and metrics["full_budget"]
    # The trial folder rebuilds, without pickle, the model its metrics were measured on.
    model = export.load(tmp_path / "trial")
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert metrics["flops"] == measure.flops(model, (1, 8, 8))
    assert metrics["params"] == measure.params(model)
    data = pipeline.dataset(config)
    sample = 1 / data.len_split("val")  # folded batch norms may round a near-tie differently
    assert metrics["accuracy"] == pytest.approx(evaluate(model, data, "val"), abs=sample)
    sample = 1 / data.len_split("test")
    assert metrics["test_accuracy"] == pytest.approx(evaluate(model, data, "test"), abs=sample)
    _, reference = pipeline.reference(config, run, progress=False)
    assert metrics["flops_reduction"] == pytest.approx(reference["flops"] / metrics["flops"])
    assert metrics["flops_reduction"] > 1  # e = 0.3 leaves ranks that save FLOPs


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
    real_run = pipeline.run_phase
    monkeypatch.setattr(pipeline, "run_phase", lambda model, phase, loop: fits.append(
        phase.desc) or real_run(model, phase, loop))
    pipeline.reference(config, run, progress=False)
    assert fits == ["reference"]
    fits.clear()
    pipeline.reference(config, run, progress=False)  # now valid again: loaded, not trained
    assert fits == []


def test_stage_granularity_expands_to_layers():
    groups = models.layer_groups(models.create("resnet20", in_channels=1))
    value = {"layer1": 0.1, "fc": 0.3, "layer1.2.conv2": 0.2}
    expanded = pipeline.expand_by_layer(value, list(groups), groups)
    assert set(expanded) == set(groups)
    for name, group in groups.items():
        # A layer's own name wins over its group; a layer neither names gets 0.
        expected = value.get(name, value.get(group, 0.0))
        assert expanded[name] == expected, name
    assert expanded["layer1.0.conv1"] == 0.1 and expanded["layer1.2.conv2"] == 0.2
    assert expanded["layer2.0.conv1"] == 0.0 and expanded["fc"] == 0.3
    assert pipeline.expand_by_layer(0.4, list(groups), groups) == 0.4
    with pytest.raises(pipeline.TrialFailed, match="unknown layer or group 'layer9'"):
        pipeline.expand_by_layer({"layer9": 0.1}, list(groups), groups)

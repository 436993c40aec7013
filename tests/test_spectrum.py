"""Whether SVD training moved the spectrum: the rank at e = 0.01 before and after it."""

from __future__ import annotations

import copy

import pytest
import torch

from ranksearch import config as cfg
from ranksearch import models, pipeline, svd
from ranksearch.runs import RunDir


def test_ranks_at_energy_matches_pruning_and_prunes_nothing() -> None:
    torch.manual_seed(0)
    model = svd.decompose(models.create("resnet20"), exclude=("fc",))
    full = {name: layer.rank for name, layer in svd.svd_layers(model).items()}
    for energy in (0.0, 0.01, 0.2):
        predicted = svd.ranks_at_energy(model, energy)
        assert {n: layer.rank for n, layer in svd.svd_layers(model).items()} == full
        assert predicted == svd.prune_by_energy(copy.deepcopy(model), energy)
    assert sum(svd.ranks_at_energy(model, 0.2).values()) < sum(full.values())


def test_trial_records_the_spectrum_before_and_after(tiny_space, tmp_path) -> None:
    config = cfg.load(tiny_space(space=None, params={
        "scheme": "channel", "decay": "hoyer", "lambda_s": 0.5, "energy": 0.3}))
    run = RunDir(tmp_path / "run").create()
    metrics = pipeline.run_trial(config, config.params, run, progress=False)
    spectrum = metrics["spectrum"]
    assert set(spectrum) == set(metrics["ranks"])
    dense, _ = pipeline.reference(config, run, progress=False)
    before = svd.ranks_at_energy(svd.decompose(dense, exclude=tuple(config.model.exclude)),
                                 pipeline.SPECTRUM_ENERGY)
    assert {name: b for name, (b, _) in spectrum.items()} == before
    assert all(1 <= a <= svd.svd_layers(svd.decompose(dense))[n].full_rank
               for n, (_, a) in spectrum.items())
    # A second trial on the same SVD-trained model reports the same spectrum, from the cache.
    again = pipeline.run_trial(config, config.params.model_copy(update={"energy": 0.1}), run,
                               progress=False)
    assert again["svd_cached"] and again["spectrum"] == spectrum


def test_a_searched_rate_scales_fine_tuning_too(tiny_space, monkeypatch, tmp_path) -> None:
    config = cfg.load(tiny_space(space=None, params={
        "scheme": "channel", "decay": "hoyer", "lambda_s": 1e-3, "energy": 0.3, "lr": 2e-3}))
    rates = {}
    real_run = pipeline.run_phase

    def recording_run(model, phase, loop):
        rates[phase.desc] = phase.lr
        return real_run(model, phase, loop)

    monkeypatch.setattr(pipeline, "run_phase", recording_run)
    pipeline.run_trial(config, config.params, RunDir(tmp_path / "run").create(), progress=False)
    # The tiny schedule: SVD training at 1e-3 and fine-tuning at 5e-4; the searched 2e-3
    # doubles both.
    assert rates["svd-train"] == 2e-3
    assert rates["fine-tune"] == 2 * config.schedule.finetune.lr


def test_unprune_restores_the_full_spectrum() -> None:
    torch.manual_seed(0)
    model = svd.decompose(models.create("resnet20"), exclude=("fc",))
    full = {name: layer.full_rank for name, layer in svd.svd_layers(model).items()}
    pruned = svd.prune_by_energy(model, 0.3)
    assert pruned != full
    svd.unprune(model)
    assert {name: layer.rank for name, layer in svd.svd_layers(model).items()} == full
    assert svd.prune_by_energy(model, 0.3) == pruned


def test_evaluate_on_the_first_samples_of_a_split() -> None:
    from ranksearch.data import load
    from ranksearch.train import evaluate

    data = load("digits", val_fraction=0.2, seed=0)
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    x, y = next(iter(data.batches("val", 70, train=False)))
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert evaluate(model, data, "val", batch_size=32, samples=70) == pytest.approx(expected)

"""Whether SVD training moved the spectrum: the rank at e = 0.01 before and after it."""

from __future__ import annotations

import copy

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
    real_fit = pipeline.fit

    def recording_fit(*args, **kwargs):
        rates[kwargs["desc"]] = kwargs.get("lr")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit", recording_fit)
    pipeline.run_trial(config, config.params, RunDir(tmp_path / "run").create(), progress=False)
    # The tiny schedule: SVD training at 1e-3 and fine-tuning at 5e-4; the searched 2e-3
    # doubles both.
    assert rates["svd-train"] == 2e-3
    assert rates["fine-tune"] == 2 * config.schedule.finetune.lr

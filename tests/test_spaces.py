"""The shipped search spaces: valid, and reaching the values the method's authors used."""

from __future__ import annotations

from pathlib import Path

import pytest

from ranksearch import config as cfg

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
# yanghr/SVD_Prune_EDLCV's ResNet-20 scripts: L1 0.3, Hoyer 0.07-0.1, Hoyer-square 1e-2;
# thresholds L1 0.1, Hoyer 3e-6, Hoyer-square 5e-6.
AUTHORS_LAMBDA_S = {"l1": 0.3, "hoyer": 0.1, "hoyer_square": 1e-2}
AUTHORS_ENERGY = {"l1": 0.1, "hoyer": 3e-6, "hoyer_square": 5e-6}


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_is_valid(path: Path) -> None:
    config = cfg.load(path)
    assert config.space is not None and config.name


@pytest.mark.parametrize("name", ["cifar10_resnet20", "cifar10_resnet56",
                                  "fashion_mnist_resnet20"])
def test_resnet_spaces_reach_the_authors_values(name: str) -> None:
    config = cfg.load(SPACES / f"{name}.yaml")
    assert "fc" in config.model.exclude  # the authors keep the classifier dense
    for decay in config.space.decay:
        lambda_s = config.space.lambda_s[decay]
        energy = config.space.energy[decay]
        assert lambda_s.low <= AUTHORS_LAMBDA_S[decay] <= lambda_s.high, decay
        assert energy.low <= AUTHORS_ENERGY[decay] <= energy.high, decay


@pytest.mark.parametrize("name", ["fashion_mnist_resnet20", "cifar10_resnet20",
                                  "cifar10_resnet56", "imagenet_resnet18"])
def test_spaces_with_costly_finetuning_sweep_each_model(name: str) -> None:
    """Multi-fidelity is the default where a fine-tuning costs many sweep candidates (it was
    ahead there at equal CPU time); the digits quickstart, where a fine-tuning costs about
    as much as a whole sweep, keeps one fine-tuned point per trial."""
    config = cfg.load(SPACES / f"{name}.yaml")
    assert config.space.sweep is not None and config.space.energy_trials_per_model == 1


def test_quickstart_keeps_one_point_per_trial() -> None:
    assert cfg.load(SPACES / "digits_quickstart.yaml").space.sweep is None

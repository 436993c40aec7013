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


def test_a_trial_records_what_the_space_fixed_as_well_as_what_it_searched(tiny_space) -> None:
    """trials.csv holds every setting a trial ran with: the constants too, named as
    parameters would be."""
    import optuna

    from ranksearch.report.pareto import trials_frame
    from ranksearch.search.space import constant_params, suggest

    space = cfg.load(tiny_space(space={
        "scheme": ["spatial"], "decay": ["hoyer", "l1"], "granularity": "stage",
        "lambda_o": 0.5,
        "energy": {"hoyer": {"low": 0.01, "high": 0.01}, "l1": {"low": 0.01, "high": 0.3}},
    })).space
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    groups = {"layer1.0.conv1": "layer1", "layer2.0.conv1": "layer2"}
    for _ in range(6):
        trial = study.ask()
        params = suggest(trial, space, groups)
        constants = constant_params(params, trial.params)
        assert constants["scheme"] == "spatial" and constants["lambda_o"] == 0.5
        assert "decay" not in constants and not any(k.startswith("lambda_s") for k in constants)
        if params.decay == "hoyer":
            assert constants["energy.layer1"] == constants["energy.layer2"] == 0.01
        else:
            assert not any(k.startswith("energy") for k in constants)
        trial.set_user_attr("metrics", {"constants": constants})
        study.tell(trial, [0.5, 1e6])
    frame = trials_frame(study)
    assert (frame["param_scheme"] == "spatial").all()
    assert frame["param_decay"].notna().all()


@pytest.mark.parametrize("rng", [{"low": 0.01, "high": 0.3}, {"low": 0.01, "high": 0.3,
                                                                  "step": 0.01}],
                         ids=["linear", "stepped"])
def test_a_linear_range_of_energy_and_lambda_s_is_searched(rng) -> None:
    """``{low, high}`` without ``log`` is a range, not a per-decay mapping keyed low/high."""
    import optuna
    import yaml

    from ranksearch.search.space import suggest
    from tests.conftest import TINY

    text = yaml.safe_dump({**TINY, "space": {"decay": "l1", "energy": rng, "lambda_s": rng}})
    space = cfg.loads(text).space
    assert space.energy == space.lambda_s == cfg.Range(**rng)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = suggest(study.ask(), space, {"layer1.0.conv1": "layer1"})
        assert 0.01 <= params.energy <= 0.3 and 0.01 <= params.lambda_s <= 0.3

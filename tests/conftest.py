"""Shared fixtures: one torch thread, tiny studies on the bundled digits data (seconds per
trial), large synthetic studies for the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

TINY = {
    "name": "tiny",
    "model": {"name": "resnet20"},
    "data": {"name": "digits", "val_fraction": 0.2},
    "schedule": {
        "reference": {"epochs": 2, "lr": 0.1, "batch_size": 64, "max_batches": 4},
        "svd": {"epochs": 1, "lr": 1e-3, "optimizer": "adam", "batch_size": 64,
                "max_batches": 3},
        "finetune": {"epochs": 1, "lr": 5e-4, "optimizer": "adam", "batch_size": 64,
                     "max_batches": 2},
    },
    "trials": 4,
    "sampler": {"name": "tpe", "n_startup_trials": 2},
    "space": {
        "scheme": ["channel", "spatial"],
        "decay": ["l1", "hoyer"],
        "lambda_s": {"l1": {"low": 1e-3, "high": 0.3, "log": True},
                     "hoyer": {"low": 1e-4, "high": 1e-2, "log": True}},
        "energy": {"l1": {"low": 1e-2, "high": 0.3, "log": True},
                   "hoyer": {"low": 1e-3, "high": 0.1, "log": True}},
    },
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.fixture
def tiny_space(tmp_path: Path):
    """Write a tiny digits search space (with overrides; None removes a key) and return its
    path."""

    def make(filename: str = "space.yaml", **overrides) -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(_merge(TINY, overrides), sort_keys=False))
        return path

    return make


def cli_error(args: list[str], capsys) -> str:
    """Run ``ranksearch ARGS`` expecting a user error and return its stderr, checked: exit
    status 2, no traceback, the last line ``ranksearch[ COMMAND]: error: ...`` (warnings, or
    argparse's usage, may precede it)."""
    from ranksearch import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("ranksearch") and ": error: " in last, err
    return err


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test runs torch on one thread. Their tensors are tiny (8x8 digits, batch 64),
    so extra threads gain nothing, and on a busy machine OpenMP threads waiting for a core
    cost far more than the work: test_baseline_runs took 194 s on two threads of a loaded
    2-core machine and 10 s on one. Subprocesses keep their own settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SYNTHETIC_REFERENCE = {"accuracy": 0.9174, "test_accuracy": 0.915, "flops": 81e6,
                       "params": 270_000, "latency_ms": 3.0}
SYNTHETIC_DISTRIBUTIONS = {
    "decay": CategoricalDistribution(["l1", "hoyer"]),
    "energy": FloatDistribution(1e-6, 0.3, log=True),
    "lambda_o": FloatDistribution(0.1, 4.0),
}
SYNTHETIC_LAYERS = [f"layer{g}.{b}.conv{c}" for g in (1, 2, 3) for b in range(3)
                    for c in (1, 2)] + ["fc"]


def _synthetic_study(n: int, seed: int = 0) -> optuna.Study:
    """``n`` trials of a ResNet-20-like CIFAR-10 study (no training) with a realistic
    accuracy/FLOPs trade-off, 19 layers of ranks and latencies: every 37th trial failed with
    a reason (HTML in it), every 53rd pruned, every 29th complete one truncated (not full
    budget)."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=["maximize", "minimize"], study_name=f"synthetic-{n}")
    study.set_user_attr("reference", SYNTHETIC_REFERENCE)
    trials = []
    for number in range(n):
        energy = float(np.exp(rng.uniform(np.log(1e-6), np.log(0.3))))
        params = {"decay": str(rng.choice(["l1", "hoyer"])), "energy": energy,
                  "lambda_o": float(rng.uniform(0.1, 4.0))}
        if number % 37 == 5:
            trials.append(create_trial(
                state=TrialState.FAIL, params=params, distributions=SYNTHETIC_DISTRIBUTIONS,
                user_attrs={"fail_reason": "diverged: NaN loss at epoch 3 <b>not html</b>"}))
            continue
        if number % 53 == 7:
            trials.append(create_trial(state=TrialState.PRUNED, params=params,
                                       distributions=SYNTHETIC_DISTRIBUTIONS))
            continue
        ratio = float(np.clip(0.08 + 0.9 * (1 - energy / 0.3) ** 3 * rng.uniform(0.3, 1), 0.05, 1))
        accuracy = 0.9174 - 0.06 * (1 - ratio) ** 2.5 - abs(rng.normal(0, 0.01))
        metrics = {
            "accuracy": accuracy,
            "test_accuracy": accuracy - 0.003,
            "flops": ratio * 81e6,
            "params": int(270_000 * ratio),
            "flops_reduction": 1 / ratio,
            "ranks": {name: int(rng.integers(1, 64)) for name in SYNTHETIC_LAYERS},
            "latency_ms": 3.0 * (0.3 + 0.7 * ratio),
            "wall_time_s": 100.0,
            "status": "complete",
            "full_budget": number % 29 != 3,
        }
        trials.append(create_trial(values=[accuracy, ratio * 81e6], params=params,
                                   distributions=SYNTHETIC_DISTRIBUTIONS,
                                   user_attrs={"metrics": metrics}))
    study.add_trials(trials)
    return study


@pytest.fixture
def synthetic_study():
    """The factory ``synthetic_study(n, seed=0)`` of large studies for the report tests."""
    return _synthetic_study

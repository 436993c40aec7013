"""Shared fixtures: one torch thread, tiny studies on the bundled digits data (seconds per
trial)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

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

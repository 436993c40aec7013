"""The multi-fidelity benchmark's stopping rule: equal CPU time within one trial's cost."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "multi_fidelity" / "run.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("multi_fidelity_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_more_trial_runs_only_when_it_lands_nearer_the_budget() -> None:
    fits = _benchmark().next_trial_fits
    record = {"cpu_seconds": 60.0, "trials": [{"cpu_seconds": 14.0, "queued": False},
                                              {"cpu_seconds": 4.0, "queued": True}]}
    # A sampled trial trains a new model, priced at 14 s.
    assert fits(record, queued=False, budget=70.0)  # 74 is nearer 70 than 60
    assert not fits(record, queued=False, budget=66.0)  # 60 is nearer than 74
    assert not fits({**record, "cpu_seconds": 70.0}, queued=False, budget=70.0)
    # A queued trial only fine-tunes, priced at 4 s: 64 is nearer 66 than 60.
    assert fits(record, queued=True, budget=66.0)
    # The first trial of a kind has no price yet: it runs.
    assert fits({"cpu_seconds": 60.0, "trials": []}, queued=False, budget=66.0)

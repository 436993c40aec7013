"""The trial function both backends run: suggest a point, run the pipeline, report values."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import optuna

from .. import config as cfg
from .. import objectives, svd
from ..pipeline import TrialFailed, build_model, dataset, run_trial
from ..runs import RunDir
from .space import suggest, training_param_names

__all__ = ["Objective", "TrialOutcome"]


@dataclass
class TrialOutcome:
    values: list[float] | None
    """Objective values, or None when the trial failed."""
    metrics: dict[str, Any] | None
    fail_reason: str | None


class Objective:
    """Runs one trial for an Optuna trial object and records everything on it."""

    def __init__(self, config: cfg.StudyConfig, run: RunDir, *, progress: bool = True) -> None:
        if config.space is None:
            raise ValueError("a search needs a config with a 'space' section")
        self.config = config
        self.run = run
        self.progress = progress
        self._layer_groups: dict[str, str] | None = None

    def layer_groups(self) -> dict[str, str]:
        """Group of each layer that SVD training decomposes."""
        if self._layer_groups is None:
            from ..models import layer_groups

            dense = build_model(self.config, dataset(self.config))
            names = svd.decomposable(dense, exclude=tuple(self.config.model.exclude))
            groups = layer_groups(dense)
            self._layer_groups = {name: groups.get(name, name) for name in names}
        return self._layer_groups

    def __call__(self, trial: optuna.Trial) -> TrialOutcome:
        params = suggest(trial, self.config.space, self.layer_groups())
        start = time.perf_counter()
        try:
            metrics = run_trial(self.config, params, self.run, self.run.trial_dir(trial.number),
                                progress=self.progress)
        except TrialFailed as err:
            return self._failed(trial, str(err))
        except Exception as err:  # a trial that raises is recorded, and the search goes on
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            return self._failed(trial, f"error: {detail}")
        metrics["framework_time_s"] = max(
            0.0, time.perf_counter() - start - metrics["train_time_s"] - metrics["eval_time_s"])
        trial.set_user_attr("metrics", metrics)
        constraints = objectives.constraint_values(self.config, metrics)
        if constraints is not None:
            trial.set_user_attr("constraints", constraints)
        self._share_training(trial)
        return TrialOutcome(objectives.values(self.config, metrics), metrics, None)

    def _failed(self, trial: optuna.Trial, reason: str) -> TrialOutcome:
        trial.set_user_attr("fail_reason", reason)
        return TrialOutcome(None, None, reason)

    def _share_training(self, trial: optuna.Trial) -> None:
        """After a freshly SVD-trained trial, queue trials that reuse its trained model with
        new energy thresholds (the sampler picks those; the rest is fixed)."""
        extra = self.config.space.energy_trials_per_model - 1
        if extra <= 0 or "reuses_training_of" in trial.user_attrs:
            return
        fixed = training_param_names(trial.params)
        for _ in range(extra):
            trial.study.enqueue_trial(fixed, user_attrs={"reuses_training_of": trial.number},
                                      skip_if_exists=False)

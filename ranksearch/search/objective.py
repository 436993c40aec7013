"""The trial function both backends run: suggest a point, run the pipeline, report values."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import optuna

from .. import config as cfg
from .. import fidelity, objectives
from ..pipeline import TrialFailed, build_model, dataset, run_trial, svd_layer_groups
from ..runs import RunDir
from ..train import MetricFailed
from .space import (
    constant_params,
    energy_params,
    granularity_units,
    suggest,
    training_param_names,
)

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
            dense = build_model(self.config, dataset(self.config))
            self._layer_groups = svd_layer_groups(self.config, dense)
        return self._layer_groups

    def __call__(self, trial: optuna.Trial) -> TrialOutcome:
        groups = self.layer_groups()
        start = time.perf_counter()
        try:
            params = suggest(trial, self.config.space, groups)
            metrics = run_trial(self.config, params, self.run, self.run.trial_dir(trial.number),
                                progress=self.progress)
            if (self.config.space.sweep is not None
                    and "reuses_training_of" not in trial.user_attrs):
                sweep_start = time.perf_counter()
                self._sweep_and_promote(trial, params, metrics)
                metrics["sweep_time_s"] = time.perf_counter() - sweep_start
        except (TrialFailed, MetricFailed) as err:  # the sweep's proxy metric may fail too
            return self._failed(trial, str(err))
        except Exception as err:  # a trial that raises is recorded, and the search goes on
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            return self._failed(trial, f"error: {detail}")
        metrics["framework_time_s"] = max(
            0.0, time.perf_counter() - start - metrics["train_time_s"] - metrics["eval_time_s"]
            - metrics.get("sweep_time_s", 0.0))
        metrics["constants"] = constant_params(params, trial.params)
        trial.set_user_attr("metrics", metrics)
        # Optuna's samplers steer away from a trial with a positive value, and
        # Study.best_trials leaves it out.
        for name, value in objectives.constraint_values(self.config, metrics).items():
            trial.set_constraint(name, value)
        self._share_training(trial)
        return TrialOutcome(objectives.values(self.config, metrics), metrics, None)

    def _sweep_and_promote(self, trial: optuna.Trial, params: cfg.TrialParams,
                           metrics: dict[str, Any]) -> None:
        """Sweep the thresholds of this trial's freshly SVD-trained model without
        fine-tuning, record every candidate on the trial (the report's low-fidelity points),
        and queue the promoted ones as trials that reuse the trained model.

        A promoted candidate is queued once per study whatever happens: its id is checked
        against the trials already there, so a trial rerun after a kill (its sweep cached)
        queues nothing twice, and one killed half-way through queueing queues the rest.
        """
        space = self.config.space
        groups = self.layer_groups()
        units = granularity_units(space, groups)
        candidates = fidelity.sweep(self.config, params, self.run, groups, units)
        reference_flops = metrics["flops"] * metrics["flops_reduction"]
        fixed = training_param_names(trial.params)
        finetune = ({"finetune_epochs": trial.params["finetune_epochs"]}
                    if "finetune_epochs" in trial.params else {})
        energies = [energy_params(space, params.decay, c.energy) for c in candidates]
        idents = [cfg.settings_key(fixed, energy) for energy in energies]
        # Promoted from this trial (or the trial it retries) before a kill: queued once, the
        # rest now. Promoted by another trial of the same model: its slot goes to another.
        mine = {trial.number, trial.user_attrs.get("retry_of")}
        queued = {t.user_attrs.get("candidate"): t.user_attrs.get("promoted_from")
                  for t in trial.study.get_trials(deepcopy=False)}
        taken = [c.energy for c, ident in zip(candidates, idents, strict=True)
                 if ident in queued and queued[ident] not in mine]
        promoted = fidelity.promote(candidates, space.sweep.promote, reference_flops,
                                    exclude=params.energy, taken=taken)
        for candidate in promoted:
            i = candidates.index(candidate)
            energy, ident = energies[i], idents[i]
            if ident in queued:
                continue
            # Fine-tuned as the trial that trained the model was: as long (where the space
            # searches the length), so that its fine-tuning is not left to the sampler.
            origin = {"reuses_training_of": trial.number, "promoted_from": trial.number,
                      "candidate": ident, "proxy_accuracy": candidate.proxy_accuracy,
                      "proxy_flops": candidate.flops}
            trial.study.enqueue_trial({**fixed, **finetune, **energy}, skip_if_exists=False,
                                      user_attrs=origin)
        trial.set_user_attr("sweep", [
            {"energy": c.energy, "flops": c.flops, "proxy_accuracy": c.proxy_accuracy,
             "seconds": c.seconds, "source": c.source, "promoted": c in promoted,
             "own": i == 0, "candidate": ident}
            for i, (c, ident) in enumerate(zip(candidates, idents, strict=True))])
        if candidates:
            metrics["proxy_accuracy"] = candidates[0].proxy_accuracy

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

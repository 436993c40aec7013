"""Network slimming's sparsity training (Liu et al. 2017, "Learning Efficient Convolutional
Networks through Network Slimming").

Before its channels are ranked by their batch-norm scales γ, the network trains with
``λ · Σ|γ|`` added to the loss, which drives the scales of channels the network can do without
towards zero, so that pruning them costs little accuracy. The term's gradient,
``λ · sign(γ)`` on the scale of every affine batch norm, is the one
``torch_pruning.pruner.BNScalePruner.regularize`` adds after the backward pass; as a loss term
it also reaches a user's training loop, through ``Phase.regulariser``.

Within a run, with ``baselines.slimming_penalty`` above 0, the sparsity training takes the
first of a baseline's two budgets (that of SVD training, as SVD training regularises the whole
network before it is pruned), and its model is cached: every ``slimming`` target prunes the
same sparsity-trained network, as the trials that differ only in their thresholds prune the
same SVD-trained one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import config as cfg
from .. import pipeline
from ..runs import CacheEntry, RunDir, load_state, read_json, save_state, write_json
from ..train import resolve_device

__all__ = ["bn_scale_penalty", "sparsity_trained", "cached_sparsity_trained"]

#: A scale below this (in magnitude) counts as driven to zero in the summary a run records.
SMALL_SCALE = 1e-2


def _scales(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, _BatchNorm) and m.affine]


def bn_scale_penalty(model: nn.Module) -> torch.Tensor:
    """``Σ|γ|`` over the scales of every affine batch norm of ``model``, in fp32 (a zero
    tensor when it has none)."""
    scales = _scales(model)
    if not scales:
        return torch.zeros(())
    return torch.stack([g.float().abs().sum() for g in scales]).sum()


def _scale_summary(model: nn.Module) -> dict[str, float]:
    with torch.no_grad():
        values = torch.cat([g.detach().float().abs().flatten() for g in _scales(model)])
    return {"l1": float(values.sum()), "small": float((values < SMALL_SCALE).float().mean())}


def _entry(config: cfg.StudyConfig, run: RunDir, schedule: cfg.Schedule, seed: int,
           penalty: float) -> CacheEntry:
    key = cfg.settings_key("slimming", pipeline.reference_key(config), schedule.key(),
                           penalty, seed)
    return run.cache("slimming", key)


def sparsity_trained(config: cfg.StudyConfig, run: RunDir, dense: nn.Module,
                     schedule: cfg.Schedule, *, seed: int, penalty: float, progress: bool
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the reference ``dense`` trained with ``penalty · Σ|γ|`` added to the loss
    for ``schedule`` with its batches seeded by ``seed``, cached in the run; and what the
    training did: its ``epochs``, ``seconds``, ``penalty``, and the batch-norm scales' ``l1``
    sum and ``small`` share (below :data:`SMALL_SCALE`) ``before`` and ``after``.

    Raises:
        Diverged: the loss became non-finite.
        RuntimeError: the model has no batch-norm scales to penalise.
    """
    if not _scales(dense):
        raise RuntimeError("network slimming needs batch norms with scales to penalise; the "
                           "model has none")
    entry = _entry(config, run, schedule, seed, penalty)
    model = copy.deepcopy(dense)
    with entry.lock():
        if entry.is_valid():
            model.load_state_dict(load_state(entry.file("model.safetensors"),
                                             resolve_device(config.device)))
            return model, read_json(entry.file("meta.json"))
        entry.prepare()
        before = _scale_summary(model)
        result = pipeline.train(config, model, "baseline", schedule,
                                seed=seed,
                                regulariser=lambda m: penalty * bn_scale_penalty(m),
                                desc="slimming: sparsity training", progress=progress)
        meta = {"epochs": result.epochs, "seconds": result.seconds, "penalty": penalty,
                "bn_scales": {"before": before, "after": _scale_summary(model)}}
        save_state(entry.file("model.safetensors"), model.state_dict())
        write_json(entry.file("meta.json"), meta)
        entry.seal()
    return model, meta


def cached_sparsity_trained(config: cfg.StudyConfig, run: RunDir, dense: nn.Module,
                            schedule: cfg.Schedule, *, seed: int,
                            penalty: float) -> nn.Module | None:
    """The model :func:`sparsity_trained` made with ``schedule``, ``seed`` and ``penalty``,
    from the run's cache; None when the cache does not hold it."""
    entry = _entry(config, run, schedule, seed, penalty)
    if not entry.is_valid():
        return None
    model = copy.deepcopy(dense)
    model.load_state_dict(load_state(entry.file("model.safetensors")))
    return model

"""Filter-pruning baselines: structured pruning with Torch-Pruning down to a FLOPs target.

Two separate pieces make a baseline, as in Torch-Pruning itself:

- the **importance criterion** (a ``torch_pruning.importance`` object) scores every channel of
  a dependency group, i.e. of all layers whose channels must be removed together (a residual
  sum couples every conv feeding it, its batch norms and the layers reading it):

  - ``l1``: ``GroupMagnitudeImportance(p=1)``, the L1 norm of the channel's weights summed
    over the group (filter magnitude, Li et al. 2017);
  - ``fpgm``: ``FPGMImportance()``, the summed distance of the channel's filter to the other
    filters of its layer, over the group: filters near the geometric median are redundant
    (He et al. 2019);
  - ``slimming``: ``BNScaleImportance()``, the magnitude of the channel's batch-norm scales
    (network slimming, Liu et al. 2017);
  - ``random``: ``RandomImportance()``, uniform noise (the control).

  Each criterion normalises its scores by their mean within a group (Torch-Pruning's
  default), so that channels of different layers can be ranked against each other.
- the **pruner mechanics** (``torch_pruning.pruner.BasePruner`` over a ``DependencyGraph``)
  decide how many channels go and remove them physically, layer shapes included. Here the
  ranking is global (one threshold over all groups, so FLOPs can be lowered by about one
  channel's cost at a time, and network slimming is global by definition) and progressive:
  channels are removed in several steps, the scores re-estimated after each, until the
  measured FLOPs reach the target.

Network slimming proper first trains with an L1 penalty on the batch-norm scales
(``torch_pruning.pruner.BNScalePruner.regularize``); :func:`prune_to_flops` only prunes, by the
scales the given model has. Taylor importance is not offered: it needs a loss and gradients
on data at every step, which a data-free pruning step does not have.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ranksearch.measure import flops

__all__ = ["METHODS", "TOLERANCE", "prune_to_flops", "run_baselines",
           "run_baselines_for_run"]

logger = logging.getLogger(__name__)

METHODS = ("l1", "fpgm", "slimming", "random")

# Within this relative distance above the FLOPs target, prune_to_flops removes one channel per
# step, so that it normally ends less than this far below the target.
TOLERANCE = 0.05

# Pruning steps allowed beyond the requested ``steps`` for the final approach to the target.
_MAX_EXTRA_STEPS = 60

# The fraction of all channels pruning may remove; beyond it the network has hardly any left.
_MAX_RATIO = 0.98

# From the last planned step on, each step removes this fraction of the channels predicted to
# remain to be removed: a step then overshoots only if the prediction is off by this factor.
_FINAL_APPROACH = 3

# Exponent of the model FLOPs ∝ (kept channel fraction)^alpha used before any step has been
# measured: removing a fraction of every layer's channels removes it from both the inputs
# and the outputs of most convolutions.
_INITIAL_ALPHA = 2.0


def _importance(method: str) -> tp.importance.Importance:
    if method == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if method == "fpgm":
        return tp.importance.FPGMImportance()
    if method == "slimming":
        return tp.importance.BNScaleImportance()
    if method == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"unknown pruning method {method!r}; expected one of {', '.join(METHODS)}")


def _default_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    # Drawn on the CPU, whose generator the caller seeds, then moved.
    return torch.randn(1, *input_shape, dtype=dtype).to(device)


def _output_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The last ``Linear`` or ``Conv2d`` the forward pass runs: the classifier, whose output
    channels are the network's output and must not be pruned."""
    called: list[nn.Module] = []
    handles = [
        module.register_forward_hook(lambda module, args, output: called.append(module))
        for module in model.modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise ValueError("the model runs no Linear or Conv2d layer: nothing to prune")
    return called[-1]


def _resolve_ignored(
    original: nn.Module, pruned: nn.Module, ignored: Iterable[str | nn.Module]
) -> list[nn.Module]:
    """Map modules of the caller's model, or qualified names, to the modules of the copy."""
    names = {module: name for name, module in original.named_modules()}
    resolved = []
    for item in ignored:
        if isinstance(item, nn.Module):
            if item not in names:
                raise ValueError(f"ignored layer {type(item).__name__} is not part of the model")
            item = names[item]
        try:
            resolved.append(pruned.get_submodule(item))
        except AttributeError:
            raise ValueError(f"ignored layer {item!r} is not a module of the model") from None
    return resolved


def _next_removed(
    removed: int,
    total: int,
    current: float,
    previous: tuple[int, float] | None,
    target: float,
    steps_left: int,
) -> int:
    """How many of the ``total`` channels the next step should have removed in all.

    FLOPs are modelled locally as ``F ∝ (1 - removed / total)^alpha``, alpha from the last two
    measured points. The predicted remaining channels are split over ``steps_left`` steps
    and, from the last planned step on, divided by :data:`_FINAL_APPROACH`, so that the
    target is approached from above in shrinking steps; within :data:`TOLERANCE` of the
    target the steps remove one channel at a time.
    """
    if current <= target * (1 + TOLERANCE):
        return removed + 1
    alpha = _INITIAL_ALPHA
    if previous is not None:
        previous_removed, previous_flops = previous
        kept_ratio = (total - previous_removed) / (total - removed)
        slope = math.log(previous_flops / current) / math.log(kept_ratio)
        if slope > 0:
            alpha = slope
    predicted = total - (total - removed) * (target / current) ** (1 / alpha)
    step = (predicted - removed) / max(steps_left, _FINAL_APPROACH)
    return removed + max(round(step), 1)


def prune_to_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    method: str,
    reduction: float,
    *,
    steps: int = 8,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    example_inputs: torch.Tensor | None = None,
    seed: int = 0,
) -> nn.Module:
    """Filter-prune a copy of ``model`` until its FLOPs are reduced ``reduction``-fold.

    Channels are removed with Torch-Pruning, globally ranked by the importance criterion
    ``method`` (see the module docstring), over about ``steps`` steps with the scores
    re-estimated after each, and then in shrinking steps, the last ones of one channel, until
    ``ranksearch.measure.flops(pruned, input_shape)`` is at most ``flops(model) / reduction``.
    The achieved reduction then exceeds ``reduction`` by less than :data:`TOLERANCE` unless
    the last channel removed alone costs more than that (at high reductions of small
    networks, where a residual channel of a narrow stage is expensive); that case is logged
    as a warning. Residual couplings are respected through Torch-Pruning's
    ``DependencyGraph``; the output layer (the last ``Linear``/``Conv2d`` run) keeps its
    output channels, so the output shape is unchanged.

    Args:
        model: the network to prune; it is deep-copied and left untouched.
        input_shape: one input's shape (C, H, W), for FLOPs and graph tracing.
        method: ``l1``, ``fpgm``, ``slimming`` or ``random``.
        reduction: the FLOPs reduction asked, original FLOPs / pruned FLOPs; > 1.
        steps: number of progressive steps planned to reach the target (more steps re-rank
            the channels more often); the final approach may add a few.
        ignored_layers: layers whose output channels must not be pruned, as modules of
            ``model`` or qualified names (``"layer1.0.conv1"``); the output layer always is.
        example_inputs: a batch for tracing the graph; by default one random input.
        seed: seeds the random criterion and the default example input (the CPU generator,
            forked so the caller's random state is untouched), so the result is
            reproducible.

    Returns:
        The pruned copy, made of the same plain ``torch.nn`` modules with fewer channels, in
        the training mode ``model`` was in. The achieved reduction is
        ``flops(model, input_shape) / flops(pruned, input_shape)``.

    Raises:
        ValueError: an unknown ``method``, ``reduction <= 1``, ``steps < 1``, or an ignored
            layer that is not part of ``model``.
        RuntimeError: the target cannot be reached (too few prunable channels left).
    """
    importance = _importance(method)
    if not reduction > 1:
        raise ValueError(f"reduction must be greater than 1, got {reduction}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")

    pruned = copy.deepcopy(model)
    was_training = model.training
    # Tracing the graph runs the model: in training mode batch norm would update its running
    # statistics from the example input and change the function being pruned.
    pruned.eval()
    base = flops(pruned, input_shape)
    target = base / reduction
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if example_inputs is None:
            example_inputs = _default_input(pruned, input_shape)
        ignored = [_output_layer(pruned, example_inputs)]
        ignored += _resolve_ignored(model, pruned, ignored_layers or ())
        max_steps = steps + _MAX_EXTRA_STEPS
        pruner = tp.pruner.BasePruner(
            pruned,
            example_inputs,
            importance=importance,
            global_pruning=True,
            iterative_steps=max_steps,
            # The ratio of each step is chosen from the FLOPs measured after the previous one
            # and written into per_step_pruning_ratio just before the step; start from zeros.
            iterative_pruning_ratio_scheduler=lambda ratio, n: [0.0] * (n + 1),
            ignored_layers=ignored,
        )
        total = pruner.initial_total_channels
        removed, current, previous = 0, float(base), None
        while current > target:
            next_removed = _next_removed(
                removed, total, current, previous, target, steps - pruner.current_step
            )
            if next_removed > _MAX_RATIO * total or pruner.current_step >= max_steps:
                raise RuntimeError(
                    f"cannot reduce FLOPs {reduction:g}x with {method}: reached "
                    f"{base / current:.3g}x after {pruner.current_step} steps"
                    + (
                        "; the importance scores may not tell the channels apart (e.g. the "
                        "equal batch-norm scales of an untrained model)"
                        if current == base
                        else ""
                    )
                )
            # Torch-Pruning keeps int(total * (1 - ratio)) channels: half a channel below
            # next_removed / total rounds to exactly next_removed whatever the float error.
            ratio = (next_removed - 0.5) / total
            pruner.per_step_pruning_ratio[pruner.current_step + 1] = ratio
            pruner.step()
            previous = (removed, current)
            removed, current = next_removed, float(flops(pruned, input_shape))
    pruned.train(was_training)
    if base / current > reduction * (1 + TOLERANCE):
        logger.warning(
            "%s pruning overshot the target: %.3gx FLOPs reduction for %.3gx asked",
            method,
            base / current,
            reduction,
        )
    logger.info(
        "%s pruning: FLOPs %d -> %d (%.3gx, target %.3gx) in %d steps",
        method,
        base,
        current,
        base / current,
        reduction,
        pruner.current_step,
    )
    return pruned


# --- equal-budget runs in a run directory ----------------------------------------------------
def _baseline_run(config, run, method: str, target: float, progress: bool) -> dict[str, Any]:
    """Prune the cached reference to ``target``x fewer FLOPs with ``method`` and fine-tune it
    with the budget of one SVD trial: the SVD-training schedule, then the fine-tuning one."""
    from . import pipeline
    from .train import Diverged, fit

    start = time.perf_counter()
    data = pipeline.dataset(config)
    dense, ref_metrics = pipeline.reference(config, run, progress=progress)
    torch.manual_seed(config.seed)
    epochs = 0
    train_seconds = 0.0
    try:
        pruned = prune_to_flops(dense, data.input_shape, method, target, seed=config.seed)
        phases = (("svd", config.schedule.svd), ("finetune", config.schedule.finetune))
        for phase, schedule in phases:
            result = fit(pruned, data, schedule, seed=config.seed + 3, precision=config.precision,
                         channels_last=config.channels_last, progress=progress,
                         desc=f"{method} {target:g}x ({phase} budget)")
            epochs += result.epochs
            train_seconds += result.seconds
        status = "complete"
    except (Diverged, RuntimeError) as err:  # diverged, or the target cannot be reached
        status = f"failed: {err}"
    metrics = pipeline.measured(pruned, data, config) if status == "complete" else {}
    metrics.update(method=method, target=target, epochs=epochs, status=status,
                   train_time_s=train_seconds, wall_time_s=time.perf_counter() - start)
    if "flops" in metrics:
        metrics["flops_reduction"] = ref_metrics["flops"] / metrics["flops"]
    return metrics


def run_baselines(config, run, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run every baseline the config asks for that the run directory does not hold yet.

    Each result is written atomically once its run ends, under a lock, so a killed run is
    redone by the next call and a finished one never twice.
    """
    from .runs import CacheEntry, read_json, write_json

    spec = config.baselines
    if spec is None:
        return []
    pending = [(m, t) for m in spec.methods for t in spec.targets]
    # First pass: skip runs another worker holds, so that several workers share the runs;
    # second pass: wait for those, so that every result exists when this returns.
    for blocking in (False, True):
        for method, target in pending:
            folder = run.baseline_dir(method, target)
            result_path = folder / "metrics.json"
            with CacheEntry(folder).lock(blocking=blocking) as held:
                if held and not result_path.is_file():
                    metrics = _baseline_run(config, run, method, target, progress)
                    write_json(result_path, metrics)
                    print(f"baseline {method} {target:g}x: accuracy "
                          f"{metrics.get('accuracy', float('nan')):.4f}, "
                          f"{metrics.get('flops_reduction', float('nan')):.2f}x fewer FLOPs",
                          file=sys.stderr, flush=True)
    return [read_json(run.baseline_dir(m, t) / "metrics.json") for m, t in pending]


def run_baselines_for_run(run_dir, *, progress: bool = True) -> list[dict[str, Any]]:
    """``ranksearch baselines RUN_DIR``: run or complete the baselines of an existing run."""
    from . import config as cfg
    from .runs import RunDir

    run = RunDir(run_dir).require_existing()
    config = cfg.load(run.config_path)
    if config.baselines is None:
        raise cfg.ConfigError(f"{run.config_path}: no 'baselines' section; add one, e.g. "
                              "baselines: {methods: [l1, fpgm, slimming], targets: [2, 4]}")
    return run_baselines(config, run, progress=progress)

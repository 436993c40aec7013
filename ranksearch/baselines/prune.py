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
  remove the channels physically, layer shapes included. The ranking is global (one
  threshold over all groups, so FLOPs can be lowered by about one channel's cost at a time,
  and network slimming is global by definition) and progressive: channels are removed in
  several steps, the scores re-estimated after each.

How the FLOPs target is met: the steps aim at FLOPs that fall geometrically from the model's to
the target, each step's channel count predicted from the FLOPs measured so far. The last step
(or any step whose prediction would pass the target) is a search over the number ``n`` of
channels it removes: removing the ``n`` lowest-ranked channels of one ranking gives nested
models whose FLOPs fall with ``n``, so the search brackets the target between ``n`` and
``n + 1`` channels and keeps whichever of the two models is closer to it, on either side.
The result is therefore within half of one channel's cost of the target *whatever the
ranking*: which channel sits at the boundary (and near-ties between scores are decided by the
CPU's floating-point kernels) no longer decides whether the target is overshot.

Network slimming proper first trains with an L1 penalty on the batch-norm scales
(:mod:`ranksearch.baselines.slimming`); :func:`prune_to_flops` only prunes, by the scales the
given model has. Taylor importance is not offered: it needs a loss and gradients
on data at every step, which a data-free pruning step does not have.
"""

from __future__ import annotations

import copy
import logging
import math
import typing
from collections.abc import Callable, Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..measure import flops
from ..schema import PruningMethod

__all__ = ["METHODS", "TOLERANCE", "prune_to_flops"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = typing.get_args(PruningMethod)

#: The relative distance from the FLOPs target within which :func:`prune_to_flops` lands,
#: above or below it, unless one channel at the boundary costs more than twice as much.
TOLERANCE = 0.05

# The fraction of all channels pruning may remove; beyond it the network has hardly any left.
_MAX_RATIO = 0.98

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


def _ignored_names(model: nn.Module, ignored: Iterable[str | nn.Module]) -> list[str]:
    """Qualified names of the caller's ignored layers, given as modules or names."""
    names = {module: name for name, module in model.named_modules()}
    resolved = []
    for item in ignored:
        if isinstance(item, nn.Module):
            if item not in names:
                raise ValueError(f"ignored layer {type(item).__name__} is not part of the model")
            item = names[item]
        try:
            model.get_submodule(item)
        except AttributeError:
            raise ValueError(f"ignored layer {item!r} is not a module of the model") from None
        resolved.append(item)
    return resolved


class _Candidate(typing.NamedTuple):
    model: nn.Module
    flops: int


# Builds the global BasePruner of prune_to_flops over a network (tracing its graph).
PrunerFactory = Callable[[nn.Module], tp.pruner.BasePruner]


class _Ranking:
    """One ranking of the prunable channels of ``start``: :meth:`remove` gives the copy of
    ``start`` without its ``n`` lowest-ranked channels, measured.

    Each call scores the channels afresh on a fresh copy with the random generator reset to
    the same seed, so every ``n`` sees the same ranking: the models are nested and their FLOPs
    fall with ``n``. ``channels`` is the number of prunable channels of ``start``: an
    estimate until the first call counts them.
    """

    def __init__(self, start: _Candidate, make_pruner: PrunerFactory, seed: int,
                 input_shape: Sequence[int], channels: int) -> None:
        self.start = start
        self.channels = channels
        self._make_pruner = make_pruner
        self._seed = seed
        self._shape = input_shape
        self._measured: dict[int, _Candidate] = {0: start}

    def remove(self, n: int) -> _Candidate:
        if n not in self._measured:
            model = copy.deepcopy(self.start.model)
            pruner = self._make_pruner(model)
            self.channels = pruner.initial_total_channels
            # Torch-Pruning keeps int(channels * (1 - ratio)): half a channel below
            # n / channels rounds to exactly n removed whatever the float error. At least
            # one channel stays (an estimated count may have been high).
            removed = min(n, self.channels - 1)
            pruner.per_step_pruning_ratio = [0.0, (removed - 0.5) / self.channels]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed)
                pruner.step()
            self._measured[n] = _Candidate(model, flops(model, self._shape))
        return self._measured[n]

    def predict(self, removed: int, target: float, alpha: float) -> int:
        """Channels to remove in all to reach ``target`` FLOPs, from those measured with
        ``removed`` channels removed (FLOPs ∝ kept fraction ** alpha)."""
        now = self.remove(removed).flops
        kept = (self.channels - removed) * (target / now) ** (1 / alpha)
        return max(math.ceil(self.channels - kept), removed + 1)

    def closest(self, target: float, guess: int, limit: int) -> tuple[_Candidate, bool]:
        """The model closest to ``target`` FLOPs (in ratio, either side) of the two that
        remove ``n`` and ``n + 1`` channels and bracket the target, and True; or, when even
        ``limit`` channels do not reach the target, the model without them and False."""
        low, high = 0, None  # the FLOPs are above the target at `low`, at most it at `high`
        n = min(max(guess, 1), limit)
        while high is None or high - low > 1:
            if self.remove(n).flops > target:
                low = n
            else:
                high = n
            if high is None:
                if low >= limit:
                    return self.remove(limit), False
                alpha = _alpha(self.channels, low, self.start.flops, self.remove(low).flops)
                n = min(self.predict(low, target, alpha), limit)
            elif high - low > 1:
                n = self._interpolate(low, high, target)
        above, below = self.remove(low), self.remove(high)
        if math.log(above.flops / target) < math.log(target / below.flops):
            return above, True
        return below, True

    def _interpolate(self, low: int, high: int, target: float) -> int:
        """The next ``n`` strictly inside (low, high): where the log FLOPs, nearly linear in
        ``n`` over a short range, cross the target; the midpoint when that would barely
        shrink the bracket."""
        f_low, f_high = math.log(self.remove(low).flops), math.log(self.remove(high).flops)
        n = (low + high) // 2
        if f_low > f_high:
            n = round(low + (high - low) * (f_low - math.log(target)) / (f_low - f_high))
        if min(n - low, high - n) < (high - low) // 8:
            n = (low + high) // 2
        return min(max(n, low + 1), high - 1)


def _alpha(channels: int, removed: int, before: float, after: float) -> float:
    """The exponent of FLOPs ∝ (kept channel fraction)^alpha that removing ``removed`` of
    ``channels`` showed, or the initial guess when it showed nothing."""
    if not 0 < removed < channels or after >= before:
        return _INITIAL_ALPHA
    return max(math.log(before / after) / -math.log1p(-removed / channels), 0.5)


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
    """Filter-prune a copy of ``model`` until its FLOPs are reduced about ``reduction``-fold.

    Channels are removed with Torch-Pruning, globally ranked by the importance criterion
    ``method`` (see the module docstring), over ``steps`` steps with the scores re-estimated
    before each; the last step removes the number of channels that brings
    ``ranksearch.measure.flops(pruned, input_shape)`` closest to ``flops(model) / reduction``
    (see the module docstring). The achieved reduction is then within :data:`TOLERANCE` of
    ``reduction``, above or below, unless one channel at the boundary costs more than twice
    that (at high reductions of small networks, where a residual channel of a narrow stage is
    expensive) or too few channels are left to reach the target: either case returns the
    closest model found and logs a warning. Residual couplings are respected through
    Torch-Pruning's ``DependencyGraph``; the output layer (the last ``Linear``/``Conv2d`` run)
    keeps its output channels, so the output shape is unchanged.

    Args:
        model: the network to prune; it is deep-copied and left untouched.
        input_shape: one input's shape (C, H, W), for FLOPs and graph tracing.
        method: ``l1``, ``fpgm``, ``slimming`` or ``random``.
        reduction: the FLOPs reduction asked, original FLOPs / pruned FLOPs; > 1.
        steps: number of progressive steps (more steps re-rank the channels more often).
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
        RuntimeError: no channel can be removed at all (e.g. the criterion cannot tell the
            channels apart).
    """
    importance = _importance(method)
    if not 1 < reduction < math.inf:
        raise ValueError(f"reduction must be greater than 1 and finite, got {reduction}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    ignored = _ignored_names(model, ignored_layers or ())

    start = copy.deepcopy(model)
    # Tracing the graph runs the model: in training mode batch norm would update its running
    # statistics from the example input and change the function being pruned.
    start.eval()
    base = flops(start, input_shape)
    target = base / reduction
    if example_inputs is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            example_inputs = _default_input(start, input_shape)
    output = _output_layer(start, example_inputs)
    ignored.append(next(name for name, module in start.named_modules() if module is output))

    def make_pruner(network: nn.Module) -> tp.pruner.BasePruner:
        # One step; its pruning ratio is set once the pruner has counted the channels.
        return tp.pruner.BasePruner(
            network, example_inputs, importance=importance, global_pruning=True,
            pruning_ratio=0.0, ignored_layers=[network.get_submodule(n) for n in ignored])

    current, alpha, reached = _Candidate(start, base), _INITIAL_ALPHA, True
    initial = channels = make_pruner(copy.deepcopy(start)).initial_total_channels
    for step in range(1, steps + 1):
        ranking = _Ranking(current, make_pruner, seed + step, input_shape, channels)
        # The channels this step may remove: up to _MAX_RATIO of the model's in all.
        limit = math.floor(_MAX_RATIO * initial) - (initial - channels)
        # The steps aim at FLOPs falling geometrically from the model's to the target.
        aim = base * (target / base) ** (step / steps)
        guess = ranking.predict(0, aim, alpha)
        if step < steps and limit >= 1:
            candidate = ranking.remove(min(guess, limit))
            if candidate.flops > target:
                alpha = _alpha(ranking.channels, min(guess, limit), current.flops,
                               candidate.flops)
                current, channels = candidate, ranking.channels - min(guess, limit)
                continue
        if limit < 1:
            reached = False
            break
        current, reached = ranking.closest(target, guess, limit)
        break
    pruned = current.model
    modes = {name: module.training for name, module in model.named_modules()}
    for name, module in pruned.named_modules():  # each module's, not one flag for all
        module.training = modes.get(name, model.training)
    achieved = base / current.flops
    if current.flops == base:
        raise RuntimeError(
            f"cannot reduce FLOPs {reduction:g}x with {method}: no channel could be removed; "
            "the importance scores may not tell the channels apart (e.g. the equal "
            "batch-norm scales of an untrained model)")
    if not reached:
        logger.warning("%s pruning cannot reach %.3gx fewer FLOPs: too few channels left; "
                       "returning the closest model, %.3gx", method, reduction, achieved)
    elif abs(math.log(achieved / reduction)) > math.log1p(TOLERANCE):
        logger.warning("%s pruning: %.3gx fewer FLOPs for %.3gx asked, the closest a "
                       "channel more or less gives (one channel costs more than the "
                       "tolerance there)", method, achieved, reduction)
    logger.info("%s pruning: FLOPs %d -> %d (%.3gx, target %.3gx)", method, base,
                current.flops, achieved, reduction)
    return pruned

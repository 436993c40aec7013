"""Compaction: replace SVD layers by plain ``torch.nn`` layers of the kept rank.

A pruned SVD layer of kept rank k becomes ``nn.Sequential(first, second)``, the two thin
layers of :meth:`SVDLayer.factor_weights` with the pruned singular directions physically
removed and ``s`` folded into the factor built from ``U``:

* ``Linear`` n × m: ``Linear(m, k)`` (``Vᵀ``) then ``Linear(k, n)`` (``U · diag(s)``, bias);
* channel ``Conv2d``: ``Conv2d(c, k, (kh, kw))`` with the original stride, padding and
  dilation, then ``Conv2d(k, n, 1)`` with the bias;
* spatial ``Conv2d``: ``Conv2d(c, k, (kh, 1))`` with the vertical stride, padding and
  dilation, then ``Conv2d(k, n, (1, kw))`` with the horizontal ones and the bias;
* pointwise-first ``Conv2d``: ``Conv2d(c, k, 1)``, then ``Conv2d(k, n, (kh, kw))`` with the
  original stride, padding and dilation and the bias.

Where the pair saves nothing it is multiplied back into one dense layer. The rule
(``merge="flops"``) compares multiply-accumulates per output position, which do not depend on
the input size: the pair is kept when

* ``Linear``: k · (m + n) < n · m;
* channel: k · (c·kh·kw + n) < n · c·kh·kw;
* spatial: k · (c·kh·sw + n·kw) < n · c·kh·kw (the vertical conv runs at every input column,
  sw per output position);
* pointwise-first: k · (c·sh·sw + n·kh·kw) < n · c·kh·kw (the 1×1 conv runs at every input
  position).

That is the FLOPs ratio exactly where the input's height and width are multiples of the
stride (sh, sw) under the usual padding (k // 2), and to within the border rows otherwise.
Given an example input, the rule compares instead the FLOPs of the pair and of the dense
layer at the input each layer receives (:meth:`SVDLayer.factored_flops`,
:meth:`SVDLayer.layer_flops`), exact for any padding and size: a 5 × 5 spatial pair without
padding on a 12 × 12 input runs its vertical conv at 8 × 12 positions for 8 × 8 outputs.

``merge="latency"`` instead times the pair against the dense layer on the CPU at the input
each layer receives.

By default the result is the fast structure, not merely the smallest: kept ranks are rounded
up to hardware-friendly multiples and 4-D weights are channels_last. CPU (AVX-512) and GPU
convolution kernels work on blocks of 8 or 16 channels, so a rank of 13 costs what 16 costs;
:func:`rank_multiple_for` rounds to 16 in wide layers (full rank of at least 128, where a
block of 16 is a small share) and to 8 in narrow ones, where 16 would often be the full rank
and forbid any saving (benchmarks/compact_latency.py: resnet18 runs 3.2x fewer FLOPs at
0.85 of the ideal speedup with 16 against 0.78 with 8, batch 8). The extra directions are
pruned ones with singular value zero, so rounding does not change the function. An explicit
``rank_multiple`` (1: exact ranks) and ``channels_last=False`` turn these off.

:func:`build_compact` rebuilds the same structure from the original dense model, so that a
compact model's ``state_dict`` can be saved and loaded (``strict=True``) without pickling
modules. Batch norms are folded for inference by :func:`ranksearch.svd.for_inference`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from .conv import SVDConv2d, _pair, factored_geometry, thin_kernel_sizes
from .decompose import replace_module, svd_layers
from .inference import eval_mode, to_channels_last
from .layers import DenseConv2d, DenseLinear, Scheme, SVDLayer, SVDLinear
from .prune import ranked_indices

__all__ = [
    "RANK_MULTIPLE", "WIDE_RANK_MULTIPLE", "compact", "compaction_plan", "build_compact",
    "rank_multiple_for", "saves_flops", "pass_seconds", "fastest_seconds",
]

#: Default rounding of kept ranks in narrow layers, and in wide ones (full rank >= WIDE_RANK).
RANK_MULTIPLE = 8
WIDE_RANK_MULTIPLE = 16
WIDE_RANK = 128


def rank_multiple_for(layer: SVDLayer) -> int:
    """The default rounding of ``layer``'s kept rank (see the module docstring)."""
    return WIDE_RANK_MULTIPLE if layer.full_rank >= WIDE_RANK else RANK_MULTIPLE

Merge = Literal["flops", "latency"]
Plan = dict[str, int | None]


def saves_flops(layer: nn.Module, scheme: Scheme, rank: int) -> bool:
    """Whether the pair of rank ``rank`` is cheaper than the dense layer (the module
    docstring's rule). ``layer`` is an ``nn.Linear``/``nn.Conv2d`` or an SVD layer; ``scheme``
    is ignored for linear layers."""
    if isinstance(layer, (nn.Linear, SVDLinear)):
        n, m = layer.out_features, layer.in_features
        return rank * (m + n) < n * m
    n, c, (kh, kw) = layer.out_channels, layer.in_channels, layer.kernel_size
    first, second = thin_kernel_sizes(scheme, layer.kernel_size)
    first_geometry, _ = factored_geometry(scheme, layer.stride, layer.padding, layer.dilation)
    # Positions of the first conv per output position: where it strides less than the layer.
    first_runs = math.prod(layer.stride) // math.prod(_pair(first_geometry["stride"]))
    return rank * (c * math.prod(first) * first_runs + n * math.prod(second)) < n * c * kh * kw


def compaction_plan(
    model: nn.Module,
    merge: Merge = "flops",
    rank_multiple: int | None = None,
    example_input: torch.Tensor | None = None,
    repeats: int = 20,
) -> Plan:
    """The rank each SVD layer keeps in :func:`compact`, or ``None`` where it is merged back.

    Args:
        model: A model with (pruned) SVD layers; not modified.
        merge: ``"flops"`` keeps a pair where it costs fewer FLOPs than the dense layer,
            on the input the layer receives when ``model`` runs ``example_input``, or by
            :func:`saves_flops` without one; ``"latency"`` keeps it where it runs faster
            than the dense layer, both timed on the CPU (best of ``repeats`` runs) on that
            input. Give that input the batch size and memory format of the intended
            deployment.
        rank_multiple: Round each kept rank up to a multiple of this (capped at the full
            rank) before deciding; None: :func:`rank_multiple_for` each layer.
        example_input: Required with ``merge="latency"``; makes ``"flops"`` exact.
        repeats: Timing repetitions per layer and variant with ``merge="latency"``.

    Returns:
        ``{layer name: rank or None}`` for every SVD layer, in module order.
    """
    if merge not in ("flops", "latency"):
        raise ValueError(f"merge must be 'flops' or 'latency', got {merge!r}")
    if rank_multiple is not None and rank_multiple < 1:
        raise ValueError(f"rank_multiple must be at least 1, got {rank_multiple}")
    layers = svd_layers(model)
    ranks = {}
    for name, layer in layers.items():
        multiple = rank_multiple or rank_multiple_for(layer)
        ranks[name] = min(layer.full_rank, math.ceil(layer.rank / multiple) * multiple)
    if merge == "latency" and example_input is None:
        raise ValueError("merge='latency' needs an example_input")
    inputs = {} if example_input is None else _layer_inputs(model, example_input, layers)
    plan: Plan = {}
    for name, layer in layers.items():
        if name not in inputs:  # no input given, or not reached by it: the size-free rule
            plan[name] = ranks[name] if saves_flops(layer, _scheme(layer), ranks[name]) else None
            continue
        if merge == "flops":
            shape = inputs[name].shape
            cheaper = layer.factored_flops(shape, ranks[name]) < layer.layer_flops(shape)
            plan[name] = ranks[name] if cheaper else None
            continue
        pair = _compact_layer(layer, ranks[name]).cpu()
        dense = _compact_layer(layer, None).cpu()
        x = inputs[name].cpu()
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last):
            pair.to(memory_format=torch.channels_last)
            dense.to(memory_format=torch.channels_last)
        pair_seconds, dense_seconds = fastest_seconds((pair, dense), x, repeats)
        plan[name] = ranks[name] if pair_seconds < dense_seconds else None
    return plan


def compact(
    model: nn.Module,
    plan: Mapping[str, int | None] | None = None,
    merge: Merge = "flops",
    rank_multiple: int | None = None,
    example_input: torch.Tensor | None = None,
    channels_last: bool = True,
) -> nn.Module:
    """A deep copy of ``model`` in which every SVD layer is replaced by plain layers.

    Each SVD layer becomes the pair of its planned rank, or one dense ``nn.Conv2d`` /
    ``nn.Linear`` where the plan says ``None``; layers that :func:`decompose` kept dense
    become plain ``nn.Conv2d`` / ``nn.Linear`` again. The result computes what ``model``
    computes with its current masks (up to rounding) and holds only ``torch.nn`` layers.

    Args:
        model: A model with (pruned) SVD layers; not modified.
        plan: ``{layer name: rank or None}`` for every SVD layer, e.g. a stored
            :func:`compaction_plan`; a planned rank must be at least the kept rank (the
            extra directions get singular value zero). Computed with ``merge``,
            ``rank_multiple`` and ``example_input`` when not given.
        merge, rank_multiple, example_input: As in :func:`compaction_plan`.
        channels_last: Put 4-D weights in channels_last.
    """
    layers = svd_layers(model)
    if plan is None:
        plan = compaction_plan(model, merge, rank_multiple, example_input)
    if set(plan) != set(layers):
        difference = sorted(set(plan) ^ set(layers))
        raise ValueError(f"the plan and the model's SVD layers differ: {difference}")
    result = copy.deepcopy(model)
    for name, layer in svd_layers(result).items():
        rank = plan[name]
        if rank is not None and not layer.rank <= rank <= layer.full_rank:
            raise ValueError(f"planned rank {rank} for {name!r} is outside "
                             f"[{layer.rank}, {layer.full_rank}] (kept rank, full rank)")
        if not name:  # the model is itself an SVD layer
            result = _compact_layer(layer, rank)
            break
        replace_module(result, layer, _compact_layer(layer, rank).train(layer.training))
    _unmark_dense(result)
    return to_channels_last(result) if channels_last else result


def build_compact(
    dense_model: nn.Module, plan: Mapping[str, int | None], scheme: Scheme = "channel",
    channels_last: bool = True,
) -> nn.Module:
    """The structure :func:`compact` produces, built from the original dense model.

    ``dense_model`` is the model before :func:`decompose` (any weights), ``plan`` the
    compact model's :func:`compaction_plan` and ``scheme`` its decomposition scheme. The
    result has fresh weights and the same ``state_dict`` keys and shapes as the compact
    model, so that a saved compact ``state_dict`` loads into it with ``strict=True``.
    """
    result = copy.deepcopy(dense_model)
    for name, rank in plan.items():
        layer = result.get_submodule(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"{name!r} is a {type(layer).__name__}, not a Conv2d or Linear")
        if rank is not None:
            replace_module(result, layer, _empty_pair(layer, scheme, rank).train(layer.training))
    _unmark_dense(result)
    return to_channels_last(result) if channels_last else result


# -- helpers ---------------------------------------------------------------------------------


def _scheme(layer: SVDLayer) -> Scheme:
    return layer.scheme if isinstance(layer, SVDConv2d) else "channel"


def _empty_pair(layer: nn.Module, scheme: Scheme, rank: int) -> nn.Sequential:
    """The two thin plain layers replacing ``layer`` (dense or SVD) at ``rank``, default
    initialised on the layer's device and dtype."""
    reference = layer.U if isinstance(layer, SVDLayer) else layer.weight
    factory = {"device": reference.device, "dtype": reference.dtype}
    has_bias = layer.bias is not None
    if isinstance(layer, (nn.Linear, SVDLinear)):
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False, **factory),
                             nn.Linear(rank, layer.out_features, bias=has_bias, **factory))
    first_geometry, second_geometry = factored_geometry(
        scheme, tuple(layer.stride), layer.padding, tuple(layer.dilation))
    first_kernel, second_kernel = thin_kernel_sizes(scheme, tuple(layer.kernel_size))
    return nn.Sequential(
        nn.Conv2d(layer.in_channels, rank, first_kernel, bias=False, **first_geometry,
                  **factory),
        nn.Conv2d(rank, layer.out_channels, second_kernel, bias=has_bias, **second_geometry,
                  **factory),
    )


@torch.no_grad()
def _compact_layer(layer: SVDLayer, rank: int | None) -> nn.Module:
    """The plain replacement of ``layer``: the pair of ``rank`` directions (kept ones by
    decreasing ``|s|``, then pruned ones with singular value zero), or the dense layer."""
    if rank is None:
        if isinstance(layer, SVDLinear):
            dense: nn.Module = nn.Linear(layer.in_features, layer.out_features,
                                         bias=layer.bias is not None, device=layer.U.device,
                                         dtype=layer.U.dtype)
        else:
            dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              layer.stride, layer.padding, layer.dilation,
                              bias=layer.bias is not None, device=layer.U.device,
                              dtype=layer.U.dtype)
        dense.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
        return dense
    pair = _empty_pair(layer, _scheme(layer), rank)
    first, second = layer.factor_weights(ranked_indices(layer)[:rank])
    pair[0].weight.copy_(first)
    pair[1].weight.copy_(second)
    if layer.bias is not None:
        pair[1].bias.copy_(layer.bias)
    return pair


def _unmark_dense(model: nn.Module) -> None:
    """Turn :class:`DenseConv2d` / :class:`DenseLinear` back into the plain classes."""
    for module in model.modules():
        if isinstance(module, (DenseConv2d, DenseLinear)):
            module.__class__ = nn.Conv2d if isinstance(module, DenseConv2d) else nn.Linear
            module.__dict__.pop("dense_reason", None)


@torch.no_grad()
def _layer_inputs(
    model: nn.Module, example_input: torch.Tensor, layers: Mapping[str, SVDLayer]
) -> dict[str, torch.Tensor]:
    """The input each layer receives when ``model`` runs ``example_input`` in eval mode."""
    inputs: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            inputs.setdefault(name, args[0].detach())
        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    try:
        with eval_mode(model):
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def pass_seconds(
    modules: Sequence[nn.Module], x: torch.Tensor, repeats: int, warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Seconds of each of ``repeats`` passes of each module on ``x``, after ``warmup`` untimed
    ones each (first calls allocate and pick kernels); the modules alternate pass by pass so
    that load from other processes affects them alike."""
    seconds: list[list[float]] = [[] for _ in modules]
    with torch.inference_mode():
        for module in modules:
            for _ in range(warmup):
                module(x)
        for _ in range(repeats):
            for times, module in zip(seconds, modules, strict=True):
                start = clock()
                module(x)
                times.append(clock() - start)
    return seconds


def fastest_seconds(
    modules: Sequence[nn.Module], x: torch.Tensor, repeats: int, warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Seconds of the fastest of ``repeats`` passes of each module (:func:`pass_seconds`):
    load only ever adds time, so the fastest pass is the least disturbed one."""
    return [min(times) for times in pass_seconds(modules, x, repeats, warmup, clock)]

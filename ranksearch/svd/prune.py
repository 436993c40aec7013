"""Pruning singular values: by energy threshold, or to given ranks.

Pruning only writes the layers' ``mask`` buffers (in place); ``s`` keeps its values, and the
forward pass, the regularisers and compaction all use ``s * mask``, so a pruned singular
value is exactly zero from then on whatever an optimiser does to ``s``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .decompose import per_layer, svd_layers
from .layers import SVDLayer

__all__ = ["prune_by_energy", "ranks_at_energy", "set_ranks", "unprune"]


@torch.no_grad()
def prune_by_energy(
    model: nn.Module, threshold: float | Mapping[str, float]
) -> dict[str, int]:
    """Prune each SVD layer's singular values by energy.

    For a layer with threshold e, the currently kept values' squares are sorted in
    descending order and the shortest prefix whose sum is at least ``(1 − e)`` of their
    total is kept; the rest are masked. e = 0 keeps every currently kept value, and at least
    one value is always kept. Sums that reach the target up to floating-point rounding (a
    relative 8 ε of the layer's dtype) count as reaching it, so that a threshold set exactly
    at a boundary behaves as in exact arithmetic.

    Args:
        model: A model with SVD layers; modified in place.
        threshold: e in [0, 1]: one float for every layer, or a dict whose keys are layer
            names or dotted prefixes (``"layer2"`` covers ``"layer2.0.conv1"``); the
            longest matching key wins and unmatched layers keep everything (e = 0).

    Returns:
        The kept rank of every SVD layer by name.
    """
    layers = svd_layers(model)
    thresholds = per_layer(layers, threshold, 0.0)
    ranks = {}
    for name, layer in layers.items():
        e = thresholds[name]
        _check_threshold(e, repr(name))
        if e > 0.0:
            _keep(layer, _energy_prefix(layer, e))
        ranks[name] = layer.rank
    return ranks


@torch.no_grad()
def unprune(model: nn.Module) -> None:
    """Keep every singular value of every SVD layer again (their ``s`` was never changed),
    so that the next :func:`prune_by_energy` starts from the full spectrum."""
    for layer in svd_layers(model).values():
        layer.mask.fill_(1.0)


@torch.no_grad()
def ranks_at_energy(model: nn.Module, threshold: float) -> dict[str, int]:
    """The rank :func:`prune_by_energy` would keep in each SVD layer at ``threshold``,
    without pruning anything: how concentrated each spectrum is (the rank at e = 0.01 falls
    as SVD training's sparsity term does its work)."""
    _check_threshold(threshold, "every layer")
    return {name: int(_energy_prefix(layer, threshold).numel()) if threshold > 0 else layer.rank
            for name, layer in svd_layers(model).items()}


def _check_threshold(e: float, layers: str) -> None:
    if not 0.0 <= e <= 1.0:  # NaN fails too
        raise ValueError(f"energy threshold for {layers} must be in [0, 1], got {e}")


def _energy_prefix(layer: SVDLayer, e: float) -> torch.Tensor:
    """Indices of the shortest prefix of the kept values, by decreasing ``s²``, holding at
    least ``1 − e`` of their energy (at least one)."""
    kept = layer.kept_indices()
    energy = layer.s.detach()[kept].double().square()
    order = torch.argsort(energy, descending=True, stable=True)
    cumulative = torch.cumsum(energy[order], 0)
    total = cumulative[-1]
    slack = 8 * torch.finfo(layer.s.dtype).eps * total
    reached = cumulative >= (1.0 - e) * total - slack
    count = max(1, int(torch.argmax(reached.to(torch.int8))) + 1)
    return kept[order[:count]]


@torch.no_grad()
def set_ranks(model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Keep the ``k`` singular values of largest magnitude in each named SVD layer.

    Used to reproduce an exported trial exactly. Values are ranked by ``|s|`` with the
    currently kept ones first, so ``k`` up to the current rank chooses among the kept values
    (as :func:`prune_by_energy` would); a larger ``k`` brings back previously pruned values
    with their stored ``s``. Layers not named are left as they are.

    Raises:
        ValueError: An unknown layer name, or ``k`` outside ``[1, full rank]``.
    """
    layers = svd_layers(model)
    for name, k in ranks.items():
        if name not in layers:
            raise ValueError(f"{name!r} is not an SVD layer of the model")
        layer = layers[name]
        if not 1 <= k <= layer.full_rank:
            raise ValueError(f"rank for {name!r} must be in [1, {layer.full_rank}], got {k}")
        _keep(layer, ranked_indices(layer)[:k])


def ranked_indices(layer: SVDLayer) -> torch.Tensor:
    """All singular-value indices: kept ones by descending ``|s|``, then pruned ones so."""
    magnitude = layer.s.detach().abs()
    by_magnitude = torch.argsort(magnitude, descending=True, stable=True)
    # A stable sort on "pruned" keeps the magnitude order within kept and within pruned.
    pruned = (layer.mask[by_magnitude] == 0).to(torch.int8)
    return by_magnitude[torch.argsort(pruned, stable=True)]


def _keep(layer: SVDLayer, indices: torch.Tensor) -> None:
    mask = torch.zeros_like(layer.mask)
    mask[indices] = 1.0
    # In place, so that the layer's cached kept indices see the change.
    layer.mask.copy_(mask)

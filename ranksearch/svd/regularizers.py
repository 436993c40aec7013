"""The SVD-training regularisers: orthogonality of the factors and sparsity of ``s``.

Both are vectorised over layers: layers whose factors have the same shape are stacked and
handled by one batched product, and all singular values are concatenated into one vector
with per-layer segment sums, so the cost is a few tensor operations per distinct shape
instead of several per layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from .decompose import per_layer, svd_layers
from .layers import SVDLayer

__all__ = ["SPARSITY_KINDS", "orthogonality_loss", "sparsity_loss"]

SparsityKind = Literal["l1", "hoyer", "hoyer_square", "none"]
SPARSITY_KINDS: tuple[str, ...] = ("l1", "hoyer", "hoyer_square", "none")

EPS = 1e-12
"""Added to the squared 2-norm in the Hoyer denominators: keeps them finite (and
differentiable) when all singular values of a layer are zero, and is negligible otherwise."""


def orthogonality_loss(model: nn.Module) -> torch.Tensor:
    """Σ over SVD layers of ``(‖UᵀU − I‖²_F + ‖VᵀV − I‖²_F) / r²``.

    Only the kept singular directions count: with ``m`` the layer's mask, the terms are
    ``‖(UᵀU − I) ⊙ m mᵀ‖²_F`` and r is the kept rank, exactly as if the pruned columns had
    been removed. Zero for a model without SVD layers.
    """
    layers = list(svd_layers(model).values())
    if not layers:
        return _zero(model)
    # Never in bf16, even under a caller's autocast: UᵀU would round its diagonal to about
    # 4e-3, the size of what this term measures.
    with torch.autocast(layers[0].U.device.type, enabled=False):
        return _orthogonality(layers)


def _orthogonality(layers: list[SVDLayer]) -> torch.Tensor:
    total = None
    for factor in ("U", "V"):
        groups: dict[tuple, list[SVDLayer]] = defaultdict(list)
        for layer in layers:
            tensor = getattr(layer, factor)
            groups[(tuple(tensor.shape), tensor.dtype, tensor.device)].append(layer)
        for group in groups.values():
            masks = torch.stack([layer.mask for layer in group])
            deviations = _MaskedOrthogonalityDeviation.apply(
                masks, *(getattr(layer, factor) for layer in group))
            # clamp: a layer whose mask was emptied by hand contributes 0, not NaN.
            group_loss = (deviations / masks.sum(1).clamp(min=1).square()).sum()
            total = group_loss if total is None else total + group_loss
    return total


class _MaskedOrthogonalityDeviation(torch.autograd.Function):
    """``‖(Fm)ᵀ(Fm) − diag(m)‖²_F`` for each of several same-shaped factors ``F`` (rows × r)
    with 0/1 column masks ``m``, which equals ``‖(FᵀF − I) ⊙ m mᵀ‖²_F``.

    Written out because autograd would spend three matrix products per factor (the product
    and the gradients of both of its operands) where two suffice: with ``M = Fm`` and
    ``D = MᵀM − diag(m)`` (symmetric), the gradient is ``4 M D``, whose pruned columns are
    already zero because those columns of ``D`` are.
    """

    @staticmethod
    def forward(ctx, masks: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
        masked = torch.stack(factors) * masks.unsqueeze(1)
        # Subtracting diag(m) from the masked Gram matrix gives the masked deviation from the
        # identity directly, without cancellation.
        deviation = masked.mT @ masked - torch.diag_embed(masks)
        ctx.save_for_backward(masked, deviation)
        return deviation.square().sum((1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        masked, deviation = ctx.saved_tensors
        with torch.autocast(masked.device.type, enabled=False):  # a backward under autocast
            grads = (masked @ deviation) * (4 * grad).view(-1, 1, 1)
        return (None, *grads.unbind(0))


def sparsity_loss(
    model: nn.Module,
    kind: SparsityKind,
    weights: float | Mapping[str, float] = 1.0,
) -> torch.Tensor:
    """Σ over SVD layers of ``λ_s(l) · L_s(s_l)`` on the effective singular values ``s * mask``.

    Args:
        model: A model with SVD layers.
        kind: ``"l1"`` = ‖s‖₁, ``"hoyer"`` = ‖s‖₁ / ‖s‖₂, ``"hoyer_square"`` = ‖s‖₁² / ‖s‖₂²,
            ``"none"`` = 0.
        weights: λ_s: one float for every layer, or a dict whose keys are layer names or
            dotted prefixes (``"layer2"`` covers ``"layer2.0.conv1"``); the longest matching
            key wins and layers no key matches weigh 0.

    Returns:
        A scalar tensor (zero for ``"none"`` or a model without SVD layers).
    """
    if kind not in SPARSITY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SPARSITY_KINDS)}, got {kind!r}")
    layers = svd_layers(model)
    if kind == "none" or not layers:
        return _zero(model)
    lambdas = per_layer(layers, weights, 0.0)
    first = next(iter(layers.values())).s
    sizes = [layer.full_rank for layer in layers.values()]
    values = (torch.cat([layer.s for layer in layers.values()])
              * torch.cat([layer.mask for layer in layers.values()]))
    segments = torch.repeat_interleave(torch.arange(len(sizes), device=first.device),
                                       torch.tensor(sizes, device=first.device))
    l1 = values.new_zeros(len(sizes)).index_add(0, segments, values.abs())
    if kind == "l1":
        per_layer_loss = l1
    else:
        squared_l2 = values.new_zeros(len(sizes)).index_add(0, segments, values.square())
        if kind == "hoyer":
            per_layer_loss = l1 / (squared_l2 + EPS).sqrt()
        else:
            per_layer_loss = l1.square() / (squared_l2 + EPS)
    weight = torch.tensor(list(lambdas.values()), dtype=values.dtype, device=values.device)
    return (weight * per_layer_loss).sum()


def _zero(model: nn.Module) -> torch.Tensor:
    first = next(model.parameters(), None)
    if first is None:
        return torch.zeros(())
    return first.new_zeros(())

"""Layers whose weight is trained in SVD form, ``W = U · diag(s · mask) · Vᵀ``.

:class:`SVDLinear` and :class:`~ranksearch.svd.conv.SVDConv2d` hold the factors ``U``
(rows × r), ``s`` (r) and ``V`` (cols × r) as parameters, an optional ``bias``, and a 0/1
buffer ``mask`` (r) that removes pruned singular values: the effective singular values are
``s * mask``. No SVD is computed during training; the factors are trained directly.

Two ways of running the layer compute the same function:

* ``"dense"``: rebuild the dense weight from the factors (one small matrix product whose cost
  does not depend on the batch) and run the original layer once. This is what makes SVD
  training cost about as much as dense training: autograd carries the weight's gradient back
  to the factors through the same small product.
* ``"factored"``: run the two thin layers of the kept rank (see :meth:`factor_weights`).
  Cheaper than the dense layer once enough singular values are pruned.

``forward_mode="auto"`` (the default) picks ``"factored"`` only when it needs fewer FLOPs than
``"dense"`` for the input at hand, the weight rebuild included, so SVD training at full rank
runs dense and a heavily pruned layer runs factored.

:class:`DenseConv2d` and :class:`DenseLinear` mark the layers that
:func:`~ranksearch.svd.decompose` left dense; they are the plain layers with a reason in their
``repr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SCHEMES",
    "FORWARD_MODES",
    "SVDLayer",
    "SVDLinear",
    "DenseConv2d",
    "DenseLinear",
]

Scheme = Literal["channel", "spatial", "pointwise_first"]
ForwardMode = Literal["auto", "dense", "factored"]
Init = Literal["svd", "random"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
FORWARD_MODES: tuple[str, ...] = get_args(ForwardMode)
INITS: tuple[str, ...] = get_args(Init)


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


class SVDLayer(nn.Module):
    """Common part of :class:`SVDLinear` and :class:`SVDConv2d`: the factors and the mask.

    Subclasses define how the dense weight is arranged as the decomposed matrix
    (:meth:`matrix_from_weight`, :meth:`weight_from_matrix`), the two thin layers
    (:meth:`factor_weights`) and the forward passes.

    Change ``mask`` in place (``layer.mask.copy_(...)``, as :func:`prune_by_energy` and
    :func:`set_ranks` do) or assign a new tensor; the kept indices are cached against the
    tensor's version counter, which writes through ``mask.data`` bypass.
    """

    U: nn.Parameter
    s: nn.Parameter
    V: nn.Parameter
    bias: nn.Parameter | None
    mask: torch.Tensor

    def __init__(
        self,
        rows: int,
        cols: int,
        bias_features: int | None,
        forward_mode: ForwardMode,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        rank = min(rows, cols)
        self.U = nn.Parameter(torch.empty(rows, rank, **factory))
        self.s = nn.Parameter(torch.empty(rank, **factory))
        self.V = nn.Parameter(torch.empty(cols, rank, **factory))
        if bias_features is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(bias_features, **factory))
        self.register_buffer("mask", torch.ones(rank, **factory))
        self.forward_mode = forward_mode
        # (id of the mask tensor, its version counter, kept indices): the mask changes only by
        # pruning or loading, so the indices are recomputed only then, which avoids a
        # device synchronisation per forward pass on GPUs.
        self._kept_cache: tuple[int, int, torch.Tensor] | None = None

    # -- the decomposed matrix ------------------------------------------------------------

    def matrix_from_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Arrange a dense weight of this layer's shape as the decomposed matrix."""
        raise NotImplementedError

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`matrix_from_weight`."""
        raise NotImplementedError

    def factor_weights(
        self, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the two thin layers that run the singular directions ``indices``.

        ``indices`` (default: all) selects columns of ``U`` and ``V``; their singular values
        are the effective ``s * mask``, so a pruned index contributes nothing. The singular
        values are folded into the factor built from ``U``.
        """
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The dense weight ``U · diag(s · mask) · Vᵀ`` in the original layer's shape."""
        return self.weight_from_matrix((self.U * (self.s * self.mask)) @ self.V.mT)

    @property
    def full_rank(self) -> int:
        """Number of singular values before pruning: ``min(rows, cols)``."""
        return self.s.shape[0]

    @property
    def rank(self) -> int:
        """Number of kept (unmasked) singular values."""
        return int(self.kept_indices().numel())

    def singular_values(self) -> torch.Tensor:
        """The effective singular values ``s * mask`` (pruned ones are zero)."""
        return self.s * self.mask

    def kept_indices(self) -> torch.Tensor:
        """Indices of the kept singular values, in increasing order."""
        if self.mask.is_inference():  # inference tensors have no version counter
            return torch.nonzero(self.mask).flatten()
        key = (id(self.mask), self.mask._version)
        if self._kept_cache is None or self._kept_cache[:2] != key:
            self._kept_cache = (*key, torch.nonzero(self.mask).flatten())
        return self._kept_cache[2]

    @torch.no_grad()
    def init_from_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Set the factors to the exact SVD of ``weight`` (and copy ``bias``); keep all ranks.

        The SVD runs in at least single precision (``torch.linalg.svd`` has no half-precision
        kernels) and is cast back to the layer's dtype.
        """
        matrix = self.matrix_from_weight(weight.detach())
        matrix = matrix.to(torch.promote_types(matrix.dtype, torch.float32))
        if matrix.shape[0] < matrix.shape[1]:
            # LAPACK's divide-and-conquer SVD is several times faster on a tall matrix than
            # on a wide one (4× for 512 × 4608 with MKL), so decompose Mᵀ = V S Uᵀ.
            v, s, uh = torch.linalg.svd(matrix.mT, full_matrices=False)
            u = uh.mT
        else:
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            v = vh.mT
        self.U.copy_(u)
        self.s.copy_(s)
        self.V.copy_(v)
        self.mask.fill_(1.0)
        if self.bias is not None:
            if bias is None:
                self.bias.zero_()
            else:
                self.bias.copy_(bias.detach())

    # -- forward --------------------------------------------------------------------------

    def _factored_indices(self) -> torch.Tensor | None:
        """Kept indices, or ``None`` when every singular value is kept (no gather needed) or
        under ``torch.compile``, which cannot size a tensor by the mask's content: the full
        width with the pruned values zeroed is the same product."""
        if torch.compiler.is_compiling():
            return None
        kept = self.kept_indices()
        return None if kept.numel() == self.full_rank else kept

    def uses_factored(self, input_shape: Sequence[int]) -> bool:
        """Whether ``forward`` runs the factored pair for an input of ``input_shape``."""
        if self.forward_mode == "auto":
            # Under torch.compile the kept rank is data that no branch may depend on (a graph
            # break at every layer, and a failure once pruned): the exact dense rebuild.
            if torch.compiler.is_compiling():
                return False
            return self.factored_flops(input_shape) < self.dense_flops(input_shape)
        return self.forward_mode == "factored"

    def dense_flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs of the ``"dense"`` forward (weight rebuild included) for ``input_shape``."""
        return self.layer_flops(input_shape) + self._rebuild_flops()

    def layer_flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs of the plain dense layer (``nn.Linear`` / ``nn.Conv2d``) for
        ``input_shape``."""
        raise NotImplementedError

    def factored_flops(self, input_shape: Sequence[int], rank: int | None = None) -> int:
        """FLOPs of the ``"factored"`` forward, or of the compact pair, at ``rank`` (default:
        the kept rank) for ``input_shape``."""
        raise NotImplementedError

    def _rebuild_flops(self) -> int:
        rows, rank = self.U.shape
        return 2 * rows * rank * self.V.shape[0]

    def _svd_repr(self) -> str:
        return f"rank={self.rank}/{self.full_rank}, forward_mode={self.forward_mode}"

    def __setattr__(self, name: str, value: object) -> None:
        if name == "forward_mode":
            check_choice("forward_mode", value, FORWARD_MODES)  # type: ignore[arg-type]
        super().__setattr__(name, value)


class SVDLinear(SVDLayer):
    """A :class:`torch.nn.Linear` (``out_features`` n × ``in_features`` m) in SVD form.

    ``W = U · diag(s · mask) · Vᵀ`` with ``U`` n × r, ``V`` m × r, r = min(n, m). Factored,
    it runs as ``Linear(m → r)`` with weight ``Vᵀ`` then ``Linear(r → n)`` with weight
    ``U · diag(s)`` and the bias.

    The constructor initialises like a fresh ``nn.Linear`` (see :meth:`reset_parameters`);
    :meth:`from_dense` decomposes an existing layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        forward_mode: ForwardMode = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.in_features = in_features
        self.out_features = out_features
        super().__init__(out_features, in_features, out_features if bias else None,
                         forward_mode, device, dtype)
        self.reset_parameters()

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        init: Init = "svd",
        forward_mode: ForwardMode = "auto",
    ) -> SVDLinear:
        """Decompose ``linear``: ``init="svd"`` computes the same function, ``"random"``
        initialises like a fresh layer of the same shape."""
        check_choice("init", init, INITS)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    forward_mode, linear.weight.device, linear.weight.dtype)
        if init == "svd":
            layer.init_from_weight(linear.weight, linear.bias)
        return layer

    def reset_parameters(self) -> None:
        """Random init: the exact SVD of a freshly initialised ``nn.Linear`` of this shape,
        so ``U`` and ``V`` are orthonormal and ``s`` has the spectrum of the default
        (Kaiming-uniform) init."""
        fresh = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                          device=self.U.device, dtype=self.U.dtype)
        self.init_from_weight(fresh.weight, fresh.bias)

    def matrix_from_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix

    def factor_weights(
        self, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, v = select_factors(self, indices)
        return v.mT, u * s

    def layer_flops(self, input_shape: Sequence[int]) -> int:
        return 2 * math.prod(input_shape[:-1]) * self.out_features * self.in_features

    def factored_flops(self, input_shape: Sequence[int], rank: int | None = None) -> int:
        rank = self.rank if rank is None else rank
        return 2 * math.prod(input_shape[:-1]) * rank * (self.in_features + self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_factored(x.shape):
            first, second = self.factor_weights(self._factored_indices())
            return F.linear(F.linear(x, first), second, self.bias)
        return F.linear(x, self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._svd_repr()}")


def select_factors(
    layer: SVDLayer, indices: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U``, effective ``s`` and ``V`` restricted to ``indices`` (all when ``None``)."""
    s = layer.singular_values()
    if indices is None:
        return layer.U, s, layer.V
    return layer.U[:, indices], s[indices], layer.V[:, indices]


class _KeptDense:
    """What marks a layer that :func:`~ranksearch.svd.decompose` kept dense: it computes
    exactly what its plain class does, with the same parameters; only its ``repr`` differs,
    stating ``dense_reason``. :func:`~ranksearch.svd.compact` turns it back into the plain
    class."""

    dense_reason: str = ""

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kept dense: {self.dense_reason}"  # type: ignore[misc]


class DenseConv2d(_KeptDense, nn.Conv2d):
    """A :class:`torch.nn.Conv2d` that :func:`~ranksearch.svd.decompose` kept dense."""


class DenseLinear(_KeptDense, nn.Linear):
    """A :class:`torch.nn.Linear` that :func:`~ranksearch.svd.decompose` kept dense."""

"""Layers whose weight is trained in SVD form, ``W = U · diag(s · mask) · Vᵀ``.

:class:`SVDLinear` and :class:`SVDConv2d` hold the factors ``U`` (rows × r), ``s`` (r) and
``V`` (cols × r) as parameters, an optional ``bias``, and a 0/1 buffer ``mask`` (r) that
removes pruned singular values: the effective singular values are ``s * mask``. No SVD is
computed during training; the factors are trained directly.

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
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SCHEMES",
    "FORWARD_MODES",
    "SVDLayer",
    "SVDLinear",
    "SVDConv2d",
    "DenseConv2d",
    "DenseLinear",
    "factored_geometry",
]

Scheme = Literal["channel", "spatial"]
ForwardMode = Literal["auto", "dense", "factored"]
SCHEMES: tuple[str, ...] = ("channel", "spatial")
FORWARD_MODES: tuple[str, ...] = ("auto", "dense", "factored")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
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
        """Kept indices, or ``None`` when every singular value is kept (no gather needed)."""
        kept = self.kept_indices()
        return None if kept.numel() == self.full_rank else kept

    def uses_factored(self, input_shape: Sequence[int]) -> bool:
        """Whether ``forward`` runs the factored pair for an input of ``input_shape``."""
        if self.forward_mode == "auto":
            return self.factored_flops(input_shape) < self.dense_flops(input_shape)
        return self.forward_mode == "factored"

    def dense_flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs of the ``"dense"`` forward (weight rebuild included) for ``input_shape``."""
        raise NotImplementedError

    def factored_flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs of the ``"factored"`` forward at the kept rank for ``input_shape``."""
        raise NotImplementedError

    def _rebuild_flops(self) -> int:
        rows, rank = self.U.shape
        return 2 * rows * rank * self.V.shape[0]

    def _svd_repr(self) -> str:
        return f"rank={self.rank}/{self.full_rank}, forward_mode={self.forward_mode}"

    def __setattr__(self, name: str, value: object) -> None:
        if name == "forward_mode":
            _check_choice("forward_mode", value, FORWARD_MODES)  # type: ignore[arg-type]
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
        init: Literal["svd", "random"] = "svd",
        forward_mode: ForwardMode = "auto",
    ) -> SVDLinear:
        """Decompose ``linear``: ``init="svd"`` computes the same function, ``"random"``
        initialises like a fresh layer of the same shape."""
        _check_choice("init", init, ("svd", "random"))
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
        u, s, v = _select(self, indices)
        return v.mT, u * s

    def dense_flops(self, input_shape: Sequence[int]) -> int:
        rows = math.prod(input_shape[:-1])
        return 2 * rows * self.out_features * self.in_features + self._rebuild_flops()

    def factored_flops(self, input_shape: Sequence[int]) -> int:
        rows = math.prod(input_shape[:-1])
        return 2 * rows * self.rank * (self.in_features + self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_factored(x.shape):
            first, second = self.factor_weights(self._factored_indices())
            return F.linear(F.linear(x, first), second, self.bias)
        return F.linear(x, self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._svd_repr()}")


class SVDConv2d(SVDLayer):
    """A :class:`torch.nn.Conv2d` (n filters of c × kh × kw, ``groups=1``) in SVD form.

    ``scheme="channel"``: ``W.reshape(n, c·kh·kw) = U · diag(s · mask) · Vᵀ``, r =
    min(n, c·kh·kw). Factored: a conv with r filters of c × kh × kw (the original stride,
    padding and dilation), then a 1×1 conv r → n with the bias.

    ``scheme="spatial"``: ``W[n, c, i, j]`` arranged as rows (c, i) and columns (n, j),
    ``M = W.permute(1, 2, 0, 3).reshape(c·kh, n·kw) = U · diag(s · mask) · Vᵀ``, r =
    min(c·kh, n·kw). Factored: a conv with r filters of c × kh × 1 (the vertical stride,
    padding and dilation), then a conv with n filters of r × 1 × kw (the horizontal ones) and
    the bias.

    Padding may be an int, a (vertical, horizontal) tuple, ``"same"`` or ``"valid"``; only
    ``padding_mode="zeros"`` is supported. The constructor initialises like a fresh
    ``nn.Conv2d`` (see :meth:`reset_parameters`); :meth:`from_dense` decomposes an existing
    layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        scheme: Scheme = "channel",
        forward_mode: ForwardMode = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_choice("scheme", scheme, SCHEMES)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        if isinstance(padding, str):
            _check_choice("padding", padding, ("same", "valid"))
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = _pair(padding)
        self.scheme = scheme
        kh, kw = self.kernel_size
        if scheme == "channel":
            rows, cols = out_channels, in_channels * kh * kw
        else:
            rows, cols = in_channels * kh, out_channels * kw
        super().__init__(rows, cols, out_channels if bias else None, forward_mode, device, dtype)
        self.reset_parameters()

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        scheme: Scheme = "channel",
        init: Literal["svd", "random"] = "svd",
        forward_mode: ForwardMode = "auto",
    ) -> SVDConv2d:
        """Decompose ``conv`` (``groups=1``, ``padding_mode="zeros"``): ``init="svd"``
        computes the same function, ``"random"`` initialises like a fresh layer of the same
        shape."""
        _check_choice("init", init, ("svd", "random"))
        if conv.groups != 1:
            raise ValueError(f"grouped convolutions (groups={conv.groups}) stay dense")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported (only zeros)")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.bias is not None, scheme, forward_mode,
                    conv.weight.device, conv.weight.dtype)
        if init == "svd":
            layer.init_from_weight(conv.weight, conv.bias)
        return layer

    def reset_parameters(self) -> None:
        """Random init: the exact SVD of a freshly initialised ``nn.Conv2d`` of this shape,
        so ``U`` and ``V`` are orthonormal and ``s`` has the spectrum of the default
        (Kaiming-uniform) init."""
        fresh = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                          bias=self.bias is not None, device=self.U.device, dtype=self.U.dtype)
        self.init_from_weight(fresh.weight, fresh.bias)

    def matrix_from_weight(self, weight: torch.Tensor) -> torch.Tensor:
        n, c, kh, kw = weight.shape
        if self.scheme == "channel":
            return weight.reshape(n, c * kh * kw)
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        n, c, (kh, kw) = self.out_channels, self.in_channels, self.kernel_size
        if self.scheme == "channel":
            return matrix.reshape(n, c, kh, kw)
        # contiguous() so that the convolution gets a weight in its usual layout.
        return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()

    def factor_weights(
        self, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the two thin convs that run the singular directions ``indices``.

        Channel: ``Vᵀ`` as k filters of c × kh × kw, then ``U · diag(s)`` as n filters of
        k × 1 × 1. Spatial: ``(U · diag(s))ᵀ`` as k filters of c × kh × 1, then ``V`` as n
        filters of k × 1 × kw. Pruned indices get singular value zero.
        """
        u, s, v = _select(self, indices)
        k = s.shape[0]
        n, c, (kh, kw) = self.out_channels, self.in_channels, self.kernel_size
        if self.scheme == "channel":
            first, second = v.mT.reshape(k, c, kh, kw), (u * s).reshape(n, k, 1, 1)
        else:
            first = (u * s).mT.reshape(k, c, kh, 1)
            second = v.reshape(n, kw, k).permute(0, 2, 1).reshape(n, k, 1, kw)
        return _plain_strides(first), _plain_strides(second)

    def factored_geometry(self) -> tuple[dict[str, object], dict[str, object]]:
        """Keyword arguments of ``F.conv2d`` (stride, padding, dilation) for the two thin
        convs of :meth:`factor_weights`."""
        return factored_geometry(self.scheme, self.stride, self.padding, self.dilation)

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.padding == "same":
            return height, width
        padding = (0, 0) if self.padding == "valid" else self.padding
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((height, width), padding, self.dilation,
                                        self.kernel_size, self.stride, strict=True)
        )

    def dense_flops(self, input_shape: Sequence[int]) -> int:
        *batch, height, width = input_shape
        out_h, out_w = self._output_size(height, width)
        kh, kw = self.kernel_size
        positions = math.prod(batch[:-1]) * out_h * out_w
        return (2 * positions * self.out_channels * self.in_channels * kh * kw
                + self._rebuild_flops())

    def factored_flops(self, input_shape: Sequence[int]) -> int:
        *batch, height, width = input_shape
        out_h, out_w = self._output_size(height, width)
        images = math.prod(batch[:-1])
        n, c, (kh, kw), k = self.out_channels, self.in_channels, self.kernel_size, self.rank
        if self.scheme == "channel":
            return 2 * images * out_h * out_w * k * (c * kh * kw + n)
        # The vertical conv runs at every input column: only the second conv strides
        # horizontally.
        return 2 * images * out_h * (width * k * c * kh + out_w * n * k * kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_factored(x.shape):
            first, second = self.factor_weights(self._factored_indices())
            first_geometry, second_geometry = self.factored_geometry()
            hidden = F.conv2d(x, first, None, **first_geometry)
            return F.conv2d(hidden, second, self.bias, **second_geometry)
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding,
                        self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, {self._svd_repr()}")


def factored_geometry(
    scheme: str,
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
) -> tuple[dict[str, object], dict[str, object]]:
    """Stride, padding and dilation of the two thin convs that replace a conv.

    Channel: the first conv keeps the original geometry, the second is 1×1. Spatial: the
    first (kh × 1) conv takes the vertical components, the second (1 × kw) the horizontal
    ones. ``"same"``/``"valid"`` padding carries over to both convs unchanged, since it pads
    each dimension by what that dimension's kernel needs.
    """
    if scheme == "channel":
        return ({"stride": stride, "padding": padding, "dilation": dilation},
                {"stride": 1, "padding": 0, "dilation": 1})
    if isinstance(padding, str):
        vertical_padding: tuple[int, int] | str = padding
        horizontal_padding: tuple[int, int] | str = padding
    else:
        vertical_padding, horizontal_padding = (padding[0], 0), (0, padding[1])
    return ({"stride": (stride[0], 1), "padding": vertical_padding,
             "dilation": (dilation[0], 1)},
            {"stride": (1, stride[1]), "padding": horizontal_padding,
             "dilation": (1, dilation[1])})


def _plain_strides(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the row-major strides of its shape, copied only where it has others.

    oneDNN's CPU convolution backward (torch 2.14) corrupts the heap when a weight is a view
    whose size-1 dimensions carry other strides, e.g. a 1 x 1 kernel of shape (32, 5, 1, 1)
    with strides (5, 1, 5, 5): ``is_contiguous()`` is true, so ``contiguous()`` keeps it, and
    the process later aborts with ``free(): invalid next size``. The spatial scheme's thin
    convs of a 1 x 1 layer are such views (tests/test_svd.py reproduces the crash).
    """
    expected, step = [], 1
    for size in reversed(weight.shape):
        expected.append(step)
        step *= size
    if weight.stride() == tuple(reversed(expected)):
        return weight
    return weight.clone(memory_format=torch.contiguous_format)


def _select(
    layer: SVDLayer, indices: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U``, effective ``s`` and ``V`` restricted to ``indices`` (all when ``None``)."""
    s = layer.singular_values()
    if indices is None:
        return layer.U, s, layer.V
    return layer.U[:, indices], s[indices], layer.V[:, indices]


class DenseConv2d(nn.Conv2d):
    """A :class:`torch.nn.Conv2d` that :func:`~ranksearch.svd.decompose` kept dense.

    It computes exactly what ``nn.Conv2d`` does and has the same parameters; only its
    ``repr`` differs, stating ``dense_reason``. :func:`~ranksearch.svd.compact` turns it back
    into a plain ``nn.Conv2d``.
    """

    dense_reason: str = ""

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kept dense: {self.dense_reason}"


class DenseLinear(nn.Linear):
    """A :class:`torch.nn.Linear` that :func:`~ranksearch.svd.decompose` kept dense.

    It computes exactly what ``nn.Linear`` does and has the same parameters; only its
    ``repr`` differs, stating ``dense_reason``. :func:`~ranksearch.svd.compact` turns it back
    into a plain ``nn.Linear``.
    """

    dense_reason: str = ""

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kept dense: {self.dense_reason}"

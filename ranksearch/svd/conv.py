"""The convolution in SVD form, channel-wise, spatial-wise or pointwise-first, and the geometry
of its two thin convolutions (see :mod:`ranksearch.svd.layers` for what every SVD layer shares)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    INITS,
    SCHEMES,
    ForwardMode,
    Init,
    Scheme,
    SVDLayer,
    check_choice,
    select_factors,
)

__all__ = ["SVDConv2d", "factored_geometry", "thin_kernel_sizes", "conv_output_size"]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)



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

    ``scheme="pointwise_first"``: ``W[n, c, i, j]`` arranged as rows (n, i, j) and columns c,
    ``M = W.permute(0, 2, 3, 1).reshape(n·kh·kw, c) = U · diag(s · mask) · Vᵀ``, r =
    min(n·kh·kw, c). Factored: a 1×1 conv c → r, then a conv with n filters of r × kh × kw
    (the original stride, padding and dilation) and the bias. The channel scheme's thin
    conv has r *output* channels, which CPU and GPU kernels compute in blocks of 8 or 16 (a
    rank below the block costs what the block costs); here the kh × kw conv has all n
    outputs and shrinks with r in its inputs (benchmarks/conv_shapes.py).

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
        check_choice("scheme", scheme, SCHEMES)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        if isinstance(padding, str):
            check_choice("padding", padding, ("same", "valid"))
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = _pair(padding)
        self.scheme = scheme
        kh, kw = self.kernel_size
        if scheme == "channel":
            rows, cols = out_channels, in_channels * kh * kw
        elif scheme == "spatial":
            rows, cols = in_channels * kh, out_channels * kw
        else:
            rows, cols = out_channels * kh * kw, in_channels
        super().__init__(rows, cols, out_channels if bias else None, forward_mode, device, dtype)
        self.reset_parameters()

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        scheme: Scheme = "channel",
        init: Init = "svd",
        forward_mode: ForwardMode = "auto",
    ) -> SVDConv2d:
        """Decompose ``conv`` (``groups=1``, ``padding_mode="zeros"``): ``init="svd"``
        computes the same function, ``"random"`` initialises like a fresh layer of the same
        shape."""
        check_choice("init", init, INITS)
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
        if self.scheme == "spatial":
            return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
        return weight.permute(0, 2, 3, 1).reshape(n * kh * kw, c)

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        n, c, (kh, kw) = self.out_channels, self.in_channels, self.kernel_size
        if self.scheme == "channel":
            return matrix.reshape(n, c, kh, kw)
        # contiguous() so that the convolution gets a weight in its usual layout.
        if self.scheme == "spatial":
            return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()
        return matrix.reshape(n, kh, kw, c).permute(0, 3, 1, 2).contiguous()

    def factor_weights(
        self, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the two thin convs that run the singular directions ``indices``.

        Channel: ``Vᵀ`` as k filters of c × kh × kw, then ``U · diag(s)`` as n filters of
        k × 1 × 1. Spatial: ``(U · diag(s))ᵀ`` as k filters of c × kh × 1, then ``V`` as n
        filters of k × 1 × kw. Pointwise-first: ``Vᵀ`` as k filters of c × 1 × 1, then
        ``U · diag(s)`` as n filters of k × kh × kw. Pruned indices get singular value zero.
        """
        u, s, v = select_factors(self, indices)
        k = s.shape[0]
        n, c, (kh, kw) = self.out_channels, self.in_channels, self.kernel_size
        if self.scheme == "channel":
            first, second = v.mT.reshape(k, c, kh, kw), (u * s).reshape(n, k, 1, 1)
        elif self.scheme == "pointwise_first":
            first = v.mT.reshape(k, c, 1, 1)
            second = (u * s).reshape(n, kh, kw, k).permute(0, 3, 1, 2)
        else:
            first = (u * s).mT.reshape(k, c, kh, 1)
            second = v.reshape(n, kw, k).permute(0, 2, 1).reshape(n, k, 1, kw)
        return _plain_strides(first), _plain_strides(second)

    def factored_geometry(self) -> tuple[dict[str, object], dict[str, object]]:
        """Keyword arguments of ``F.conv2d`` (stride, padding, dilation) for the two thin
        convs of :meth:`factor_weights`."""
        return factored_geometry(self.scheme, self.stride, self.padding, self.dilation)

    def layer_flops(self, input_shape: Sequence[int]) -> int:
        *batch, height, width = input_shape
        out_h, out_w = conv_output_size((height, width), self.kernel_size, self.stride,
                                        self.padding, self.dilation)
        kh, kw = self.kernel_size
        positions = math.prod(batch[:-1]) * out_h * out_w
        return 2 * positions * self.out_channels * self.in_channels * kh * kw

    def factored_flops(self, input_shape: Sequence[int], rank: int | None = None) -> int:
        # Each thin conv at each of its own output positions: the spatial scheme's vertical
        # conv runs at every input column, the pointwise-first 1×1 conv at every input
        # position, since only the second conv strides there.
        rank = self.rank if rank is None else rank
        *batch, height, width = input_shape
        images = math.prod(batch[:-1])
        kernels = thin_kernel_sizes(self.scheme, self.kernel_size)
        channels = ((self.in_channels, rank), (rank, self.out_channels))
        size, flops = (height, width), 0
        for kernel, geometry, (inputs, outputs) in zip(kernels, self.factored_geometry(),
                                                       channels, strict=True):
            size = conv_output_size(size, kernel, **geometry)
            flops += 2 * images * math.prod(size) * outputs * inputs * math.prod(kernel)
        return flops

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


def thin_kernel_sizes(
    scheme: str, kernel_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kernel sizes of the two thin convs that replace a kh × kw conv: channel (kh, kw) then
    (1, 1); spatial (kh, 1) then (1, kw); pointwise-first (1, 1) then (kh, kw)."""
    kh, kw = kernel_size
    if scheme == "channel":
        return (kh, kw), (1, 1)
    if scheme == "pointwise_first":
        return (1, 1), (kh, kw)
    return (kh, 1), (1, kw)


def conv_output_size(
    size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] | str,
    dilation: int | tuple[int, int],
) -> tuple[int, int]:
    """Height and width of what a conv with this geometry makes of a ``size`` input."""
    if padding == "same":
        return size
    pads = (0, 0) if padding == "valid" else _pair(padding)  # type: ignore[arg-type]
    return tuple(  # type: ignore[return-value]
        (length + 2 * p - d * (k - 1) - 1) // st + 1
        for length, p, d, k, st in zip(size, pads, _pair(dilation), kernel_size,
                                       _pair(stride), strict=True)
    )


def factored_geometry(
    scheme: str,
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
) -> tuple[dict[str, object], dict[str, object]]:
    """Stride, padding and dilation of the two thin convs that replace a conv.

    Channel: the first conv keeps the original geometry, the second is 1×1. Pointwise-first:
    the first is 1×1, the second keeps the original geometry (a 1×1 conv without bias maps
    zero padding to zero padding, so padding after it is the same). Spatial: the
    first (kh × 1) conv takes the vertical components, the second (1 × kw) the horizontal
    ones. ``"same"``/``"valid"`` padding carries over to both convs unchanged, since it pads
    each dimension by what that dimension's kernel needs.
    """
    if scheme == "channel":
        return ({"stride": stride, "padding": padding, "dilation": dilation},
                {"stride": 1, "padding": 0, "dilation": 1})
    if scheme == "pointwise_first":
        return ({"stride": 1, "padding": 0, "dilation": 1},
                {"stride": stride, "padding": padding, "dilation": dilation})
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

"""Rewrite a model's layers in SVD form, list them, and describe the result."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping

from torch import nn

from .conv import SVDConv2d
from .layers import DenseConv2d, DenseLinear, ForwardMode, Init, Scheme, SVDLayer, SVDLinear

__all__ = ["decompose", "decomposable", "svd_layers", "summary"]


def decompose(
    model: nn.Module,
    scheme: Scheme = "channel",
    init: Init = "svd",
    exclude: Iterable[str] = (),
    forward_mode: ForwardMode = "auto",
) -> nn.Module:
    """Return a deep copy of ``model`` with its linear and convolution layers in SVD form.

    Every ``nn.Linear`` becomes an :class:`~ranksearch.svd.SVDLinear` and every ``nn.Conv2d``
    an :class:`~ranksearch.svd.SVDConv2d` of the given ``scheme``, except layers that stay
    dense and are marked as :class:`~ranksearch.svd.DenseConv2d` /
    :class:`~ranksearch.svd.DenseLinear` with the reason in their ``repr``:

    * layers whose qualified name matches an :mod:`fnmatch` pattern in ``exclude``
      (``"fc"``, ``"layer4.*"``);
    * grouped and depthwise convolutions (``groups > 1``);
    * convolutions with a ``padding_mode`` other than ``"zeros"``.

    Only layers of exactly these classes are considered; subclasses (which may use their
    weight in their own way, as ``nn.MultiheadAttention``'s output projection does) are left
    untouched. :func:`summary` lists what was done.

    Args:
        model: The dense model; it is not modified.
        scheme: ``"channel"``, ``"spatial"`` or ``"pointwise_first"`` decomposition of the
            convolutions (see :class:`~ranksearch.svd.SVDConv2d`).
        init: ``"svd"`` takes the exact SVD of the current weights, so the result computes
            the same function (up to rounding); ``"random"`` initialises every SVD layer
            like a fresh layer, with orthonormal ``U`` and ``V``, to train from scratch.
        exclude: Patterns of layer names to keep dense. A single string is one pattern.
        forward_mode: The layers' initial ``forward_mode`` (see :class:`SVDLayer`).

    Returns:
        The decomposed copy.
    """
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    result = copy.deepcopy(model)
    if type(result) in (nn.Conv2d, nn.Linear, DenseConv2d, DenseLinear):
        return _replacement(result, "", scheme, init, patterns, forward_mode)
    replacements: dict[int, nn.Module] = {}
    for parent_name, parent in list(result.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent.named_children()):
            if type(child) not in (nn.Conv2d, nn.Linear, DenseConv2d, DenseLinear):
                continue
            if id(child) not in replacements:
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                replacements[id(child)] = _replacement(child, name, scheme, init, patterns,
                                                       forward_mode)
            setattr(parent, child_name, replacements[id(child)])
    return result


def _replacement(
    layer: nn.Conv2d | nn.Linear,
    name: str,
    scheme: Scheme,
    init: Init,
    patterns: tuple[str, ...],
    forward_mode: ForwardMode,
) -> nn.Module:
    reason = _dense_reason(layer, name, patterns)
    if reason is not None:
        # Same parameters, same forward: only the class changes, to carry the reason.
        layer.__class__ = DenseConv2d if isinstance(layer, nn.Conv2d) else DenseLinear
        layer.dense_reason = reason  # type: ignore[union-attr]
        return layer
    if isinstance(layer, nn.Conv2d):
        return SVDConv2d.from_dense(layer, scheme, init, forward_mode)
    return SVDLinear.from_dense(layer, init, forward_mode)


def _dense_reason(layer: nn.Module, name: str, patterns: tuple[str, ...]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return f"excluded by pattern {pattern!r}"
    if isinstance(layer, nn.Conv2d):
        if layer.groups == layer.in_channels and layer.groups > 1:
            return f"depthwise convolution (groups={layer.groups})"
        if layer.groups > 1:
            return f"grouped convolution (groups={layer.groups})"
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} (only 'zeros' is decomposed)"
    return None


def decomposable(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Qualified names of the layers :func:`decompose` would put in SVD form, in module
    order, found without copying the model or computing any SVD (the names
    :func:`svd_layers` returns for the decomposed model)."""
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    return [name for name, module in model.named_modules()
            if type(module) in (nn.Conv2d, nn.Linear, DenseConv2d, DenseLinear)
            and _dense_reason(module, name, patterns) is None]


def svd_layers(model: nn.Module) -> dict[str, SVDLayer]:
    """The SVD layers of ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SVDLayer)}


def summary(model: nn.Module) -> str:
    """A table of every linear and convolution layer: SVD form and kept rank, or why dense.

    Example line: ``layer1.0.conv1  SVDConv2d  channel  rank 16/16  auto``; a dense one reads
    ``layer2.0.conv  DenseConv2d  kept dense: grouped convolution (groups=4)``.
    """
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, SVDLayer):
            scheme = module.scheme if isinstance(module, SVDConv2d) else "linear"
            rows.append((name, type(module).__name__,
                         f"{scheme}  rank {module.rank}/{module.full_rank}  "
                         f"{module.forward_mode}"))
        elif isinstance(module, (DenseConv2d, DenseLinear)):
            rows.append((name, type(module).__name__, f"kept dense: {module.dense_reason}"))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            rows.append((name, type(module).__name__, "dense (not decomposed)"))
    if not rows:
        return "no linear or convolution layers"
    layers = [m for m in model.modules() if isinstance(m, SVDLayer)]
    kept = sum(layer.rank for layer in layers)
    full = sum(layer.full_rank for layer in layers)
    name_width = max(len(row[0]) for row in rows)
    type_width = max(len(row[1]) for row in rows)
    lines = [f"{n:<{name_width}}  {t:<{type_width}}  {d}" for n, t, d in rows]
    lines.append(f"{len(layers)} SVD layers, {len(rows) - len(layers)} dense; "
                 f"{kept}/{full} singular values kept")
    return "\n".join(lines)


def per_layer(names: Iterable[str], spec: float | Mapping[str, float], default: float
              ) -> dict[str, float]:
    """Resolve a per-layer setting: one float for all layers, or a dict of layer names and
    dotted prefixes (``"layer2"`` covers ``"layer2.0.conv1"``) where the longest matching key
    wins and unmatched layers get ``default``."""
    if not isinstance(spec, Mapping):
        return dict.fromkeys(names, float(spec))
    resolved = {}
    for name in names:
        matches = [key for key in spec if name == key or name.startswith(key + ".")]
        resolved[name] = float(spec[max(matches, key=len)]) if matches else default
    return resolved

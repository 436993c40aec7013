"""Rewrite a model's layers in SVD form, list them, and describe the result."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping

from torch import nn

from .conv import SVDConv2d
from .layers import DenseConv2d, DenseLinear, ForwardMode, Init, Scheme, SVDLayer, SVDLinear

__all__ = ["decompose", "decomposable", "svd_layers", "summary", "replace_module"]


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
    * convolutions with a ``padding_mode`` other than ``"zeros"``;
    * layers whose weight is also another module's parameter (an output layer tied to an
      embedding), which a decomposition would untie;
    * layers whose parent reads their ``weight`` itself instead of calling them
      (``nn.TransformerEncoderLayer``'s fast path, torchvision's Swin window attention).

    Only layers of exactly these classes are considered; subclasses (which may use their
    weight in their own way, as ``nn.MultiheadAttention``'s output projection does) are left
    untouched. A layer registered under several names stays one layer, in SVD form under
    all of them. Each SVD layer keeps its layer's training mode and, for ``U``, ``s`` and
    ``V``, whether its weight required gradients. :func:`summary` lists what was done.

    Args:
        model: The dense model; it is not modified.
        scheme: ``"channel"``, ``"spatial"`` or ``"pointwise_first"`` decomposition of the
            convolutions (see :class:`~ranksearch.svd.SVDConv2d`).
        init: ``"svd"`` takes the exact SVD of the current weights, so the result computes
            the same function (up to rounding); ``"random"`` initialises every SVD layer
            like a fresh layer, with orthonormal ``U`` and ``V``, to train from scratch.
        exclude: Patterns of layer names to keep dense. A single string is one pattern;
            a pattern that matches no linear or convolution layer is an error.
        forward_mode: The layers' initial ``forward_mode`` (see :class:`SVDLayer`).

    Returns:
        The decomposed copy.
    """
    patterns = _patterns(model, exclude)
    result = copy.deepcopy(model)
    if type(result) in _DECOMPOSABLE:
        return _replacement(result, "", scheme, init, patterns, forward_mode, None)
    special = _special_reasons(result)
    # named_modules lists a layer once, under its first name; it is replaced under every name.
    for name, layer in list(result.named_modules()):
        if type(layer) in _DECOMPOSABLE:
            replacement = _replacement(layer, name, scheme, init, patterns, forward_mode,
                                       special.get(id(layer)))
            replace_module(result, layer, replacement)
    return result


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` in place of ``old`` under every name ``old`` has in ``model`` (a module
    may be registered under several names, in one parent or in several)."""
    for parent in model.modules():
        for key, child in parent._modules.items():
            if child is old:
                parent._modules[key] = new


def _replacement(
    layer: nn.Conv2d | nn.Linear,
    name: str,
    scheme: Scheme,
    init: Init,
    patterns: tuple[str, ...],
    forward_mode: ForwardMode,
    special_reason: str | None,
) -> nn.Module:
    reason = _dense_reason(layer, name, patterns) or special_reason
    if reason is not None:
        # Same parameters, same forward: only the class changes, to carry the reason.
        layer.__class__ = DenseConv2d if isinstance(layer, nn.Conv2d) else DenseLinear
        layer.dense_reason = reason  # type: ignore[union-attr]
        return layer
    if isinstance(layer, nn.Conv2d):
        replacement: SVDLayer = SVDConv2d.from_dense(layer, scheme, init, forward_mode)
    else:
        replacement = SVDLinear.from_dense(layer, init, forward_mode)
    for factor in (replacement.U, replacement.s, replacement.V):
        factor.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        replacement.bias.requires_grad_(layer.bias.requires_grad)
    return replacement.train(layer.training)


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


#: Layer classes decompose considers (exactly these; DenseConv2d/DenseLinear: decomposing a
#: decomposed model again).
_DECOMPOSABLE = (nn.Conv2d, nn.Linear, DenseConv2d, DenseLinear)

#: Modules whose forward reads some children's ``weight`` itself instead of calling them,
#: by qualified class name (a subclass counts): an SVD layer there would break the forward.
_WEIGHT_READERS = {
    "torch.nn.modules.transformer.TransformerEncoderLayer": ("linear1", "linear2"),
    "torchvision.models.swin_transformer.ShiftedWindowAttention": ("qkv", "proj"),
    "torchvision.models.video.swin_transformer.ShiftedWindowAttention3d": ("qkv", "proj"),
}


def _special_reasons(model: nn.Module) -> dict[int, str]:
    """Why some layers of ``model`` must stay dense, by ``id`` of the layer: their weight is
    tied to another module's parameter, or their parent reads their weight itself."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                owners.setdefault(id(parameter), []).append(name)
    reasons = {}
    for name, module in model.named_modules():
        if type(module) in _DECOMPOSABLE:
            others = [owner for owner in owners[id(module.weight)] if owner != name]
            if others:
                reasons[id(module)] = f"weight tied to {others[0]!r}"
        classes = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(module).__mro__}
        for reader in classes & _WEIGHT_READERS.keys():
            for child_name in _WEIGHT_READERS[reader]:
                child = module._modules.get(child_name)
                if child is not None:
                    reasons[id(child)] = f"{type(module).__name__} reads its weight directly"
    return reasons


def _patterns(model: nn.Module, exclude: Iterable[str]) -> tuple[str, ...]:
    """``exclude`` as a tuple of patterns, each checked to match a layer of ``model``."""
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    names = [name for name, module in model.named_modules() if type(module) in _DECOMPOSABLE]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ValueError(f"exclude pattern {pattern!r} matches no linear or convolution "
                             f"layer of the model (layers: {_some(names)})")
    return patterns


def _some(names: list[str], shown: int = 6) -> str:
    listed = ", ".join(names[:shown])
    return f"{listed}, ... ({len(names)} in all)" if len(names) > shown else listed or "none"


def decomposable(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Qualified names of the layers :func:`decompose` would put in SVD form, in module
    order, found without copying the model or computing any SVD (the names
    :func:`svd_layers` returns for the decomposed model)."""
    patterns = _patterns(model, exclude)
    special = _special_reasons(model)
    return [name for name, module in model.named_modules()
            if type(module) in _DECOMPOSABLE and id(module) not in special
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
    wins and unmatched layers get ``default``. A key that matches no layer is an error (a
    misspelt name would otherwise change nothing, silently)."""
    if not isinstance(spec, Mapping):
        return dict.fromkeys(names, float(spec))
    names = list(names)
    for key in spec:
        if not any(name == key or name.startswith(key + ".") for name in names):
            raise ValueError(f"{key!r} names no SVD layer of the model, nor a prefix of one "
                             f"(SVD layers: {_some(names)})")
    resolved = {}
    for name in names:
        matches = [key for key in spec if name == key or name.startswith(key + ".")]
        resolved[name] = float(spec[max(matches, key=len)]) if matches else default
    return resolved

"""Inference form of a model: batch norms folded into convolutions, channels_last, eval.

:func:`for_inference` is what a deployed model is: the function of the eval-mode model with
every batch norm that only normalises a convolution folded into it, the 4-D weights in
channels_last (the layout oneDNN's CPU kernels and cuDNN's tensor cores run fastest), in eval
mode. :func:`fold_batchnorm` alone does the fold.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator

import torch
import torch.fx
from torch import nn

from .layers import DenseConv2d, SVDLayer

__all__ = ["eval_mode", "fold_batchnorm", "for_inference", "to_channels_last"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode while the block runs, then every submodule back in the mode it
    was in. ``model.train(was_training)`` would set them all alike, and a fine-tuning setup
    (a model in train mode with its batch norms frozen in eval mode) would get its norms
    updating their statistics again."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in channels_last, the others as they
    are (in place; returned for chaining). ``model.to(memory_format=...)`` would fail on a
    5-D one (``nn.Conv3d``); this is the conversion it applies, to 4-D tensors only."""
    return model._apply(lambda t: t.contiguous(memory_format=torch.channels_last)
                        if t.dim() == 4 else t)


def for_inference(model: nn.Module, *, fold_bn: bool = True,
                  channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` in its deployed form: eval mode, batch norms folded
    (:func:`fold_batchnorm`) and channels_last, each step optional.

    The result computes the eval-mode function of ``model`` (up to rounding). FLOPs do not
    change (batch norm is not counted); latency does.
    """
    result = fold_batchnorm(model) if fold_bn else copy.deepcopy(model)
    result.eval()
    return to_channels_last(result) if channels_last else result


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``BatchNorm2d`` that directly follows a ``Conv2d``
    folded into that conv and replaced by ``nn.Identity``.

    The fold uses the running statistics, so the result computes the eval-mode function;
    it is meant for inference and latency measurement (a conv without bias gains one, so
    the ``state_dict`` keys change). Pairs are found by tracing with :mod:`torch.fx`: a conv
    whose only user is a batch norm, each called once. A model that cannot be traced folds
    only convs directly followed by a batch norm inside an ``nn.Sequential``.
    """
    result = copy.deepcopy(model)
    for conv_name, bn_name in _conv_bn_pairs(result):
        conv = result.get_submodule(conv_name)
        bn = result.get_submodule(bn_name)
        if bn.running_mean is None:
            continue  # no running statistics: normalises with batch statistics even in eval
        _fold(conv, bn)
        result.set_submodule(bn_name, nn.Identity())
    return result




class _Tracer(torch.fx.Tracer):
    """Keeps convolutions, batch norms and SVD layers as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d, SVDLayer)) or super().is_leaf_module(
            m, module_qualified_name)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, batch norm name) for each batch norm that only normalises a conv."""
    modules = dict(model.named_modules())
    try:
        graph = _Tracer().trace(model)
    except Exception:  # tracing fails in many ways (data-dependent control flow, ...)
        return _sequential_pairs(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(modules[source.target]) in (nn.Conv2d, DenseConv2d)
                and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((source.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
            if type(conv) in (nn.Conv2d, DenseConv2d) and isinstance(bn, nn.BatchNorm2d):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale = scale * bn.weight
        shift = shift * bn.weight + bn.bias
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.clone())
    else:
        conv.bias.copy_(conv.bias * scale + shift)

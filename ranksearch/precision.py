"""Training precision: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

:func:`resolve_precision` turns a study's ``precision`` (``fp32``, ``bf16``, ``auto``) into
what a phase really trains in, :func:`autocast` wraps a forward pass in it, and
:func:`fp32_batch_norms` keeps the activations that bf16 would degrade in fp32 while the
convolutions and matrix products run in bf16.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["cpu_name", "cpu_has_bf16", "resolve_precision", "autocast", "fp32_batch_norms"]


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first value of each field of ``/proc/cpuinfo``; empty where there is none (not
    Linux)."""
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """This CPU's model name (``AMD EPYC ...``), or its architecture where the system does not
    say."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16).

    oneDNN also runs bf16 on CPUs without these instructions, by emulation, and then it is
    slower than fp32; so only the native instructions count. Without ``/proc/cpuinfo`` (not
    Linux) there is no portable way to ask, so no.
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split()) | set(info.get("Features", "").split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def resolve_precision(precision: str, device_type: str) -> str:
    """The precision a phase really trains in: ``fp32`` or ``bf16`` (autocast).

    ``auto`` is bf16 where the device computes it natively (a CUDA GPU that supports it, a
    CPU with AVX512-BF16/AMX/Arm BF16) and fp32 elsewhere; ``bf16`` where it cannot run fast
    falls back to fp32 with one warning line.
    """
    if precision == "fp32":
        return "fp32"
    if device_type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = device_type == "cpu" and cpu_has_bf16()
    if native:
        return "bf16"
    if precision == "bf16":
        named = f" ({cpu_name()})" if device_type == "cpu" else ""
        warnings.warn(f"precision bf16: this {device_type.upper()}{named} has no native "
                      "bf16; training in fp32", stacklevel=2)
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` resolves to bf16 there, else nothing."""
    if resolve_precision(precision, device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: Functions whose bf16 result is the bf16 rounding of their fp32 result: they clamp or
#: select values and compute no new ones.
_EXACT_IN_BF16 = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu,
                            torch.Tensor.relu_, F.hardtanh, F.hardtanh_, F.max_pool2d})
#: Functions bf16 autocast computes in bf16: they round an fp32 input to bf16 before anything
#: else (while autocast is on; see _rounds_to_bf16).
_ROUNDED_TO_BF16 = frozenset({F.conv1d, F.conv2d, F.conv3d, F.linear})


#: Sums, in place (the result has the first operand's dtype) and not (the wider of the two).
_SUMS_IN_PLACE = frozenset({torch.Tensor.add_, torch.Tensor.__iadd__})
_SUMS = _SUMS_IN_PLACE | {torch.add, torch.Tensor.add, torch.Tensor.__add__,
                          torch.Tensor.__radd__}


def _rounds_to_bf16(func: Any, args: tuple) -> bool:
    if func not in _ROUNDED_TO_BF16:
        return False
    device = args[0].device.type
    # A convolution run with autocast off (a model may turn it off around a layer) would
    # receive the bf16 tensor as it is and fail against its fp32 weight.
    return (torch.is_autocast_enabled(device)
            and torch.get_autocast_dtype(device) == torch.bfloat16)


class _NormOutputs(TorchFunctionMode):
    """Follows the batch norms' outputs through one forward pass.

    A tensor a norm returned (:meth:`mark`), or one an ``_EXACT_IN_BF16`` function made of
    it, carries the norm's name. :attr:`needs_fp32` collects the norms whose tensors reach any
    other function than those and a convolution or linear layer under bf16 autocast: a
    residual sum, a pooling average, a concatenation, a convolution with autocast off.
    Functions that return no tensor (``x.shape``, ``x.dim()``) do not count.
    """

    def __init__(self) -> None:
        super().__init__()
        self._names: dict[int, tuple[torch.Tensor, set[str]]] = {}
        self.marked: set[str] = set()
        self._needs_fp32: set[str] = set()
        self._uses: dict[int, int] = {}  # how many functions read each marked tensor
        self._freed_by_sums: list[set[str]] = []

    def mark(self, tensor: torch.Tensor, names: set[str]) -> None:
        # The tensor is held too, so that its id is not reused by another during the pass.
        self._names.setdefault(id(tensor), (tensor, set()))[1].update(names)
        self.marked |= names

    @property
    def needs_fp32(self) -> set[str]:
        """The norms that return fp32 from now on. A norm a sum freed (see :meth:`_sum`)
        stays among them where a tensor made of its output is read more than once: the
        gradients would add up in bf16 instead of fp32."""
        read_again = set().union(*(self._names[i][1] for i, n in self._uses.items() if n > 1))
        return self._needs_fp32.union(*(norms & read_again for norms in self._freed_by_sums))

    def _marked_in(self, values: Any) -> list[torch.Tensor]:
        return [leaf for leaf in tree_leaves(values)
                if (entry := self._names.get(id(leaf))) is not None and entry[0] is leaf]

    def names_in(self, values: Any) -> set[str]:
        return set().union(*(self._names[id(leaf)][1] for leaf in self._marked_in(values)))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        names = self.names_in((args, kwargs))
        tensors = [leaf for leaf in tree_leaves(result) if isinstance(leaf, torch.Tensor)]
        if names and tensors:
            for leaf in self._marked_in((args, kwargs)):
                self._uses[id(leaf)] = self._uses.get(id(leaf), 0) + 1
            if func in _EXACT_IN_BF16:
                for tensor in tensors:
                    self.mark(tensor, names)
            elif func in _SUMS and len(args) >= 2 and "out" not in kwargs:
                self._sum(func, args[0], args[1], names)
            elif not _rounds_to_bf16(func, args):
                self._needs_fp32 |= names
        return result

    def _sum(self, func: Any, first: Any, second: Any, names: set[str]) -> None:
        """A sum of a norm's output with an fp32 tensor no norm made (a residual stream
        already fp32; such a tensor keeps its dtype from pass to pass) is fp32 whatever the
        norm returns: the sum reads its bf16 operand as ``.float()`` would make it, and its
        backward rounds that operand's gradient as ``.float()``'s would, so the norm's cast
        can go. In any other sum, the norms keep fp32."""
        tensors = isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
        if tensors and func in _SUMS_IN_PLACE:  # the result has the first's dtype
            candidates = [(second, first)]
        else:
            candidates = [(first, second), (second, first)] if tensors else []
        for norm_output, other in candidates:
            if (not self.names_in(other) and other.dtype == torch.float32
                    and self.names_in(norm_output) == names):
                self._freed_by_sums.append(names)
                return
        self._needs_fp32 |= names


@contextlib.contextmanager
def fp32_batch_norms(model: nn.Module, precision: str) -> Iterator[None]:
    """While the block runs, those of ``model``'s batch norms whose outputs bf16 would degrade
    return fp32 where they receive bf16 (``precision`` ``"bf16"``; with any other precision
    nothing changes).

    Under autocast a batch norm returns the bf16 it receives from its convolution, so a
    ResNet's residual sums, block after block, are bf16 (8 bits of mantissa). With fp32
    outputs they stay fp32 while convolutions and matrix products still run in bf16. On
    ResNet-20 / Fashion-MNIST (3 epochs, 3 seeds, ``benchmarks/cpu_precision.py``) bf16 ended
    0.36 point below fp32 on average without this, and level with it with this.

    A norm whose output reaches only convolutions and linear layers, directly or through
    ReLU-like clamps and max pooling (a block's first norm: BN → ReLU → conv), keeps its bf16
    output: the convolution would round the fp32 values back to the same bf16 ones, forward
    and backward, so the two casts would cost time and change nothing. So does a norm whose
    output, read once, is summed with an fp32 tensor (a residual stream already fp32): the
    sum is fp32 either way. The model's first forward pass inside the block finds these
    norms (every norm returns fp32 during it); the later passes skip their casts, from the
    first pass that begins once the backward of every earlier pass has begun. Until then
    every norm returns fp32, so a model that recomputes activations in its backward
    (``torch.utils.checkpoint``) recomputes them as its forward ran them, also in a loop that
    accumulates gradients over several passes.
    """
    if precision != "bf16":
        yield
        return
    handles = {}
    follower: list[_NormOutputs] = []  # the pass being followed, while it runs
    decided: list[set[str]] = []  # the norms that keep bf16, once the first pass found them
    # One token per pass run with every norm in fp32 whose backward has not begun yet.
    awaiting_backward: set[object] = set()

    def fp32_output(name: str, _module: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16:
            output = output.float()
        if follower:
            follower[0].mark(output, {name})
        return output

    def follow(_model: nn.Module, _args: Any) -> None:
        if decided and not awaiting_backward:
            for handle in passes:
                handle.remove()
            for name in decided.pop():
                handles.pop(name).remove()
        elif not decided:
            follower.append(_NormOutputs())
            follower[0].__enter__()

    def await_backward(output: Any) -> None:
        token = object()
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                awaiting_backward.add(token)
                leaf.register_hook(lambda _grad: awaiting_backward.discard(token))

    def decide(_model: nn.Module, _args: Any, output: Any) -> None:
        # Not called once the decision took effect: follow removed this hook as the pass began.
        await_backward(output)
        if follower:
            outputs = follower.pop()
            outputs.__exit__(None, None, None)
            if output is not None:  # else the pass raised: follow the next one
                decided.append(outputs.marked - outputs.needs_fp32 - outputs.names_in(output))

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles[name] = module.register_forward_hook(functools.partial(fp32_output, name))
    passes = [model.register_forward_pre_hook(follow),
              model.register_forward_hook(decide, always_call=True)]
    try:
        yield
    finally:
        for handle in [*handles.values(), *passes]:
            handle.remove()

"""Cost of a model: FLOPs, parameters and measured CPU latency.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one input of the
given shape (batch size 1). The convention is PyTorch's: one multiply-accumulate counts as
two FLOPs, and only the operators PyTorch registers a formula for (convolutions, matrix
products, attention) are counted; element-wise work such as batch norm, ReLU and additions
is not.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .conventions import FLOPS_CONVENTION
from .svd.compact import fastest_seconds, pass_seconds
from .svd.inference import eval_mode

__all__ = ["FLOPS_CONVENTION", "flops", "params", "latency", "fastest_passes", "example_input",
           "is_channels_last", "num_threads"]


def example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int, *,
                  channels_last: bool | None = None) -> torch.Tensor:
    """A random batch on the model's device and dtype, channels_last when the model's
    convolutions are (the input a deployed channels_last model receives) or when
    ``channels_last`` says so."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
    if channels_last is None:
        channels_last = is_channels_last(model)
    if x.dim() == 4 and channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are stored channels_last (and not also contiguous)."""
    # Only where the two layouts differ: more than one input channel and a spatial kernel.
    weights = [p for p in model.parameters()
               if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    return bool(weights) and all(
        w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        for w in weights)


def flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on one input of shape ``input_shape`` (C, H, W).

    The model is run in eval mode under ``torch.no_grad``; each module's training mode is
    restored after.
    """
    counter = FlopCounterMode(display=False)
    # The random input must not move the caller's random stream.
    with eval_mode(model), torch.random.fork_rng(devices=[]), torch.no_grad(), counter:
        model(example_input(model, input_shape, 1))
    return int(counter.get_total_flops())


def params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> float:
    """Median wall time in seconds of one forward pass on the CPU, after ``warmup`` passes.

    The model is copied to the CPU in eval mode, so the caller's model is left untouched;
    the input is channels_last when the model is. ``threads`` sets ``torch.set_num_threads``
    for the measurement and restores it after.
    """
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = example_input(cpu_model, input_shape, batch_size)
    with num_threads(threads):
        return statistics.median(pass_seconds([cpu_model], x, repeats, warmup)[0])


def fastest_passes(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_size: int = 1,
    passes: int = 40,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Seconds of the fastest forward pass of each model on the CPU, the models alternating
    pass by pass, ``passes`` timed passes each after 3 untimed ones: a comparison of models.

    Load from other processes only ever adds time, so the fastest pass is the least
    disturbed one, and alternating exposes every model to the same load; :func:`latency`
    (median) is the figure of one model as a user would see it. ``clock`` is wall time by
    default; ``time.process_time`` (this process's CPU time) measures the work done, which
    on one thread does not count waiting for a core on a machine shared with other jobs.
    The input (:func:`example_input` of the first model) is the same for all.
    """
    copies = [copy.deepcopy(model).cpu().eval() for model in models]
    x = example_input(copies[0], input_shape, batch_size)
    return fastest_seconds(copies, x, passes, warmup=3, clock=clock)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: as it is) and restore
    the previous number after; yields the number in force."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)

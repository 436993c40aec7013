"""Training loops: one loop serves the dense reference, SVD training and fine-tuning.

The phases differ only in the model they train and the regulariser added to the
cross-entropy: none for the reference and the baselines, orthogonality plus sparsity for SVD
training, orthogonality alone for fine-tuning. A non-finite loss stops the phase with
:class:`Diverged`, so a trial that blows up fails fast with its reason.
"""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import Schedule
from .data import Dataset

__all__ = [
    "Diverged", "FitResult", "fit", "evaluate", "resolve_device", "resolve_precision",
    "cpu_has_bf16", "autocast",
]

Regulariser = Callable[[nn.Module], torch.Tensor]


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    """Mean training loss of each epoch."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(model: nn.Module, schedule: Schedule, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay,
            nesterov=schedule.momentum > 0,
        )
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=schedule.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=schedule.weight_decay)


def _lr_factor(schedule: Schedule, progress: float) -> float:
    """Multiplier of the base rate at ``progress`` (0 to 1) through the phase."""
    if schedule.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule.lr_schedule == "step":
        return 0.1 ** int(progress / 0.5 + 1e-9) if progress < 1 else 0.01
    return 1.0


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16).

    oneDNN also runs bf16 on CPUs without these instructions, by emulation, and then it is
    slower than fp32; so only the native instructions count.
    """
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:  # not Linux: no portable way to ask, so fp32
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
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
        processor = platform.processor() or platform.machine()
        warnings.warn(f"precision bf16: this {device_type.upper()} ({processor}) has no native "
                      "bf16; training in fp32", stacklevel=2)
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` resolves to bf16 there, else nothing."""
    if resolve_precision(precision, device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(
    model: nn.Module,
    data: Dataset,
    schedule: Schedule,
    *,
    seed: int,
    regulariser: Regulariser | None = None,
    lr: float | None = None,
    epochs: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Train ``model`` in place on ``data``'s training split.

    ``lr`` and ``epochs`` override the schedule's (a searched learning rate or epoch count).
    ``regulariser(model)`` is added to the cross-entropy each step, always in fp32: under
    bf16 autocast ``UᵀU`` would round its diagonal to about 4e-3, the size of what the
    orthogonality term measures. ``precision`` is ``fp32``, ``bf16`` or ``auto``
    (:func:`resolve_precision`). Shuffling and augmentation are seeded by ``seed``, so a run
    on the CPU is reproducible.
    """
    device = next(model.parameters()).device
    if channels_last:
        model.to(memory_format=torch.channels_last)
    base_lr = lr if lr is not None else schedule.lr
    epochs = epochs if epochs is not None else schedule.epochs
    optimizer = _optimizer(model, schedule, base_lr)
    batches_per_epoch = data.num_batches("train", schedule.batch_size, train=True,
                                         limit=schedule.max_batches)
    total_steps = max(1, epochs * batches_per_epoch)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    model.train()
    start = time.perf_counter()
    step = 0
    epoch_losses: list[float] = []
    # disable=None hides the bar when stderr is not a terminal (logs, CI).
    bar = tqdm(total=total_steps, desc=desc, disable=None if progress else True, leave=False,
               unit="step")
    try:
        for _ in range(epochs):
            running = torch.zeros((), device=device)
            seen = 0
            for x, y in data.batches(
                "train", schedule.batch_size, train=True, generator=generator,
                limit=schedule.max_batches,
            ):
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * _lr_factor(schedule, step / total_steps)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    loss = F.cross_entropy(model(x), y)
                if regulariser is not None:
                    loss = loss + regulariser(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += loss.detach()
                seen += 1
                step += 1
                bar.update(1)
            # One device sync per epoch: checking every step would stall a GPU pipeline, and a
            # NaN persists once it appears, so an epoch-end check loses nothing but time.
            mean_loss = (running / max(seen, 1)).item()
            if not math.isfinite(mean_loss):
                raise Diverged(f"diverged: training loss became {mean_loss} in {desc}")
            epoch_losses.append(mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
    finally:
        bar.close()
    return FitResult(
        epochs=epochs,
        seconds=time.perf_counter() - start,
        losses=epoch_losses,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset, split: str, batch_size: int = 512,
    precision: str = "fp32", samples: int | None = None,
) -> float:
    """Top-1 accuracy (0 to 1) of ``model`` on ``split`` (``val`` or ``test``), or on its
    first ``samples`` images (the split's order is fixed)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    limit = None if samples is None else math.ceil(samples / batch_size)
    for x, y in data.batches(split, batch_size, train=False, limit=limit):
        if samples is not None:
            x, y = x[: samples - total], y[: samples - total]
        with autocast(device, precision):
            logits = model(x)
        correct += (logits.argmax(dim=1) == y).sum()
        total += y.numel()
    model.train(was_training)
    return correct.item() / max(total, 1)

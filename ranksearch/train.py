"""Training and evaluation: one loop serves every phase, and a user's loop may replace it.

A :class:`Phase` is one training run of a study (the dense reference, SVD training,
fine-tuning, a baseline's fine-tuning) with everything that makes it: the schedule and its
budget, the seeded batches, the precision, and the regulariser added to the loss (none for
the reference and the baselines, orthogonality plus sparsity for SVD training, orthogonality
alone for fine-tuning). :func:`fit` is ranksearch's loop over a phase (cross-entropy);
:func:`run_phase` runs it or the user's ``train_loop(model, phase)`` instead. A non-finite
loss, or a user loop that leaves non-finite weights, stops the phase with :class:`Diverged`,
so a trial that blows up fails fast with its reason.

:func:`evaluate` measures a model on one split with the study's metric: top-1 accuracy, or the
user's ``evaluate(model, batches) -> float``; a metric that returns no finite number raises
:class:`MetricFailed`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import Schedule
from .data import Dataset
from .errors import UserError
from .precision import autocast, fp32_batch_norms, resolve_precision
from .svd.inference import eval_mode

__all__ = [
    "Phase", "PhaseName", "TrainLoop", "Metric", "Diverged", "MetricFailed", "FitResult", "fit",
    "run_phase", "evaluate", "top1_accuracy", "resolve_device",
]

Regulariser = Callable[[nn.Module], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
PhaseName = Literal["reference", "svd", "finetune", "baseline"]
#: A training loop: ``train_loop(model, phase)`` trains ``model`` in place (the return value
#: is ignored).
TrainLoop = Callable[[nn.Module, "Phase"], Any]
#: A quality metric: ``metric(model, batches) -> float``, higher is better.
Metric = Callable[[nn.Module, Batches], float]


class Diverged(RuntimeError):
    """The loss, or the weights a training loop left, became NaN or infinite."""


class MetricFailed(UserError):
    """A metric that returned no finite number; the message is one line naming it."""


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


class Phase:
    """One training phase of a study, as ranksearch's :func:`fit` runs it and as a user's
    ``train_loop(model, phase)`` receives it.

    Attributes:
        name: ``"reference"`` (the dense model), ``"svd"`` (SVD training), ``"finetune"``
            (after pruning) or ``"baseline"`` (a pruned baseline's fine-tuning, once with
            the SVD-training schedule's budget and once with the fine-tuning one's).
        schedule: the phase's :class:`~ranksearch.config.Schedule` (optimizer, batch size,
            learning-rate shape, ``max_batches``).
        lr: the effective base learning rate (a searched rate overrides the schedule's).
        epochs: the effective number of epochs.
        batches_per_epoch: training batches per epoch (``schedule.max_batches`` applied).
        steps: the step budget, ``epochs * batches_per_epoch``: what :meth:`batches` yields.
        seed: seeds the shuffling and augmentation of :meth:`batches`.
        data: the study's :class:`~ranksearch.data.Dataset` (``input_shape``,
            ``num_classes``).
        device: where the model and the batches live.
        precision: ``"fp32"`` or ``"bf16"``: what :meth:`autocast` trains in (``auto``
            already resolved).
        channels_last: whether the model and the 4-d batches are in channels_last memory
            format (:func:`run_phase` converts the model before the loop).
        desc: a label for progress bars and messages (``"svd-train"``, ``"l1 2x (svd budget)"``).
        progress: whether a progress bar is wanted.
    """

    def __init__(
        self, name: PhaseName, data: Dataset, schedule: Schedule, *, seed: int,
        lr: float | None = None, epochs: int | None = None,
        regulariser: Regulariser | None = None, precision: str = "fp32",
        channels_last: bool = False, desc: str | None = None, progress: bool = True,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.lr = float(lr if lr is not None else schedule.lr)
        self.epochs = int(epochs if epochs is not None else schedule.epochs)
        self.batches_per_epoch = data.num_batches("train", schedule.batch_size, train=True,
                                                  limit=schedule.max_batches)
        self.steps = self.epochs * self.batches_per_epoch
        self.seed = seed
        self.data = data
        self.device = data.device
        self.precision = resolve_precision(precision, self.device.type)
        self.channels_last = channels_last
        self.desc = desc or name
        self.progress = progress
        self._regulariser = regulariser

    def __repr__(self) -> str:
        return (f"Phase({self.name!r}, lr={self.lr:g}, epochs={self.epochs}, "
                f"steps={self.steps}, seed={self.seed}, device={self.device}, "
                f"precision={self.precision!r}, channels_last={self.channels_last})")

    def regulariser(self, model: nn.Module) -> torch.Tensor:
        """The term to add to the loss at this step: a scalar tensor, zero when the phase
        has none. Always computed in fp32, even inside :meth:`autocast`: under bf16 ``UᵀU``
        would round its diagonal to about 4e-3, the size of what the orthogonality term
        measures."""
        if self._regulariser is None:
            return torch.zeros((), device=self.device)
        with torch.autocast(self.device.type, enabled=False):
            return self._regulariser(model)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches ``(x, y)`` of the whole budget, epoch after epoch
        (:attr:`steps` of them): shuffled and augmented from a generator seeded by
        :attr:`seed`, so the same phase sees the same batches; 4-d inputs in channels_last
        format when :attr:`channels_last`."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        for _ in range(self.epochs):
            for x, y in self.data.batches("train", self.schedule.batch_size, train=True,
                                          generator=generator, limit=self.schedule.max_batches):
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when :attr:`precision` is bf16, else nothing: wrap the forward pass
        and the loss in it."""
        return autocast(self.device, self.precision)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The schedule's optimizer over ``model``'s trainable parameters at :attr:`lr`."""
        params = [p for p in model.parameters() if p.requires_grad]
        schedule = self.schedule
        # One fused kernel per step instead of a few small ops per parameter tensor: on the
        # CPU the per-tensor loop is 3 % of a ResNet-20 step (PyTorch fuses by default only
        # on CUDA). Elsewhere (MPS, XPU, ...) PyTorch's own default.
        fused = True if self.device.type in ("cpu", "cuda") else None
        if schedule.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=schedule.momentum,
                weight_decay=schedule.weight_decay, nesterov=schedule.momentum > 0, fused=fused,
            )
        optimizer = torch.optim.Adam if schedule.optimizer == "adam" else torch.optim.AdamW
        return optimizer(params, lr=self.lr, weight_decay=schedule.weight_decay, fused=fused)

    def lr_at(self, step: int) -> float:
        """The schedule's learning rate at ``step`` (0 to :attr:`steps`)."""
        progress = step / max(1, self.steps)
        shape = self.schedule.lr_schedule
        factor = 1.0
        if shape == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif shape == "step":
            factor = 0.1 ** int(progress / 0.5 + 1e-9) if progress < 1 else 0.01
        return self.lr * factor


def _prepare(model: nn.Module, phase: Phase) -> None:
    if phase.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()


def fit(model: nn.Module, phase: Phase) -> FitResult:
    """ranksearch's training loop: cross-entropy plus :meth:`Phase.regulariser` over
    :meth:`Phase.batches`, with the schedule's optimizer and learning rate
    (:meth:`Phase.optimizer`, :meth:`Phase.lr_at`), trains ``model`` in place.

    Raises:
        Diverged: the mean loss of an epoch is not finite.
    """
    _prepare(model, phase)
    optimizer = phase.optimizer(model)
    start = time.perf_counter()
    running = torch.zeros((), device=phase.device)
    seen = 0
    epoch_losses: list[float] = []
    # disable=None hides the bar when stderr is not a terminal (logs, CI).
    bar = tqdm(total=phase.steps, desc=phase.desc, disable=None if phase.progress else True,
               leave=False, unit="step")
    with fp32_batch_norms(model, phase.precision), bar:
        for step, (x, y) in enumerate(phase.batches()):
            for group in optimizer.param_groups:
                group["lr"] = phase.lr_at(step)
            with phase.autocast():
                loss = F.cross_entropy(model(x), y)
            loss = loss + phase.regulariser(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            seen += 1
            bar.update(1)
            if seen < phase.batches_per_epoch:
                continue
            # One device sync per epoch: checking every step would stall a GPU pipeline, and
            # a NaN persists once it appears, so an epoch-end check loses nothing but time.
            mean_loss = (running / seen).item()
            if not math.isfinite(mean_loss):
                raise Diverged(f"diverged: training loss became {mean_loss} in {phase.desc}")
            epoch_losses.append(mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
            running.zero_()
            seen = 0
    return FitResult(epochs=phase.epochs, seconds=time.perf_counter() - start,
                     losses=epoch_losses)


def run_phase(model: nn.Module, phase: Phase, loop: TrainLoop | None = None) -> FitResult:
    """Train ``model`` in place for ``phase``: with :func:`fit`, or with the user's
    ``loop(model, phase)``, which receives the model in training mode (and channels_last
    when the phase is; with batch norms that return fp32, :func:`fp32_batch_norms`, when it
    trains in bf16).

    A user's loop reports no losses, so its result is checked instead: weights or buffers
    that are not finite afterwards raise :class:`Diverged`.
    """
    if loop is None:
        return fit(model, phase)
    _prepare(model, phase)
    start = time.perf_counter()
    with fp32_batch_norms(model, phase.precision):
        loop(model, phase)
    seconds = time.perf_counter() - start
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    # One device sync for the whole model.
    if tensors and not torch.stack([torch.isfinite(t).all() for t in tensors]).all().item():
        raise Diverged(f"diverged: the training loop left non-finite weights after "
                       f"{phase.desc}")
    return FitResult(epochs=phase.epochs, seconds=seconds)


def top1_accuracy(model: nn.Module, batches: Batches) -> float:
    """The share of samples whose largest logit is their label: the default metric."""
    correct: torch.Tensor | int = 0
    total = 0
    for x, y in batches:
        # Summed on the device: one sync at the end, not one per batch.
        correct = correct + (model(x).argmax(dim=1) == y).sum()
        total += y.numel()
    return int(correct) / max(total, 1)


class _SplitBatches:
    """One split's ``(x, y)`` batches in their fixed order, cut to the first ``samples``;
    iterable any number of times."""

    def __init__(self, data: Dataset, split: str, batch_size: int, samples: int | None):
        self.data, self.split, self.batch_size, self.samples = data, split, batch_size, samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        limit = None if self.samples is None else math.ceil(self.samples / self.batch_size)
        seen = 0
        for x, y in self.data.batches(self.split, self.batch_size, train=False, limit=limit):
            if self.samples is not None:
                x, y = x[: self.samples - seen], y[: self.samples - seen]
            seen += len(y)
            yield x, y


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset, split: str, batch_size: int = 512,
    precision: str = "fp32", samples: int | None = None, metric: Metric | None = None,
    name: str = "accuracy",
) -> float:
    """``metric(model, batches)`` of ``model`` in eval mode on ``split`` (``val`` or
    ``test``) or on its first ``samples`` samples (the split's order is fixed); top-1
    accuracy (0 to 1) by default.

    Raises:
        MetricFailed: the metric, called ``name`` in the message, returned anything but a
            number in [0, 1].
    """
    device = next(model.parameters()).device
    with eval_mode(model), autocast(device, precision):
        value: Any = (metric or top1_accuracy)(
            model, _SplitBatches(data, split, batch_size, samples))
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        raise MetricFailed(f"metric {name} returned {value!r:.40} on the {split} split; "
                           "it must return a finite number")
    if not 0 <= value <= 1:  # the report reads it as a fraction, 0 the worst
        raise MetricFailed(f"metric {name} returned {value:.6g} on the {split} split; it must "
                           "return a number in [0, 1], higher is better (map a percentage or "
                           "a loss into it)")
    return float(value)

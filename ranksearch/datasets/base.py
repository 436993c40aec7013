"""The dataset interface, its error, and the seeded stratified splits every dataset shares."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import UserError

__all__ = ["SPLITS", "STATS", "Stats", "DataError", "Dataset", "check_labels", "split_train",
           "stratified_order", "check_split", "random_device"]

SPLITS = ("train", "val", "test")

Stats = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel ``(mean, std)`` of inputs scaled to [0, 1]."""

# Channel statistics of the built-in datasets' training images.
# Fashion-MNIST: computed over its training images; digits: over all 1,797 images (the
# training split alone gives 0.3049 / 0.3760, a negligible difference); CIFAR: the usual values
# (per-pixel standard deviations, not the often-quoted 0.2023/0.1994/0.2010); ImageNet:
# torchvision's.
STATS: dict[str, Stats] = {
    "digits": ((0.3053,), (0.3760,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class DataError(UserError):
    """A dataset that is unknown, missing or malformed; the message is one line."""


# --------------------------------------------------------------------------------------------
# Splits


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(len(labels))`` that interleaves the classes evenly.

    Every contiguous window of the result holds each class in proportion to its frequency,
    within one sample; cutting it at any two points therefore gives stratified splits of
    exactly the requested sizes. Each sample of a class with ``n`` members is keyed by
    ``(rank + u) / n`` with a random rank and uniform jitter ``u`` that breaks ties between
    classes at random.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def check_labels(where: str, labels: np.ndarray, num_classes: int, note: str = "") -> None:
    """A :class:`DataError` naming ``where`` when a label falls outside ``0 .. num_classes-1``
    (``note`` is appended, e.g. where the number of classes came from)."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(f"{where} has label {int(bad[0])}, outside 0 .. {num_classes - 1}"
                        + note)


def split_train(
    labels: np.ndarray, val_fraction: float, seed: int, subset: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices into the official training split.

    ``val`` is the same for every ``subset``, so short search schedules are ranked on the
    same samples as full ones.
    """
    order = stratified_order(labels, seed)
    n_val = round(val_fraction * len(labels))
    if (val_fraction > 0 and n_val == 0) or n_val >= len(labels):
        # An empty split would score every model 0 (or train none) without a word.
        raise DataError(f"val_fraction {val_fraction} of {len(labels)} training samples "
                        f"leaves {'no validation' if n_val == 0 else 'no training'} sample")
    stop = len(labels) if subset is None else n_val + subset
    return np.sort(order[n_val:stop]), np.sort(order[:n_val])


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def random_device(generator: torch.Generator | None) -> torch.device:
    # Random numbers are drawn on the generator's device, so that a CPU generator gives the
    # same shuffles and augmentations whichever device the data sits on.
    return generator.device if generator is not None else torch.device("cpu")


class Dataset(abc.ABC):
    """A dataset with ``train``, ``val`` and ``test`` splits that yields normalised batches.

    Attributes:
        name: canonical dataset name (one of :data:`ranksearch.data.DATASETS`), or the
            ``module:function`` spec of a data factory.
        input_shape: shape of one input as the model sees it: ``(C, H, W)`` for images, any
            shape for a data factory's inputs.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        device: where the yielded batches live.
        normalisation: the per-channel ``(mean, std)`` of inputs scaled to [0, 1] that
            batches are normalised with; None when batches are yielded as the data gives them
            (data factories).
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    normalisation: Stats | None

    @abc.abstractmethod
    def len_split(self, split: str) -> int:
        """Number of samples in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""

    def batches(
        self,
        split: str,
        batch_size: int,
        train: bool,
        generator: torch.Generator | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of ``split``: ``x`` float32 normalised, ``y`` int64 labels.

        ``train=True`` shuffles and augments, drawing all randomness from ``generator`` (the
        global torch RNG when None), and drops the last partial batch unless the split is
        smaller than one batch (a last batch of a few samples gives batch norm noisy
        statistics, and one of a single sample makes it fail). ``train=False`` yields the
        split in a fixed order without augmentation, the last partial batch included.
        ``limit`` caps the number of batches.
        """
        check_split(split)
        count = self.num_batches(split, batch_size, train, limit)
        return self._batches(split, batch_size, train, generator, count)

    @abc.abstractmethod
    def _batches(self, split: str, batch_size: int, train: bool,
                 generator: torch.Generator | None, count: int,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``count`` batches of :meth:`batches` (``split`` is valid)."""

    def num_batches(
        self, split: str, batch_size: int, train: bool, limit: int | None = None
    ) -> int:
        """How many batches :meth:`batches` yields with these arguments (for LR schedules)."""
        n = self.len_split(split)
        count = (max(1, n // batch_size) if n else 0) if train else math.ceil(n / batch_size)
        return count if limit is None else min(count, limit)

    def _normaliser(self, scale: float, stats: Stats) -> tuple[torch.Tensor, torch.Tensor]:
        # (x / scale - mean) / std == x * mul - sub, one fused multiply-subtract per batch.
        mean, std = (torch.tensor(v, device=self.device).view(-1, 1, 1) for v in stats)
        return 1.0 / (scale * std), mean / std

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s} {self.len_split(s)}" for s in SPLITS)
        return (
            f"{type(self).__name__}({self.name}: {sizes}; input {self.input_shape}, "
            f"{self.num_classes} classes, on {self.device})"
        )


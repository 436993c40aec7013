"""Data from the user: a ``module:function`` factory returning ``torch.utils.data.Dataset``
objects, streamed by DataLoader workers."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.utils.data

from ..errors import UserError
from ..imports import resolve
from .base import SPLITS, DataError, check_labels, split_train
from .stream import Reader, StreamedDataset, check_sample

__all__ = ["FactoryDataset", "from_factory"]


def from_factory(spec: str, args: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> FactoryDataset:
    """The :class:`FactoryDataset` of the splits that the function ``spec`` names returns when
    called with ``**args``; ``kwargs`` go to :class:`FactoryDataset`.

    Raises:
        ImportFailed: ``spec`` cannot be imported.
        DataError: the function raises, or returns something else than the splits.
    """
    factory = resolve(spec, "data factory")
    try:
        splits = factory(**(args or {}))
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - user code may raise anything
        lines = str(error).strip().splitlines()
        raise DataError(f"data factory {spec!r} failed: {type(error).__name__}"
                        + (f": {lines[0]}" if lines else "")) from None
    return FactoryDataset(spec, splits, **kwargs)


class FactoryDataset(StreamedDataset):
    """The user's ``train``, ``test`` and optional ``val`` datasets, yielded as the data gives
    them (ranksearch neither augments nor normalises).

    Each split is a map-style ``torch.utils.data.Dataset`` whose samples are ``(input
    tensor, int label)`` pairs, every input of one shape (read from ``train[0]``). Without a
    ``val`` dataset, ``val`` is a stratified, seeded ``val_fraction`` of ``train``, read
    through the ``train`` dataset (with whatever augmentation it applies). ``subset`` keeps
    that many ``train`` samples.

    Every label is read once here, for the stratified splits and the number of classes: from
    a dataset's ``targets`` attribute when it has one of the right length (as torchvision's
    datasets do), else by reading each sample, whose type and shape are then checked too.
    ``num_classes`` is the length of ``train``'s ``classes`` attribute if it has one, else the
    largest label plus one.

    Samples are read in DataLoader workers (``num_workers`` processes, or the calling process
    for 0), each under a seed of torch's random number generator: drawn from the batch
    generator for a training epoch, the sample's index for evaluation. Randomness that the
    datasets draw from torch (torchvision's transforms do) is therefore reproducible whatever
    the number of workers.

    Args:
        name: what errors call the data (the factory's spec).
        splits: ``{"train": Dataset, "test": Dataset}``, optionally with ``"val"``.
        val_fraction, seed, subset: see :func:`ranksearch.data.load`; ``val_fraction`` is
            unused when a ``val`` dataset is given.
        device: where the batches are delivered.
        num_workers: DataLoader worker processes.

    Raises:
        DataError: ``splits`` is not such a dict; a dataset is empty, not map-style, or has
            a sample that is not an ``(input tensor, int label)`` pair, an input of another
            shape than ``train[0]``'s, or a negative label or one past ``classes``.
    """

    def __init__(
        self,
        name: str,
        splits: Any,
        val_fraction: float,
        seed: int,
        subset: int | None,
        device: torch.device,
        num_workers: int,
    ) -> None:
        self.name = name
        self.device = device
        self.num_workers = num_workers
        self.normalisation = None
        self._datasets = self._checked(splits)
        # Reading samples must not move the caller's random stream (augmentations draw on it).
        with torch.random.fork_rng(devices=[]):
            first = self._datasets["train"][0]
            problem = check_sample(first, "train[0]")
            if problem is not None:
                raise DataError(f"{self.what}: {problem}")
            self.input_shape = tuple(first[0].shape)
            labels = {source: self._labels(source) for source in self._datasets}
        classes = getattr(self._datasets["train"], "classes", None)
        named = hasattr(classes, "__len__")
        self.num_classes = (len(classes) if named
                            else max(int(found.max()) for found in labels.values()) + 1)
        for source, found in labels.items():
            check_labels(f"{self.what}: {source}", found, self.num_classes,
                         f" (train.classes has {len(classes)})" if named else "")
        if "val" in self._datasets:
            train_index = split_train(labels["train"], 0.0, seed, subset)[0]
            val_index = np.arange(len(labels["val"]))
        else:
            train_index, val_index = split_train(labels["train"], val_fraction, seed, subset)
        self._indices = {"train": train_index, "val": val_index,
                         "test": np.arange(len(labels["test"]))}

    def _checked(self, splits: Any) -> dict[str, torch.utils.data.Dataset]:
        if not isinstance(splits, Mapping):
            raise DataError(f"{self.what} returned {type(splits).__name__}, not a dict with "
                            "'train' and 'test' (and optionally 'val') datasets")
        missing = [key for key in ("train", "test") if key not in splits]
        unknown = sorted(str(key) for key in splits if key not in SPLITS)
        if missing or unknown:
            problem = (f"lacks {' and '.join(repr(k) for k in missing)}" if missing
                       else f"has unknown keys {', '.join(map(repr, unknown))}")
            raise DataError(f"{self.what} returned a dict that {problem}; expected 'train' "
                            "and 'test' (and optionally 'val')")
        for key, dataset in splits.items():
            if not isinstance(dataset, torch.utils.data.Dataset):
                raise DataError(f"{self.what}: {key!r} is {type(dataset).__name__}, not a "
                                "torch.utils.data.Dataset")
            if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(
                    dataset, "__len__"):
                raise DataError(f"{self.what}: {key!r} ({type(dataset).__name__}) is not a "
                                "map-style dataset with __len__ and __getitem__")
            if len(dataset) == 0:
                raise DataError(f"{self.what}: {key!r} is empty")
        return dict(splits)

    def _labels(self, source: str) -> np.ndarray:
        """The int labels of every sample of ``source``, checking what reading them shows."""
        dataset = self._datasets[source]
        targets = getattr(dataset, "targets", None)
        if hasattr(targets, "__len__") and len(targets) == len(dataset):
            problem = check_sample(dataset[0], f"{source}[0]", self.input_shape)
            if problem is None:
                labels = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor)
                                    else targets)
                if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
                    return labels.astype(np.int64)
                problem = (f"{source}.targets holds {labels.dtype} values of shape "
                           f"{labels.shape}, not one int label per sample")
            raise DataError(f"{self.what}: {problem}")
        labels = np.empty(len(dataset), dtype=np.int64)
        for i in range(len(dataset)):
            sample = dataset[i]
            problem = check_sample(sample, f"{source}[{i}]", self.input_shape)
            if problem is not None:
                raise DataError(f"{self.what}: {problem}")
            labels[i] = operator.index(sample[1])
        return labels

    @property
    def what(self) -> str:
        return f"data factory {self.name!r}"

    def _reader(self, split: str, train: bool) -> tuple[str, Reader]:
        source = split if split in self._datasets else "train"
        return source, self._datasets[source].__getitem__

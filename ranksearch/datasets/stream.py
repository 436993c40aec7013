"""Datasets streamed by DataLoader worker processes: image folders and data factories."""

from __future__ import annotations

import abc
import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.utils.data

from .base import DataError, Dataset, check_split, random_device

__all__ = ["StreamedDataset", "check_sample"]

Reader = Callable[[int], Any]
"""Reads sample ``i`` of a source: ``(input tensor, int label)`` when the source is sound."""


def check_sample(sample: Any, where: str, shape: Sequence[int] | None = None) -> str | None:
    """Why ``sample`` is not an ``(input tensor, int label)`` pair (of input shape ``shape``
    when given), in one line starting with ``where``; None when it is one."""
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        return f"{where} is {type(sample).__name__} {sample!r:.40}, not an (input tensor, int " \
               "label) pair"
    x, label = sample
    if not isinstance(x, torch.Tensor):
        return f"{where}: the input is {type(x).__name__}, not a torch.Tensor"
    try:
        operator.index(label)  # int, numpy integers and one-element integer tensors
    except TypeError:
        return f"{where}: the label is {type(label).__name__} {label!r:.40}, not an int"
    if shape is not None and tuple(x.shape) != tuple(shape):
        return f"{where}: input shape {tuple(x.shape)} differs from the others' {tuple(shape)}"
    return None


class _BadBatch(NamedTuple):
    """What a worker hands back instead of a batch it cannot collate: the reason, in one line.

    Returned rather than raised: a worker's exception reaches the calling process with the
    worker's traceback folded into its message.
    """

    message: str


class _Keyed(torch.utils.data.Dataset):
    """A source indexed by ``(sample index, seed)``; the seed fixes the sample's randomness.

    Seeding each sample makes augmentation a function of the batch generator alone,
    independent of the number of worker processes and of their scheduling. The sample comes
    back with its index, so that a bad one can be named.
    """

    def __init__(self, read: Reader) -> None:
        self.read = read

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed would also queue a CUDA seeding,
            # with a formatted stack trace, for every sample (3.4x slower on the example).
            torch.default_generator.manual_seed(seed)
            try:
                return index, self.read(index)
            except Exception as err:  # a damaged file: named in one line by the caller
                return index, _Unreadable(f"{type(err).__name__}: {err}")


class _Unreadable(NamedTuple):
    """What a worker hands back for a sample its reader raised on, with the reason."""

    message: str


def _collate(source: str, shape: tuple[int, ...],
             batch: list[tuple[int, Any]]) -> tuple[torch.Tensor, torch.Tensor] | _BadBatch:
    for index, sample in batch:
        if isinstance(sample, _Unreadable):
            return _BadBatch(f"{source}[{index}] cannot be read: {sample.message}")
        problem = check_sample(sample, f"{source}[{index}]", shape)
        if problem is not None:
            return _BadBatch(problem)
    x = torch.stack([sample[0] for _, sample in batch])
    y = torch.tensor([operator.index(sample[1]) for _, sample in batch], dtype=torch.int64)
    return x, y


class StreamedDataset(Dataset):
    """A dataset whose samples are read, and augmented, by DataLoader worker processes.

    Each split indexes a *source* (a sequence of samples: a class folder tree, a user's
    ``torch.utils.data.Dataset``); subclasses say which, and may post-process a batch on
    ``device`` (:meth:`_finish`). Samples of a training epoch are read under seeds drawn from
    the batch generator, evaluation samples under their own index, so both are reproducible
    whatever ``num_workers``. A sample that is not an ``(input tensor, int label)`` pair of
    ``input_shape`` raises :class:`DataError` naming the split and the sample.
    """

    num_workers: int
    _indices: dict[str, np.ndarray]
    """Indices into the split's source, for each split."""

    @property
    def what(self) -> str:
        """What errors call the data."""
        return self.name

    def len_split(self, split: str) -> int:
        check_split(split)
        return len(self._indices[split])

    @abc.abstractmethod
    def _reader(self, split: str, train: bool) -> tuple[str, Reader]:
        """The name of the source that ``split``'s indices point into (for errors) and the
        function reading one of its samples, augmented when ``train``."""

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of inputs on ``device`` as the model takes it."""
        return x

    def _batches(self, split: str, batch_size: int, train: bool,
                 generator: torch.Generator | None, count: int,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.from_numpy(self._indices[split])
        n = min(len(index), count * batch_size)
        if train:
            draw_device = random_device(generator)
            index = index[torch.randperm(len(index), generator=generator, device=draw_device).cpu()]
            seeds = torch.randint(2**62, (n,), generator=generator, device=draw_device).tolist()
        else:
            seeds = index[:n].tolist()
        # Only the samples of the requested batches are listed, so workers read no extras.
        keys = list(zip(index[:n].tolist(), seeds, strict=True))
        for x, y in self._stream(split, keys, batch_size, train):
            yield self._finish(x), y

    def _stream(self, split: str, keys: list[tuple[int, int]], batch_size: int, train: bool,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Raw batches of the ``(index, seed)`` keys of ``split``'s source, on ``device``."""
        source, read = self._reader(split, train)
        loader = torch.utils.data.DataLoader(
            _Keyed(read),
            batch_size=batch_size,
            sampler=keys,
            num_workers=self.num_workers,
            collate_fn=functools.partial(_collate, source, self.input_shape),
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            if isinstance(batch, _BadBatch):
                raise DataError(f"{self.what}: {split} split: {batch.message}")
            x, y = batch
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

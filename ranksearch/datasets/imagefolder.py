"""ImageNet-style datasets: class folders decoded and augmented by DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from .base import DataError, Dataset, check_split, random_device, split_train

__all__ = ["ImageFolderDataset"]


class _SeededImages(torch.utils.data.Dataset):
    """Image files indexed by ``(sample index, seed)``; the seed fixes the random transform.

    Seeding each sample's transform makes augmentation a function of the batch generator
    alone, independent of the number of worker processes and of their scheduling.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Any, random: bool) -> None:
        self.samples = samples
        self.transform = transform
        self.random = random

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        index, seed = key
        path, target = self.samples[index]
        image = default_loader(path)
        if not self.random:
            return self.transform(image), target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), target


class ImageFolderDataset(Dataset):
    """ImageNet-style data streamed from ``train/`` and ``val/`` class folders.

    Training batches use ``RandomResizedCrop(224)`` and a horizontal flip, evaluation batches
    ``Resize(256)`` and ``CenterCrop(224)``. Workers decode to uint8; the conversion to float
    and normalisation happen on ``device``, so a quarter of the bytes cross to the GPU.

    Args:
        name: canonical dataset name.
        root: folder holding ``train/`` and ``val/``.
        val_fraction, seed, subset: see :func:`load`.
        device: where the batches are delivered.
        num_workers: DataLoader worker processes (0: decode in the calling process).
    """

    def __init__(
        self,
        name: str,
        root: Path,
        val_fraction: float,
        seed: int,
        subset: int | None,
        device: torch.device,
        num_workers: int,
    ) -> None:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
        from torchvision.transforms import v2

        self.name = name
        self.device = device
        self.num_workers = num_workers
        self.input_shape = (3, 224, 224)
        try:
            train = ImageFolder(str(root / "train"))
        except (FileNotFoundError, OSError) as error:
            raise DataError(f"{name}: cannot read {root / 'train'}: {error}") from None
        val_classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
        unknown = sorted(set(val_classes) - set(train.class_to_idx))
        if unknown:
            raise DataError(
                f"{name}: {root / 'val'} has class folders missing from train/: "
                f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
            )
        self.num_classes = len(train.classes)
        self._train_samples = train.samples
        # The test split uses train's class indices, so a val/ lacking a class still lines up.
        self._test_samples = make_dataset(
            str(root / "val"), train.class_to_idx, IMG_EXTENSIONS, allow_empty=True
        )
        train_index, val_index = split_train(np.asarray(train.targets), val_fraction, seed, subset)
        self._indices = {
            "train": train_index,
            "val": val_index,
            "test": np.arange(len(self._test_samples)),
        }
        self._train_transform = v2.Compose(
            [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
        )
        self._eval_transform = v2.Compose(
            [v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor()]
        )
        self._mul, self._sub = self._normaliser(255.0)

    def len_split(self, split: str) -> int:
        check_split(split)
        return len(self._indices[split])

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
            seeds = [0] * n
        # Only the samples of the requested batches are listed, so workers decode no extras.
        keys = list(zip(index[:n].tolist(), seeds, strict=True))
        samples = self._train_samples if split != "test" else self._test_samples
        transform = self._train_transform if train else self._eval_transform
        loader = torch.utils.data.DataLoader(
            _SeededImages(samples, transform, random=train),
            batch_size=batch_size,
            sampler=keys,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield x.float().mul_(self._mul).sub_(self._sub), y

"""Image folders (``train/<class>/*`` and friends, ImageNet's layout) streamed by DataLoader
workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DataError, Stats, split_train
from .stream import Reader, StreamedDataset

__all__ = ["ImageFolderDataset", "STATS_SAMPLES"]

STATS_SAMPLES = 1000
"""At most this many training images estimate the channel statistics when none are given."""
# torchvision's ImageNet evaluation resizes to 256 and crops the central 224.
_CROP_FRACTION = 224 / 256


class _ImageReader:
    """Decodes and transforms image ``i`` of a list of ``(path, class index)`` samples."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Any) -> None:
        self.samples = samples
        self.transform = transform

    def __call__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, target = self.samples[index]
        try:
            image = default_loader(path)
        except (OSError, ValueError) as err:  # truncated, not an image (PIL's errors)
            raise DataError(f"{path}: {err}") from None
        return self.transform(image), target


class ImageFolderDataset(StreamedDataset):
    """Images streamed from class folders: ``root/train/<class>/*``, the test split from
    ``root/<test_folder>/<class>/*``, and ``val`` from ``root/<val_folder>/<class>/*`` or
    else held out of ``train`` (stratified, seeded).

    Images are decoded as RGB. Training batches use ``RandomResizedCrop(image_size)`` and a
    horizontal flip, evaluation batches ``Resize(image_size * 256 / 224)`` and
    ``CenterCrop(image_size)`` (ImageNet's 256 and 224 at the default size). Workers decode to
    uint8; the conversion to float and normalisation happen on ``device``, so a quarter of
    the bytes cross to the GPU.

    Args:
        name: canonical dataset name.
        root: folder holding the split folders.
        val_fraction, seed, subset: see :func:`ranksearch.data.load`; ``val_fraction`` is
            unused when ``val_folder`` is given.
        device: where the batches are delivered.
        num_workers: DataLoader worker processes (0: decode in the calling process).
        image_size: the side of the square inputs.
        stats: per-channel ``(mean, std)`` of the RGB images scaled to [0, 1]. None: estimated
            on at most :data:`STATS_SAMPLES` images of the ``train`` split (a sample drawn by
            ``seed``, evaluation transform), which every process loading the same dataset
            draws alike.
        test_folder: the folder of the test split (ImageNet: ``val``).
        val_folder: the folder of the ``val`` split, if any.

    Raises:
        DataError: a split folder without class folders, a class folder without images
            (named), or test/val classes that ``train/`` lacks.
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
        image_size: int = 224,
        stats: Stats | None = None,
        test_folder: str = "test",
        val_folder: str | None = None,
    ) -> None:
        from torchvision.transforms import v2

        self.name = name
        self.device = device
        self.num_workers = num_workers
        self.input_shape = (3, image_size, image_size)
        classes = _class_folders(name, root / "train")
        class_to_idx = {c: i for i, c in enumerate(classes)}
        self.num_classes = len(classes)
        train_samples = _images(name, root / "train", classes, class_to_idx)
        labels = np.asarray([target for _, target in train_samples])
        # Every other split uses train's class indices, so one lacking a class still lines up.
        self._samples = {"train": train_samples, "test": self._other(root / test_folder,
                                                                     class_to_idx)}
        if val_folder is None:
            train_index, val_index = split_train(labels, val_fraction, seed, subset)
            self._samples["val"] = train_samples
        else:
            train_index = split_train(labels, 0.0, seed, subset)[0]
            self._samples["val"] = self._other(root / val_folder, class_to_idx)
            val_index = np.arange(len(self._samples["val"]))
        self._indices = {"train": train_index, "val": val_index,
                         "test": np.arange(len(self._samples["test"]))}
        self._folders = {"train": root / "train", "val": root / (val_folder or "train"),
                         "test": root / test_folder}
        self._train_transform = v2.Compose([
            v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ])
        self._eval_transform = v2.Compose([
            v2.Resize(round(image_size / _CROP_FRACTION), antialias=True),
            v2.CenterCrop(image_size), v2.PILToTensor(),
        ])
        self.normalisation = stats if stats is not None else self._estimate_stats(seed)
        self._mul, self._sub = self._normaliser(255.0, self.normalisation)

    def _other(self, folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        classes = _class_folders(self.name, folder)
        unknown = sorted(set(classes) - set(class_to_idx))
        if unknown:
            raise DataError(
                f"{self.name}: {folder} has class folders missing from train/: "
                f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
            )
        return _images(self.name, folder, classes, class_to_idx)

    def _reader(self, split: str, train: bool) -> tuple[str, Reader]:
        transform = self._train_transform if train else self._eval_transform
        return str(self._folders[split]), _ImageReader(self._samples[split], transform)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self._mul).sub_(self._sub)

    def _estimate_stats(self, seed: int) -> Stats:
        """Channel means and standard deviations over a seeded sample of ``train``."""
        train = self._indices["train"]
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(train, size=min(STATS_SAMPLES, len(train)), replace=False))
        total = torch.zeros(3, dtype=torch.float64)
        squares = torch.zeros(3, dtype=torch.float64)
        pixels = 0
        keys = [(i, i) for i in chosen.tolist()]
        for x, _ in self._stream("train", keys, batch_size=64, train=False):
            # float64 sums are exact enough at any count of uint8 pixels.
            x = x.cpu().to(torch.float64).div_(255.0)
            total += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
            pixels += x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / pixels
        # A constant channel would divide by zero: floor its deviation at one grey level.
        std = (squares / pixels - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
        return tuple(mean.tolist()), tuple(std.tolist())


def _class_folders(name: str, folder: Path) -> list[str]:
    try:
        classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    except OSError as error:
        raise DataError(f"{name}: cannot read {folder}: {error.strerror or error}") from None
    if not classes:
        raise DataError(f"{name}: {folder} has no class folders; expected "
                        f"{folder}/<class>/<image files>")
    return classes


def _images(name: str, folder: Path, classes: list[str],
            class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """The ``(path, class index)`` of every image in the class folders ``classes`` of
    ``folder``, sorted; a class folder without images raises :class:`DataError`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    samples = make_dataset(str(folder), {c: class_to_idx[c] for c in classes}, IMG_EXTENSIONS,
                           allow_empty=True)
    found = {target for _, target in samples}
    for c in classes:
        if class_to_idx[c] not in found:
            raise DataError(f"{name}: class folder {folder / c} holds no images "
                            f"({', '.join(IMG_EXTENSIONS)})")
    return samples

"""Small datasets held as uint8 tensors on the training device and augmented there."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .base import (
    STATS,
    DataError,
    Dataset,
    check_labels,
    check_split,
    random_device,
    split_train,
)

__all__ = ["InMemoryDataset"]


class InMemoryDataset(Dataset):
    """A small dataset held as uint8 tensors on ``device``, augmented there in batches.

    Args:
        name: canonical dataset name (selects the normalisation statistics).
        train_images, test_images: uint8 arrays ``(N, C, H, W)`` of the official splits.
        train_labels, test_labels: integer class labels.
        num_classes: number of classes.
        scale: the value of a white pixel (255, or 16 for digits).
        pad: zero padding of the random crop (0: no crop).
        flip: random horizontal flips.
        val_fraction, seed, subset: see :func:`load`.
        device: where the tensors and batches live.
    """

    def __init__(
        self,
        name: str,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        num_classes: int,
        scale: float,
        pad: int,
        flip: bool,
        val_fraction: float,
        seed: int,
        subset: int | None,
        device: torch.device,
    ) -> None:
        for split, images, labels in (("train", train_images, train_labels),
                                      ("test", test_images, test_labels)):
            check_labels(f"{name}: the {split} split", labels, num_classes)
            if images.shape[1:] != train_images.shape[1:]:
                raise DataError(f"{name}: test images are {tuple(images.shape[1:])}, train "
                                f"images {tuple(train_images.shape[1:])}")
        self.name = name
        self.num_classes = num_classes
        self.input_shape = tuple(train_images.shape[1:])  # type: ignore[assignment]
        self.device = device
        self.pad = pad
        self.flip = flip
        train_index, val_index = split_train(train_labels, val_fraction, seed, subset)
        train_x = torch.from_numpy(np.ascontiguousarray(train_images)).to(device)
        train_y = torch.from_numpy(train_labels.astype(np.int64)).to(device)
        test_x = torch.from_numpy(np.ascontiguousarray(test_images)).to(device)
        test_y = torch.from_numpy(test_labels.astype(np.int64)).to(device)
        # train and val index one shared tensor, so the held-out part costs no extra memory.
        self._splits = {
            "train": (train_x, train_y, torch.from_numpy(train_index).to(device)),
            "val": (train_x, train_y, torch.from_numpy(val_index).to(device)),
            "test": (test_x, test_y, torch.arange(len(test_y), device=device)),
        }
        self.normalisation = STATS[name]
        self._mul, self._sub = self._normaliser(scale, self.normalisation)

    def len_split(self, split: str) -> int:
        check_split(split)
        return len(self._splits[split][2])

    def _batches(self, split: str, batch_size: int, train: bool,
                 generator: torch.Generator | None, count: int,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels, index = self._splits[split]
        if train:
            perm = torch.randperm(len(index), generator=generator, device=random_device(generator))
            index = index[perm.to(self.device)]
        for b in range(count):
            batch = index[b * batch_size : (b + 1) * batch_size]
            x = images[batch]
            if train:
                x = self.augment(x, generator)
            yield x.float().mul_(self._mul).sub_(self._sub), labels[batch]

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random crop (zero padding ``pad``) and optional horizontal flip of a uint8 batch.

        Both happen in one gather: the batch is padded once, and each sample reads its
        ``H×W`` window at its own offset, with its columns reversed when it is flipped. This
        is about four times faster on the CPU than advanced indexing with four index tensors
        and costs one small host-to-device copy of the random draws per batch.
        """
        if self.pad == 0 and not self.flip:
            return x
        b, c, h, w = x.shape
        p = self.pad
        draw_device = random_device(generator)
        shifts = torch.randint(0, 2 * p + 1, (b, 2), generator=generator, device=draw_device)
        if self.flip:
            flips = torch.randint(0, 2, (b, 1), generator=generator, device=draw_device)
        else:
            flips = torch.zeros((b, 1), dtype=torch.long, device=draw_device)
        shifts, flips = shifts.to(x.device), flips.to(x.device)
        columns = torch.arange(w, device=x.device)
        columns = shifts[:, 1:] + torch.where(flips.bool(), w - 1 - columns, columns)
        rows = shifts[:, :1] + torch.arange(h, device=x.device)
        padded = F.pad(x, (p, p, p, p))
        flat = (rows[:, :, None] * (w + 2 * p) + columns[:, None, :]).view(b, 1, h * w)
        out = padded.view(b, c, -1).gather(2, flat.expand(b, c, h * w))
        return out.view(b, c, h, w)

"""Datasets: loading, splits, and batched augmentation on the training device.

:func:`load` returns a :class:`Dataset` with three splits:

- ``"train"``: the official training split minus the held-out ``val`` part (optionally cut to
  ``subset`` samples for short search schedules);
- ``"val"``: a stratified ``val_fraction`` of the official training split, chosen by ``seed``;
  the search ranks trials on it;
- ``"test"``: the official test split, for final numbers only.

Datasets:

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1×8×8, 10 classes, 1797 images;
  no download). It has no official test split, so a stratified 20 % of it is the test split,
  always drawn with seed 0 whatever ``seed`` is, so that the test split never changes.
- ``fashion-mnist``: the four gzipped (or plain) IDX files, read with numpy from ``data_dir``,
  from torchvision's layout ``data_dir/FashionMNIST/raw``, or from Debian's
  ``dataset-fashion-mnist`` package at ``/usr/share/datasets/fashion-mnist`` (1×28×28).
- ``cifar10``, ``cifar100``: torchvision's on-disk python format (``cifar-10-batches-py``,
  ``cifar-100-python``) under ``data_dir`` (3×32×32). The format is Python pickles; they are
  read with an unpickler that only accepts numpy arrays, so a file cannot run code.
- ``imagenet``: ImageFolder trees ``train/<class>/*`` and ``val/<class>/*`` under ``data_dir``
  (3×224×224), decoded and augmented by DataLoader worker processes (it cannot sit in
  memory). The official ``val`` folder is the ``test`` split.

When ``data_dir`` is None the directory ``./data`` (relative to the working directory) is
searched. The small datasets are held in memory as uint8 tensors on ``device`` and augmented
there a whole batch at a time (random crop with zero padding, and a horizontal flip except for
digits, which are not mirror-symmetric), then normalised with fixed per-dataset channel
means and standard deviations.

A dataset that cannot be found raises :class:`DataError` with one line naming every place
that was searched and how to get the data.
"""

from __future__ import annotations

import abc
import gzip
import math
import pickle
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data

from .errors import UserError

__all__ = ["DATASETS", "DataError", "Dataset", "InMemoryDataset", "ImageFolderDataset", "load"]

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagenet")
SPLITS = ("train", "val", "test")
DEFAULT_DATA_DIR = Path("data")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TEST_FRACTION = 0.2

# Channel statistics of the training images, scaled to [0, 1].
# digits and Fashion-MNIST: computed over their training images; CIFAR: the usual values
# (per-pixel standard deviations, not the often-quoted 0.2023/0.1994/0.2010); ImageNet:
# torchvision's.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(UserError):
    """A dataset that is unknown, missing or malformed; the message is one line."""


# --------------------------------------------------------------------------------------------
# Splits


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
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


def _split_train(
    labels: np.ndarray, val_fraction: float, seed: int, subset: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices into the official training split.

    ``val`` is the same for every ``subset``, so short search schedules are ranked on the
    same samples as full ones.
    """
    order = _stratified_order(labels, seed)
    n_val = round(val_fraction * len(labels))
    stop = len(labels) if subset is None else n_val + subset
    return np.sort(order[n_val:stop]), np.sort(order[:n_val])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------
# Datasets


def _random_device(generator: torch.Generator | None) -> torch.device:
    # Random numbers are drawn on the generator's device, so that a CPU generator gives the
    # same shuffles and augmentations whichever device the data sits on.
    return generator.device if generator is not None else torch.device("cpu")


class Dataset(abc.ABC):
    """A dataset with ``train``, ``val`` and ``test`` splits that yields normalised batches.

    Attributes:
        name: canonical dataset name (one of :data:`DATASETS`).
        input_shape: ``(C, H, W)`` of one input as the model sees it.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        device: where the yielded batches live.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device

    @abc.abstractmethod
    def len_split(self, split: str) -> int:
        """Number of samples in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""

    @abc.abstractmethod
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

    def num_batches(
        self, split: str, batch_size: int, train: bool, limit: int | None = None
    ) -> int:
        """How many batches :meth:`batches` yields with these arguments (for LR schedules)."""
        n = self.len_split(split)
        count = (max(1, n // batch_size) if n else 0) if train else math.ceil(n / batch_size)
        return count if limit is None else min(count, limit)

    def _normaliser(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        # (x / scale - mean) / std == x * mul - sub, one fused multiply-subtract per batch.
        mean, std = (torch.tensor(v, device=self.device).view(-1, 1, 1) for v in _STATS[self.name])
        return 1.0 / (scale * std), mean / std

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s} {self.len_split(s)}" for s in SPLITS)
        return (
            f"{type(self).__name__}({self.name}: {sizes}; input {self.input_shape}, "
            f"{self.num_classes} classes, on {self.device})"
        )


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
        self.name = name
        self.num_classes = num_classes
        self.input_shape = tuple(train_images.shape[1:])  # type: ignore[assignment]
        self.device = device
        self.pad = pad
        self.flip = flip
        train_index, val_index = _split_train(train_labels, val_fraction, seed, subset)
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
        self._mul, self._sub = self._normaliser(scale)

    def len_split(self, split: str) -> int:
        _check_split(split)
        return len(self._splits[split][2])

    def batches(
        self,
        split: str,
        batch_size: int,
        train: bool,
        generator: torch.Generator | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _check_split(split)
        images, labels, index = self._splits[split]
        if train:
            perm = torch.randperm(len(index), generator=generator, device=_random_device(generator))
            index = index[perm.to(self.device)]
        for b in range(self.num_batches(split, batch_size, train, limit)):
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
        draw_device = _random_device(generator)
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
        train_index, val_index = _split_train(np.asarray(train.targets), val_fraction, seed, subset)
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
        _check_split(split)
        return len(self._indices[split])

    def batches(
        self,
        split: str,
        batch_size: int,
        train: bool,
        generator: torch.Generator | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _check_split(split)
        index = torch.from_numpy(self._indices[split])
        count = self.num_batches(split, batch_size, train, limit)
        n = min(len(index), count * batch_size)
        if train:
            draw_device = _random_device(generator)
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


# --------------------------------------------------------------------------------------------
# Readers


def _roots(data_dir: str | Path | None) -> list[Path]:
    return [Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR]


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when the name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    # Magic number: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != math.prod(dims):
        raise DataError(f"{path} holds {data.size} values, its header says {dims}")
    # A copy: torch warns about (and must not write through) numpy views of read-only bytes.
    return data.reshape(dims).copy()


def _idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(data_dir: str | Path | None, **kwargs: Any) -> Dataset:
    candidates = [d for root in _roots(data_dir) for d in (root, root / "FashionMNIST" / "raw")]
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    for directory in candidates:
        files = {key: _idx_file(directory, stem) for key, stem in _FASHION_FILES.items()}
        if all(files.values()):
            arrays = {key: _read_idx(path) for key, path in files.items()}  # type: ignore[arg-type]
            break
    else:
        raise DataError(
            "fashion-mnist not found: looked for "
            f"{', '.join(s + '[.gz]' for s in _FASHION_FILES.values())} in "
            f"{', '.join(str(d.absolute()) for d in candidates)}; install Debian's package "
            "(apt-get install dataset-fashion-mnist), or point --data-dir (data.dir in the "
            "YAML) at a folder holding those files, e.g. one where "
            "torchvision.datasets.FashionMNIST(root, download=True) was run on a machine "
            "with network"
        )
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"fashion-mnist in {directory}: {split} images {images.shape} do not match "
                f"labels {labels.shape}"
            )
    return InMemoryDataset(
        "fashion-mnist",
        arrays["train_images"][:, None],
        arrays["train_labels"],
        arrays["test_images"][:, None],
        arrays["test_labels"],
        num_classes=10,
        scale=255.0,
        pad=2,
        flip=True,
        **kwargs,
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            # latin1: the official files are Python 2 pickles (as torchvision reads them).
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        images = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise DataError(f"cannot read CIFAR batch {path}: {error!r}") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise DataError(f"CIFAR batch {path}: data {images.shape} / labels {labels.shape}")
    # Rows are the R, G and B planes of a 32×32 image in turn: already channel-first.
    return images.reshape(-1, 3, 32, 32), labels


def _load_cifar(name: str, data_dir: str | Path | None, **kwargs: Any) -> Dataset:
    if name == "cifar10":
        folder, train_files, test_file, label_key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "labels",
        )
        num_classes, getter = 10, "CIFAR10"
    else:
        folder, train_files, test_file, label_key = (
            "cifar-100-python",
            ["train"],
            "test",
            "fine_labels",
        )
        num_classes, getter = 100, "CIFAR100"
    candidates = [d for root in _roots(data_dir) for d in (root / folder, root)]
    for directory in candidates:
        if all((directory / f).is_file() for f in [*train_files, test_file]):
            break
    else:
        raise DataError(
            f"{name} not found: looked for {folder}/ ({', '.join([*train_files, test_file])}) "
            f"in {', '.join(str(d.absolute()) for d in candidates)}; point --data-dir "
            f"(data.dir in the YAML) at the folder holding {folder}/, after downloading it "
            f"with torchvision.datasets.{getter}(root, download=True) on a machine with network"
        )
    train = [_read_cifar_batch(directory / f, label_key) for f in train_files]
    test_images, test_labels = _read_cifar_batch(directory / test_file, label_key)
    return InMemoryDataset(
        name,
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        num_classes=num_classes,
        scale=255.0,
        pad=4,
        flip=True,
        **kwargs,
    )


def _load_digits(**kwargs: Any) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are the integers 0..16: exact in uint8, with 16 as white.
    images = bunch.images.astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = _stratified_order(labels, seed=0)
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return InMemoryDataset(
        "digits",
        images[train],
        labels[train],
        images[test],
        labels[test],
        num_classes=10,
        scale=16.0,
        pad=1,
        flip=False,
        **kwargs,
    )


def _load_imagenet(data_dir: str | Path | None, num_workers: int, **kwargs: Any) -> Dataset:
    candidates = [d for root in _roots(data_dir) for d in (root, root / "imagenet")]
    for directory in candidates:
        if (directory / "train").is_dir() and (directory / "val").is_dir():
            return ImageFolderDataset("imagenet", directory, num_workers=num_workers, **kwargs)
    raise DataError(
        "imagenet not found: looked for train/ and val/ class folders in "
        f"{', '.join(str(d.absolute()) for d in candidates)}; point --data-dir (data.dir in the "
        "YAML) at an ILSVRC-2012 folder with train/<class>/*.JPEG and val/<class>/*.JPEG "
        "(val sorted into class folders); it cannot be downloaded automatically: get it from "
        "https://image-net.org"
    )


def load(
    name: str,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    subset: int | None = None,
    num_workers: int = 2,
) -> Dataset:
    """Load a dataset with its ``train`` / ``val`` / ``test`` splits.

    Args:
        name: one of :data:`DATASETS` (case and ``_``/``-`` are not significant).
        data_dir: where to look for the files (default ``./data``); Fashion-MNIST is also
            found in Debian's ``/usr/share/datasets/fashion-mnist``; digits needs nothing.
        val_fraction: share of the official training split held out as ``val`` (stratified),
            in ``[0, 1)``.
        seed: chooses the ``val`` split and the ``subset`` (the digits test split is fixed).
        device: where the in-memory datasets live and where every batch is delivered.
        subset: keep only this many ``train`` samples (stratified, chosen by ``seed``; all of
            them if there are fewer); ``val`` and ``test`` are unchanged.
        num_workers: DataLoader worker processes for ``imagenet`` (ignored otherwise).

    Raises:
        DataError: unknown name, or the files are missing or malformed.
        ValueError: ``val_fraction`` or ``subset`` out of range.
    """
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of samples, got {subset}")
    split_args: dict[str, Any] = {
        "val_fraction": val_fraction,
        "seed": seed,
        "subset": subset,
        "device": torch.device(device),
    }
    if key == "digits":
        return _load_digits(**split_args)
    if data_dir is not None and not Path(data_dir).is_dir():
        # A folder the user named explicitly must exist: falling back to another copy (e.g.
        # Debian's Fashion-MNIST) would silently train on data the user did not ask for.
        raise DataError(f"data directory {data_dir} does not exist (data.dir or --data-dir)")
    if key == "fashion-mnist":
        return _load_fashion_mnist(data_dir, **split_args)
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, data_dir, **split_args)
    return _load_imagenet(data_dir, num_workers, **split_args)

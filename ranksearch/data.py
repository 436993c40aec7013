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
- ``imagefolder``: the user's images, ``train/<class>/*`` and ``test/<class>/*`` under
  ``data_dir``, with ``val/<class>/*`` as the ``val`` split when present (else ``val`` is held
  out of ``train``), decoded as RGB and sized to ``image_size`` (default 224) like ImageNet,
  normalised with the given ``mean``/``std`` or with statistics estimated on the training
  split (:class:`ImageFolderDataset`).
- a data factory, named ``"package.module:function"`` or ``"path/to/file.py:function"``: the
  user's function, called with ``**args``, returns ``{"train": Dataset, "test": Dataset}``
  and optionally ``"val"`` (``torch.utils.data.Dataset`` objects yielding ``(input tensor,
  int label)``), which are batched as they are (:class:`FactoryDataset`).

When ``data_dir`` is None the directory ``./data`` (relative to the working directory) is
searched. The small datasets are held in memory as uint8 tensors on ``device`` and augmented
there a whole batch at a time (random crop with zero padding, and a horizontal flip except for
digits, which are not mirror-symmetric), then normalised with fixed per-dataset channel
means and standard deviations. Image folders and factories are read by DataLoader worker
processes, each sample under its own seed, so that batches do not depend on how many.

A dataset that cannot be found raises :class:`DataError` with one line naming every place
that was searched and how to get the data; malformed data (an empty class folder, a factory
returning the wrong type, a bad sample) raises it with one line naming the problem, and a
factory that cannot be imported raises :class:`~ranksearch.imports.ImportFailed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import DATASETS, DatasetName
from .datasets.base import SPLITS, STATS, DataError, Dataset, stratified_order
from .datasets.factory import FactoryDataset, from_factory
from .datasets.files import idx_file, read_cifar_batch, read_idx
from .datasets.imagefolder import ImageFolderDataset
from .datasets.memory import InMemoryDataset

__all__ = ["DATASETS", "SPLITS", "DataError", "Dataset", "DatasetName", "InMemoryDataset",
           "ImageFolderDataset", "FactoryDataset", "load"]

DEFAULT_DATA_DIR = Path("data")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TEST_FRACTION = 0.2
DEFAULT_IMAGE_SIZE = 224
# Where users name the data folder: the error messages tell them.
DIR_FIELD = "data.dir in the YAML (data_dir= in Python)"

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _roots(data_dir: str | Path | None) -> list[Path]:
    return [Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR]


def _load_fashion_mnist(data_dir: str | Path | None, **kwargs: Any) -> Dataset:
    candidates = [d for root in _roots(data_dir) for d in (root, root / "FashionMNIST" / "raw")]
    if data_dir is None:  # a folder the user named holds the data, or it is an error
        candidates.append(FASHION_MNIST_SYSTEM_DIR)
    for directory in candidates:
        files = {key: idx_file(directory, stem) for key, stem in _FASHION_FILES.items()}
        if all(files.values()):
            arrays = {key: read_idx(path) for key, path in files.items()}  # type: ignore[arg-type]
            break
    else:
        raise DataError(
            "fashion-mnist not found: looked for "
            f"{', '.join(s + '[.gz]' for s in _FASHION_FILES.values())} in "
            f"{', '.join(str(d.absolute()) for d in candidates)}; install Debian's package "
            f"(apt-get install dataset-fashion-mnist), or set {DIR_FIELD} to a folder "
            "holding those files, e.g. one where "
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
    wanted = [*train_files, test_file]
    missing = {d: [f for f in wanted if not (d / f).is_file()] for d in candidates}
    for directory in candidates:
        if not missing[directory]:
            break
    else:
        # A folder holding some of the files is named with what it lacks.
        lacks = "".join(f"; {d.absolute()} lacks {', '.join(files)}"
                        for d, files in missing.items() if len(files) < len(wanted))
        raise DataError(
            f"{name} not found: looked for {folder}/ ({', '.join(wanted)}) "
            f"in {', '.join(str(d.absolute()) for d in candidates)}{lacks}; set {DIR_FIELD} "
            f"to the folder holding {folder}/, after downloading it "
            f"with torchvision.datasets.{getter}(root, download=True) on a machine with network"
        )
    train = [read_cifar_batch(directory / f, label_key) for f in train_files]
    test_images, test_labels = read_cifar_batch(directory / test_file, label_key)
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
    order = stratified_order(labels, seed=0)
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
            return ImageFolderDataset("imagenet", directory, num_workers=num_workers,
                                      stats=STATS["imagenet"], test_folder="val", **kwargs)
    raise DataError(
        "imagenet not found: looked for train/ and val/ class folders in "
        f"{', '.join(str(d.absolute()) for d in candidates)}; set {DIR_FIELD} to an "
        "ILSVRC-2012 folder with train/<class>/*.JPEG and val/<class>/*.JPEG "
        "(val sorted into class folders); it cannot be downloaded automatically: get it from "
        "https://image-net.org"
    )


def _load_imagefolder(data_dir: str | Path | None, num_workers: int, image_size: int | None,
                      mean: list[float] | None, std: list[float] | None,
                      **kwargs: Any) -> Dataset:
    root = _roots(data_dir)[0]
    for folder in ("train", "test"):
        if not (root / folder).is_dir():
            raise DataError(
                f"imagefolder: no {folder}/ folder in {root.absolute()}; set {DIR_FIELD} to a "
                "folder holding train/<class>/* and test/<class>/* (and optionally val/<class>/*)"
            )
    stats = None
    if mean is not None or std is not None:
        if mean is None or std is None or len(mean) != 3 or len(std) != 3:
            raise DataError("imagefolder: data.mean and data.std take 3 values each (R, G, B: "
                            "images are read as RGB), both or neither (then both are computed)")
        stats = (tuple(mean), tuple(std))
    return ImageFolderDataset(
        "imagefolder", root, num_workers=num_workers,
        image_size=image_size or DEFAULT_IMAGE_SIZE, stats=stats, test_folder="test",
        val_folder="val" if (root / "val").is_dir() else None, **kwargs,
    )


def load(
    name: str,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    subset: int | None = None,
    num_workers: int = 2,
    args: dict[str, Any] | None = None,
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> Dataset:
    """Load a dataset with its ``train`` / ``val`` / ``test`` splits.

    Args:
        name: one of :data:`DATASETS` (case and ``_``/``-`` are not significant), or a data
            factory ``"package.module:function"`` / ``"path/to/file.py:function"`` (a path
            relative to the working directory).
        data_dir: where to look for the files (default ``./data``); Fashion-MNIST is also
            found in Debian's ``/usr/share/datasets/fashion-mnist``; digits needs nothing.
            For ``imagefolder``: the folder holding ``train/``, ``test/`` and maybe ``val/``.
        val_fraction: share of the training split held out as ``val`` (stratified), in
            ``(0, 1)``; unused when the data has a ``val`` split of its own (an image folder's
            ``val/``, a factory's ``"val"``).
        seed: chooses the ``val`` split and the ``subset`` (the digits test split is fixed),
            and the images that estimate an image folder's statistics.
        device: where the in-memory datasets live and where every batch is delivered.
        subset: keep only this many ``train`` samples (stratified, chosen by ``seed``; all of
            them if there are fewer); ``val`` and ``test`` are unchanged.
        num_workers: DataLoader worker processes for ``imagenet``, ``imagefolder`` and data
            factories (ignored otherwise; 0 reads in the calling process).
        args: keyword arguments of a data factory (factories only).
        image_size: ``imagefolder``: the side of the square inputs (default 224).
        mean, std: ``imagefolder``: per-channel (R, G, B) statistics of the images scaled to
            [0, 1], both or neither; default: estimated on the training split.

    Raises:
        DataError: unknown name, the files are missing or malformed, a factory fails or
            returns something else than ``train``/``test`` datasets of (tensor, int) samples,
            an argument that the dataset does not take, or a ``std`` that is not positive.
        ImportFailed: a factory that cannot be imported.
        ValueError: ``val_fraction`` or ``subset`` out of range.
    """
    factory = ":" in name
    key = name if factory else name.lower().replace("_", "-")
    if not factory and key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}, or a "
                        "data factory 'package.module:function' or 'path/to/file.py:function'")
    if not 0 < val_fraction < 1:  # as the YAML schema: an empty val would score every model 0
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if std is not None and not all(v > 0 for v in std):
        raise DataError(f"data.std: every value must be positive, got {std}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of samples, got {subset}")
    if args and not factory:
        raise DataError(f"data.args applies to data factories ('module:function'), not to {key}")
    image_args = {"image_size": image_size, "mean": mean, "std": std}
    if key != "imagefolder" and any(v is not None for v in image_args.values()):
        given = ", ".join(f"data.{k}" for k, v in image_args.items() if v is not None)
        raise DataError(f"{given} applies to imagefolder only, not to {key}")
    split_args: dict[str, Any] = {
        "val_fraction": val_fraction,
        "seed": seed,
        "subset": subset,
        "device": torch.device(device),
    }
    if factory:
        return from_factory(name, args, num_workers=num_workers, **split_args)
    if key == "digits":
        return _load_digits(**split_args)
    if data_dir is not None and not Path(data_dir).is_dir():
        # A folder the user named explicitly must exist: falling back to another copy (e.g.
        # Debian's Fashion-MNIST) would silently train on data the user did not ask for.
        raise DataError(f"data directory {data_dir} does not exist ({DIR_FIELD})")
    if key == "fashion-mnist":
        return _load_fashion_mnist(data_dir, **split_args)
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, data_dir, **split_args)
    if key == "imagefolder":
        return _load_imagefolder(data_dir, num_workers, **image_args, **split_args)
    return _load_imagenet(data_dir, num_workers, **split_args)

"""Readers of the on-disk dataset formats: IDX files (MNIST's) and CIFAR's pickles."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .base import DataError

__all__ = ["read_idx", "idx_file", "read_cifar_batch"]


def read_idx(path: Path) -> np.ndarray:
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
    if len(raw) < header:
        raise DataError(f"{path} is cut short inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != math.prod(dims):
        raise DataError(f"{path} holds {data.size} values, its header says {dims}")
    # A copy: torch warns about (and must not write through) numpy views of read-only bytes.
    return data.reshape(dims).copy()


def idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


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


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
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

"""Tests of ranksearch.data on digits, real Fashion-MNIST when installed, and tiny fake files
in the exact on-disk formats of Fashion-MNIST (IDX), CIFAR-10/100 (torchvision's python
pickles) and ImageNet (ImageFolder)."""

from __future__ import annotations

import datetime
import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranksearch import data
from ranksearch.data import DataError, load
from ranksearch.datasets.base import split_train


def _epoch(ds: data.Dataset, split: str, batch_size: int, train: bool, seed: int | None = None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    batches = list(ds.batches(split, batch_size, train, generator=generator))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion(directory: Path, gz: bool, n_train: int = 100, n_test: int = 20) -> dict:
    """Random images (so every image is unique) with balanced labels."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        _write_idx(directory / (stem + (".gz" if gz else "")), array)
    return arrays


def _cifar_entry(n: int, label_key: str, offset: int, classes: int) -> dict:
    rng = np.random.default_rng(offset)
    return {
        "batch_label": "fake",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [(offset + i) % classes for i in range(n)],
        "filenames": [f"img{offset + i}.png" for i in range(n)],
    }


def _fake_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        entry = _cifar_entry(10, "labels", offset=10 * i, classes=10)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_entry(10, "labels", 0, 10)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    return folder


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return load("digits")


@pytest.fixture
def fashion(tmp_path) -> data.Dataset:
    _fake_fashion(tmp_path, gz=True)
    return load("fashion-mnist", data_dir=tmp_path, val_fraction=0.2)


# ------------------------------------------------------------------------------------------
# digits: shapes, normalisation, splits


def test_digits_shapes_and_dtypes(digits) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert sum(digits.len_split(s) for s in ("train", "val", "test")) == 1797
    assert digits.len_split("test") == round(0.2 * 1797)
    x, y = next(digits.batches("train", 32, train=True))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert x.device == y.device == torch.device("cpu")


def test_digits_normalisation(digits) -> None:
    x, _ = _epoch(digits, "train", 512, train=False)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    # Background pixels (value 0) map to -mean/std exactly.
    assert torch.isclose(x.min(), torch.tensor(-0.3053 / 0.3760))


def test_digits_test_split_ignores_seed(digits) -> None:
    other = load("digits", seed=3)
    assert torch.equal(_epoch(digits, "test", 100, False)[0], _epoch(other, "test", 100, False)[0])
    assert not torch.equal(
        _epoch(digits, "val", 100, False)[0], _epoch(other, "val", 100, False)[0]
    )


def test_val_stratified(digits) -> None:
    _, y_val = _epoch(digits, "val", 100, train=False)
    _, y_all = _epoch(digits, "train", 100, train=False)
    y_all = torch.cat([y_all, y_val])
    expected = torch.bincount(y_all) * len(y_val) / len(y_all)
    assert (torch.bincount(y_val, minlength=10) - expected).abs().max() <= 1


def test_split_train_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val = split_train(labels, val_fraction=0.2, seed=7, subset=None)
    assert len(val) == 20 and len(train) == 80
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    assert np.bincount(labels[val]).tolist() == [10, 6, 3, 1]
    small, same_val = split_train(labels, val_fraction=0.2, seed=7, subset=40)
    assert np.array_equal(same_val, val) and set(small) <= set(train) and len(small) == 40
    assert np.abs(np.bincount(labels[small]) - np.array([20, 12, 6, 2])).max() <= 1
    other_train, other_val = split_train(labels, val_fraction=0.2, seed=8, subset=None)
    assert not np.array_equal(other_val, val)


# ------------------------------------------------------------------------------------------
# batching and augmentation


def test_eval_batches_cover_split_in_order(fashion) -> None:
    n = fashion.len_split("train")
    batches = list(fashion.batches("train", 32, train=False))
    assert [len(y) for _, y in batches] == [32] * (n // 32) + [n % 32]
    assert fashion.num_batches("train", 32, train=False) == len(batches)
    again = _epoch(fashion, "train", 7, train=False)
    assert torch.equal(torch.cat([x for x, _ in batches]), again[0])


def test_train_batches_drop_partial_and_limit(fashion) -> None:
    n = fashion.len_split("train")
    assert [len(y) for _, y in fashion.batches("train", 32, train=True)] == [32] * (n // 32)
    assert len(list(fashion.batches("train", 32, train=True, limit=1))) == 1
    # A split smaller than one batch still gives one (smaller) batch.
    assert [len(y) for _, y in fashion.batches("val", 64, train=True)] == [fashion.len_split("val")]


def test_train_reproducible_and_changes_across_epochs(fashion) -> None:
    first = _epoch(fashion, "train", 16, train=True, seed=1)
    second = _epoch(fashion, "train", 16, train=True, seed=1)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    generator = torch.Generator().manual_seed(1)
    epoch1 = torch.cat([x for x, _ in fashion.batches("train", 16, True, generator)])
    epoch2 = torch.cat([x for x, _ in fashion.batches("train", 16, True, generator)])
    assert torch.equal(epoch1, first[0]) and not torch.equal(epoch1, epoch2)


def test_augmentation_differs_for_the_same_images(fashion) -> None:
    images = fashion._splits["train"][0][:64]
    generator = torch.Generator().manual_seed(0)
    assert not torch.equal(fashion.augment(images, generator), fashion.augment(images, generator))


def _reference_augment(x: torch.Tensor, pad: int, flip: bool, seed: int) -> torch.Tensor:
    """Per-sample crop and flip with the same random draws as the batched gather."""
    generator = torch.Generator().manual_seed(seed)
    shifts = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator)
    flips = torch.randint(0, 2, (len(x), 1), generator=generator) if flip else None
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    out = []
    for i, (dy, dx) in enumerate(shifts.tolist()):
        crop = padded[i, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        out.append(crop.flip(-1) if flips is not None and flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("name", ["fashion-mnist", "digits"])
def test_batched_crop_matches_per_sample_crop(name, fashion, digits) -> None:
    ds = fashion if name == "fashion-mnist" else digits
    images = ds._splits["train"][0][:50]
    out = ds.augment(images, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, _reference_augment(images, ds.pad, ds.flip, seed=3))
    assert (ds.pad, ds.flip) == ((2, True) if name == "fashion-mnist" else (1, False))


# ------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_fashion_fake_files(tmp_path, layout) -> None:
    if layout == "flat-gz":
        arrays = _fake_fashion(tmp_path, gz=True)
    else:
        arrays = _fake_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    ds = load("fashion-mnist", data_dir=tmp_path, val_fraction=0.2, seed=1)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (80, 20, 20)
    x, y = _epoch(ds, "test", 8, train=False)
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None]
    assert torch.allclose(x, (raw / 255 - 0.2860) / 0.3530, atol=1e-5)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # Random images are unique: val and train must not share one.
    train_x, _ = _epoch(ds, "train", 50, train=False)
    val_x, y_val = _epoch(ds, "val", 50, train=False)
    assert not {tuple(r.tolist()) for r in train_x.flatten(1)} & {
        tuple(r.tolist()) for r in val_x.flatten(1)
    }
    assert torch.bincount(y_val).tolist() == [2] * 10


def test_fashion_subset(tmp_path) -> None:
    _fake_fashion(tmp_path, gz=True)
    full = load("fashion-mnist", data_dir=tmp_path, val_fraction=0.2)
    small = load("fashion-mnist", data_dir=tmp_path, val_fraction=0.2, subset=30)
    assert small.len_split("train") == 30 and small.len_split("test") == 20
    assert torch.equal(_epoch(full, "val", 64, False)[0], _epoch(small, "val", 64, False)[0])
    counts = torch.bincount(_epoch(small, "train", 64, False)[1], minlength=10)
    assert counts.tolist() == [3] * 10


def test_fashion_corrupt_file(tmp_path) -> None:
    _fake_fashion(tmp_path, gz=True)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01junk")
    with pytest.raises(DataError, match="not an IDX file"):
        load("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(
    not (data.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_fashion_real(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./data: Debian's copy
    ds = load("fashion-mnist")
    assert ds.len_split("train") + ds.len_split("val") == 60_000
    assert ds.len_split("val") == 6_000 and ds.len_split("test") == 10_000
    x, y = next(ds.batches("test", 10_000, train=False))
    assert x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [1000] * 10
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


# ------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_fake(tmp_path) -> None:
    folder = _fake_cifar10(tmp_path)
    ds = load("cifar10", data_dir=tmp_path, val_fraction=0.2)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (40, 10, 10)
    x, y = _epoch(ds, "test", 4, train=False)
    entry = pickle.loads((folder / "test_batch").read_bytes())
    raw = torch.from_numpy(entry["data"].reshape(-1, 3, 32, 32)).float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)
    assert y.tolist() == entry["labels"]
    x_train, _ = next(ds.batches("train", 8, train=True, generator=torch.Generator()))
    assert x_train.shape == (8, 3, 32, 32)
    # The folder itself may also be given as data_dir.
    assert load("cifar10", data_dir=folder).len_split("test") == 10


def test_a_partial_cifar_folder_is_named_with_what_it_lacks(tmp_path) -> None:
    folder = _fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=re.escape(f"{folder.absolute()} lacks data_batch_3;")):
        load("cifar10", data_dir=tmp_path)


def test_cifar100_fake(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 200), ("test", 50)):
        entry = _cifar_entry(n, "fine_labels", 0, 100)
        entry["coarse_labels"] = [label // 5 for label in entry["fine_labels"]]
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    ds = load("cifar100", data_dir=tmp_path, val_fraction=0.5)
    assert ds.num_classes == 100 and ds.input_shape == (3, 32, 32)
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (100, 100, 50)
    _, y_val = _epoch(ds, "val", 64, train=False)
    assert torch.bincount(y_val, minlength=100).tolist() == [1] * 100


def test_cifar_refuses_arbitrary_pickles(tmp_path) -> None:
    folder = _fake_cifar10(tmp_path)
    entry = _cifar_entry(10, "labels", 0, 10)
    entry["date"] = datetime.date(2020, 1, 1)  # any class outside numpy arrays is refused
    (folder / "test_batch").write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError, match="refusing to unpickle datetime.date"):
        load("cifar10", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------
# ImageNet (ImageFolder)


@pytest.fixture
def fake_imagenet(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 5), ("val", 2)):
        for c, cls in enumerate(("n01", "n02", "n03")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20 + c, 24, 3), dtype=np.uint8)
                suffix = "JPEG" if i % 2 else "png"
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.{suffix}")
    return tmp_path


def test_imagenet_fake(fake_imagenet) -> None:
    ds = load("imagenet", data_dir=fake_imagenet, val_fraction=0.2, num_workers=0)
    assert ds.input_shape == (3, 224, 224) and ds.num_classes == 3
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (12, 3, 6)
    x, y = _epoch(ds, "test", 4, train=False)
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.bincount(_epoch(ds, "val", 4, train=False)[1]).tolist() == [1, 1, 1]
    first = _epoch(ds, "train", 4, train=True, seed=5)
    assert first[0].shape == (12, 3, 224, 224)
    assert torch.equal(first[0], _epoch(ds, "train", 4, train=True, seed=5)[0])
    assert len(list(ds.batches("train", 5, train=True, limit=1))) == 1


def test_imagenet_augmentation_independent_of_workers(fake_imagenet) -> None:
    in_process = load("imagenet", data_dir=fake_imagenet, num_workers=0)
    with_worker = load("imagenet", data_dir=fake_imagenet, num_workers=1)
    a = _epoch(in_process, "train", 6, train=True, seed=2)
    b = _epoch(with_worker, "train", 6, train=True, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------------------------------
# errors


def test_missing_fashion_names_every_place(tmp_path, monkeypatch) -> None:
    system = tmp_path / "system-fashion"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", system)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    for place in (Path("data"), Path("data") / "FashionMNIST" / "raw", system):
        assert str(place.absolute()) in message
    assert "apt-get install dataset-fashion-mnist" in message
    # The field users set; no command has a --data-dir option.
    assert "set data.dir in the YAML" in message and "--data-dir" not in message


def test_named_folder_must_exist(tmp_path) -> None:
    """No silent fallback to another copy (Debian's) when the named folder is wrong."""
    with pytest.raises(DataError, match=r"does not exist \(data.dir in the YAML"):
        load("fashion-mnist", data_dir=tmp_path / "typo")
    _fake_fashion(tmp_path / "partial", gz=True)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="fashion-mnist not found") as info:
        load("fashion-mnist", data_dir=tmp_path / "partial")
    assert str(data.FASHION_MNIST_SYSTEM_DIR) not in str(info.value)


@pytest.mark.parametrize("damage, message", [
    ("header", "cut short inside its header"),
    ("label", "the train split has label 10, outside 0 .. 9"),
    ("size", "test images are (1, 32, 32), train images (1, 28, 28)"),
])
def test_damaged_fashion_files_are_one_line(tmp_path, damage, message) -> None:
    arrays = _fake_fashion(tmp_path, gz=False)
    if damage == "header":
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    elif damage == "label":
        labels = arrays["train-labels-idx1-ubyte"].copy()
        labels[7] = 10
        _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    else:
        _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(DataError, match=re.escape(message)):
        load("fashion-mnist", data_dir=tmp_path)


def test_a_split_left_empty_is_refused() -> None:
    with pytest.raises(DataError, match="val_fraction 0.0001 of 1438 training samples leaves "
                                        "no validation sample"):
        load("digits", val_fraction=0.0001)


@pytest.mark.parametrize(
    ("name", "folder", "hint"),
    [
        ("cifar10", "cifar-10-batches-py", "torchvision.datasets.CIFAR10(root, download=True)"),
        ("cifar100", "cifar-100-python", "torchvision.datasets.CIFAR100(root, download=True)"),
        ("imagenet", "imagenet", "https://image-net.org"),
    ],
)
def test_missing_dataset_message(tmp_path, name, folder, hint) -> None:
    with pytest.raises(DataError) as info:
        load(name, data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / folder) in message and hint in message
    assert "set data.dir in the YAML" in message and "--data-dir" not in message


def test_unknown_dataset_and_bad_arguments() -> None:
    with pytest.raises(DataError) as info:
        load("mnist")
    assert "'mnist'" in str(info.value)
    assert all(name in str(info.value) for name in data.DATASETS)
    with pytest.raises(ValueError, match="val_fraction"):
        load("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 0"):
        load("digits", val_fraction=0)
    with pytest.raises(ValueError, match="subset"):
        load("digits", subset=0)


def test_names_are_normalised(tmp_path) -> None:
    _fake_fashion(tmp_path, gz=True)
    assert load("Fashion_MNIST", data_dir=tmp_path).name == "fashion-mnist"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(digits) -> None:
    on_gpu = load("digits", device="cuda")
    cpu = _epoch(digits, "train", 64, train=True, seed=4)
    gpu = _epoch(on_gpu, "train", 64, train=True, seed=4)
    assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda"
    assert torch.allclose(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())

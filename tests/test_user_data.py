"""Data from the user: image folders (``data: {name: imagefolder, dir: PATH}``) and data
factories (``data: {name: "module:function"}``), their one-line errors, and a search on an
image folder with several worker processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranksearch import cli, pipeline
from ranksearch import config as cfg
from ranksearch.data import DataError, FactoryDataset, ImageFolderDataset, load
from ranksearch.imports import ImportFailed

CLASSES = ("circle", "square", "triangle")


def _epoch(ds, split: str, batch_size: int, train: bool, seed: int | None = None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    batches = list(ds.batches(split, batch_size, train, generator=generator))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _image_folder(root: Path, per_class: dict[str, int], classes=CLASSES) -> Path:
    """Random RGB images of varied sizes (a grayscale one among them) in class folders."""
    rng = np.random.default_rng(len(str(root)))
    for split, count in per_class.items():
        for c, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (18 + c, 22 + i % 3, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i == 1:
                    image = image.convert("L")
                image.save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ------------------------------------------------------------------------------------------
# Image folders


def test_imagefolder_splits_shapes_and_computed_stats(tmp_path) -> None:
    root = _image_folder(tmp_path / "shapes", {"train": 10, "test": 3})
    ds = load("imagefolder", data_dir=root, val_fraction=0.2, image_size=16, num_workers=0)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 3
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (24, 6, 9)
    assert torch.bincount(_epoch(ds, "val", 4, train=False)[1]).tolist() == [2, 2, 2]
    x, y = _epoch(ds, "test", 4, train=False)
    assert x.shape == (9, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # The statistics are those of the (evaluation-transformed) training split: normalised
    # with them, it has mean 0 and standard deviation 1 in every channel.
    x = _epoch(ds, "train", 7, train=False)[0].double()
    zeros = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), zeros, atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), zeros + 1, atol=1e-5)
    train = _epoch(ds, "train", 4, train=True, seed=3)[0]
    assert train.shape == (24, 3, 16, 16)
    assert torch.equal(train, _epoch(ds, "train", 4, train=True, seed=3)[0])
    assert not torch.equal(train, _epoch(ds, "train", 4, train=True, seed=4)[0])


def test_imagefolder_default_size_and_given_stats(tmp_path) -> None:
    root = _image_folder(tmp_path, {"train": 3, "test": 1})
    mean, std = [0.5, 0.25, 0.0], [0.5, 0.25, 1.0]
    ds = load("imagefolder", data_dir=root, mean=mean, std=std, num_workers=0)
    assert ds.input_shape == (3, 224, 224)
    assert ds.normalisation == (tuple(mean), tuple(std))
    x = _epoch(ds, "test", 3, train=False)[0]
    pixels = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    # Back to [0, 1] in steps of 1/255: the given statistics, not computed ones, were used.
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)


def test_imagefolder_with_a_val_folder(tmp_path) -> None:
    root = _image_folder(tmp_path, {"train": 4, "val": 2, "test": 1})
    ds = load("imagefolder", data_dir=root, val_fraction=0.5, image_size=8, num_workers=0)
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (12, 6, 3)
    assert _epoch(ds, "val", 4, train=False)[1].tolist() == [0, 0, 1, 1, 2, 2]
    assert load("imagefolder", data_dir=root, subset=5, image_size=8,
                num_workers=0).len_split("train") == 5


def test_imagefolder_batches_and_stats_independent_of_workers(tmp_path) -> None:
    root = _image_folder(tmp_path, {"train": 4, "test": 1})
    in_process = load("imagefolder", data_dir=root, image_size=12, num_workers=0)
    with_worker = load("imagefolder", data_dir=root, image_size=12, num_workers=1)
    assert in_process.normalisation == with_worker.normalisation
    a = _epoch(in_process, "train", 5, train=True, seed=2)
    b = _epoch(with_worker, "train", 5, train=True, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_image_is_named_in_one_line(tmp_path, workers) -> None:
    root = _image_folder(tmp_path / "images", {"train": 4, "test": 2})
    damaged = root / "test" / CLASSES[0] / "0.png"
    damaged.write_bytes(damaged.read_bytes()[:40])  # cut short
    ds = load("imagefolder", data_dir=root, image_size=12, num_workers=workers)
    with pytest.raises(DataError) as info:
        list(ds.batches("test", 4, train=False))
    assert str(damaged) in _one_line(info)


def test_imagefolder_errors(tmp_path) -> None:
    root = _image_folder(tmp_path / "a", {"train": 2, "test": 1})
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load("imagefolder", data_dir=root, num_workers=0)
    assert f"class folder {root / 'train' / 'empty'} holds no images" in _one_line(info)

    root = _image_folder(tmp_path / "b", {"train": 2, "test": 1})
    (root / "test" / "extra").mkdir()
    Image.new("RGB", (4, 4)).save(root / "test" / "extra" / "0.png")
    with pytest.raises(DataError) as info:
        load("imagefolder", data_dir=root, num_workers=0)
    assert "class folders missing from train/: extra" in _one_line(info)

    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "test").mkdir()
    with pytest.raises(DataError) as info:
        load("imagefolder", data_dir=tmp_path / "c", num_workers=0)
    assert f"{tmp_path / 'c' / 'train'} has no class folders" in _one_line(info)

    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        load("imagefolder", data_dir=tmp_path / "d", num_workers=0)
    assert "no test/ folder in" in _one_line(info) and "data.dir" in str(info.value)

    root = _image_folder(tmp_path / "e", {"train": 2, "test": 1})
    for mean, std in (([0.5], [0.5]), ([0.5] * 3, None)):
        with pytest.raises(DataError, match="data.mean and data.std take 3 values each"):
            load("imagefolder", data_dir=root, mean=mean, std=std, num_workers=0)
    with pytest.raises(DataError, match="data.std: every value must be positive"):
        load("imagefolder", data_dir=root, mean=[0.5] * 3, std=[0.2, 0.0, 0.2], num_workers=0)


def test_arguments_for_another_kind_of_data_are_refused() -> None:
    with pytest.raises(DataError, match="data.image_size applies to imagefolder only"):
        load("digits", image_size=32)
    with pytest.raises(DataError, match="data.args applies to data factories"):
        load("digits", args={"n": 1})


# ------------------------------------------------------------------------------------------
# Data factories

FACTORIES = '''
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset


class Ramp(Dataset):
    """Sample i: a constant input of value i (plus torch noise), label i % classes."""

    def __init__(self, n, classes=3, shape=(2, 4, 4), noise=0.0, odd=None, targets=False,
                 offset=0):
        self.n, self.classes, self.shape, self.noise, self.odd = n, classes, shape, noise, odd
        self.offset = offset
        self.reads = 0
        if targets:
            self.targets = [i % classes for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        if self.odd is not None and i == self.odd[0]:
            return self.odd[1]
        x = torch.full(self.shape, float(i)) + self.noise * torch.randn(self.shape)
        return x, i % self.classes + self.offset


def make(n_train=30, n_test=9, noise=0.0, val=False, targets=False):
    splits = {"train": Ramp(n_train, noise=noise, targets=targets),
              "test": Ramp(n_test, targets=targets)}
    if val:
        splits["val"] = Ramp(6)
    return splits


def tensors():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    train = TensorDataset(x, torch.arange(40) % 4)
    train.classes = ["a", "b", "c", "d", "e"]
    return {"train": train, "test": TensorDataset(x[:8], torch.arange(8) % 4)}


def tensor_targets(dtype="int64"):
    train = Ramp(12)
    train.targets = torch.arange(12).to(getattr(torch, dtype)) % 3
    return {"train": train, "test": Ramp(3)}


def odd_train(index, sample, targets=False):
    return {"train": Ramp(12, odd=(index, sample), targets=targets), "test": Ramp(3)}


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(2), 0


def returns(what):
    return {
        "list": [Ramp(3)],
        "no test": {"train": Ramp(3)},
        "typo": {"train": Ramp(3), "test": Ramp(3), "valid": Ramp(3)},
        "not a dataset": {"train": [(torch.zeros(2), 0)], "test": Ramp(3)},
        "iterable": {"train": Stream(), "test": Ramp(3)},
        "empty": {"train": Ramp(3), "test": Ramp(0)},
        "negative": {"train": Ramp(3), "test": Ramp(3, offset=-1)},
    }[what]


def fails():
    raise ValueError("no such archive: data.npz")
'''


@pytest.fixture
def factories(tmp_path) -> str:
    """The path of a file of data factories (``f"{path}:make"`` names one)."""
    path = tmp_path / "user_data.py"
    path.write_text(FACTORIES)
    return str(path)


def test_factory_splits_and_raw_batches(factories) -> None:
    ds = load(f"{factories}:make", val_fraction=0.2, num_workers=0)
    assert isinstance(ds, FactoryDataset)
    assert ds.input_shape == (2, 4, 4) and ds.num_classes == 3 and ds.normalisation is None
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (24, 6, 9)
    # Held out of train, stratified: two of each class; batches are the samples unchanged.
    x, y = _epoch(ds, "val", 4, train=False)
    assert torch.bincount(y).tolist() == [2, 2, 2]
    assert torch.equal(x[:, 0, 0, 0] % 3, y.float())
    x, y = _epoch(ds, "test", 4, train=False)
    assert torch.equal(x, torch.arange(9.0).view(9, 1, 1, 1).expand(9, 2, 4, 4))
    assert y.tolist() == [0, 1, 2] * 3 and y.dtype == torch.int64
    train = _epoch(ds, "train", 8, train=True, seed=1)[0][:, 0, 0, 0]
    assert sorted(train.tolist()) == sorted(set(range(30)) - set(_epoch(ds, "val", 4, False)[0]
                                                                [:, 0, 0, 0].long().tolist()))
    assert not torch.equal(train, _epoch(ds, "train", 8, train=True, seed=2)[0][:, 0, 0, 0])


def test_factory_args_val_subset_and_classes(factories, tmp_path, monkeypatch) -> None:
    ds = load(f"{factories}:make", args={"n_train": 12, "val": True}, subset=5, num_workers=0)
    assert (ds.len_split("train"), ds.len_split("val"), ds.len_split("test")) == (5, 6, 9)
    # A module on sys.path, named 'module:function'; `classes` sets the number of classes.
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load("user_data:tensors", num_workers=0)
    assert ds.input_shape == (5,) and ds.num_classes == 5


def test_factory_batches_independent_of_workers_and_of_the_global_rng(factories) -> None:
    spec = f"{factories}:make"
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    in_process = load(spec, args={"noise": 1.0}, num_workers=0)
    assert torch.equal(torch.rand(1), expected)  # loading drew nothing from the caller's RNG
    with_worker = load(spec, args={"noise": 1.0}, num_workers=1)
    for train in (True, False):
        a = _epoch(in_process, "train", 5, train=train, seed=7)
        b = _epoch(with_worker, "train", 5, train=train, seed=7)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Evaluation reads each sample under a fixed seed: the same noise every time.
    first = _epoch(in_process, "val", 4, train=False)[0]
    assert torch.equal(first, _epoch(in_process, "val", 4, train=False)[0])


def test_factory_targets_spare_reading_every_sample(factories) -> None:
    ds = load(f"{factories}:make", args={"targets": True}, num_workers=0)
    assert ds.num_classes == 3
    # train[0] for the input shape, then one sample per split to check its type and shape.
    assert ds._datasets["train"].reads == 2 and ds._datasets["test"].reads == 1
    # torchvision's MNIST keeps its targets in a tensor.
    ds = load(f"{factories}:tensor_targets", num_workers=0)
    assert ds.num_classes == 3 and ds.len_split("val") == 1
    with pytest.raises(DataError) as info:
        load(f"{factories}:tensor_targets", args={"dtype": "float32"}, num_workers=0)
    assert "train.targets holds float32 values of shape (12,), not one int label per sample" \
        in _one_line(info)


@pytest.mark.parametrize(
    ("factory", "args", "expected"),
    [
        ("nowhere", {}, "has no function 'nowhere'"),
        ("fails", {}, "failed: ValueError: no such archive: data.npz"),
        ("returns", {"what": "list"}, "returned list, not a dict with 'train' and 'test'"),
        ("returns", {"what": "no test"}, "returned a dict that lacks 'test'"),
        ("returns", {"what": "typo"}, "has unknown keys 'valid'"),
        ("returns", {"what": "not a dataset"}, "'train' is list, not a torch.utils.data.Dataset"),
        ("returns", {"what": "iterable"}, "'train' (Stream) is not a map-style dataset"),
        ("returns", {"what": "empty"}, "'test' is empty"),
        ("returns", {"what": "negative"}, "test has label -1, outside 0 .. 2"),
        ("make", {"wrong": 1}, "failed: TypeError: make() got an unexpected keyword argument"),
        ("odd_train", {"index": 0, "sample": 3}, "train[0] is int 3, not an (input tensor, int"),
        ("odd_train", {"index": 0, "sample": (np.zeros(2), 0)},
         "train[0]: the input is ndarray, not a torch.Tensor"),
        ("odd_train", {"index": 4, "sample": (torch.zeros(2, 4, 4), 0.5)},
         "train[4]: the label is float 0.5, not an int"),
        ("odd_train", {"index": 7, "sample": (torch.zeros(2, 4, 3), 0)},
         "train[7]: input shape (2, 4, 3) differs from the others' (2, 4, 4)"),
    ],
)
def test_factory_errors_are_one_line(factories, factory, args, expected) -> None:
    error = ImportFailed if factory == "nowhere" else DataError
    with pytest.raises(error) as info:
        load(f"{factories}:{factory}", args=args, num_workers=0)
    assert expected in _one_line(info)
    assert f"data factory '{factories}:{factory}'" in str(info.value)


def test_factory_that_fails_to_import(tmp_path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ImportFailed) as info:
        load(f"{path}:make")
    assert "cannot import" in _one_line(info) and "RuntimeError: no GPU here" in str(info.value)
    with pytest.raises(ImportFailed, match="no such file"):
        load(f"{tmp_path / 'missing.py'}:make")
    with pytest.raises(ImportFailed, match="cannot import 'no_such_package_xyz.data'"):
        load("no_such_package_xyz.data:make")


def test_a_factory_file_imports_the_modules_beside_it(tmp_path) -> None:
    """As a script would: `import sizes` finds the sizes.py in the factory's folder."""
    import sys

    project = tmp_path / "project"
    project.mkdir()
    (project / "sizes_beside_the_factory.py").write_text("N = 6\n")
    (project / "my_data.py").write_text(
        "import torch\nimport sizes_beside_the_factory as sizes\n"
        "from torch.utils.data import TensorDataset\n\n"
        "def make():\n"
        "    x, y = torch.zeros(sizes.N, 1, 4, 4), torch.arange(sizes.N) % 2\n"
        "    return {'train': TensorDataset(x, y), 'test': TensorDataset(x, y)}\n")
    before = list(sys.path)
    ds = load(f"{project / 'my_data.py'}:make", val_fraction=0.5, num_workers=0)
    assert ds.len_split("train") + ds.len_split("val") == 6
    assert sys.path == before


@pytest.mark.parametrize("workers", [0, 1])
def test_mismatched_shape_at_batching_time_names_the_split(factories, workers) -> None:
    """With ``targets``, loading reads one sample per split: a later bad one is caught when
    its batch is collated, in one line naming the split (a worker's traceback left out)."""
    spec = f"{factories}:odd_train"
    ds = load(spec, args={"index": 9, "sample": (torch.zeros(1, 4, 4), 0), "targets": True},
              val_fraction=0.25, num_workers=workers)
    split = "train" if 9 in ds._indices["train"] else "val"
    with pytest.raises(DataError) as info:
        _epoch(ds, split, 4, train=False)
    assert (f"data factory '{spec}': {split} split: train[9]: input shape (1, 4, 4) differs "
            "from the others' (2, 4, 4)") == _one_line(info)


# ------------------------------------------------------------------------------------------
# Config and pipeline


def test_unknown_data_name_lists_the_names_and_factories(tiny_space) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(tiny_space(data={"name": "mnist"}))
    message = _one_line(info)
    assert "data.name: unknown dataset 'mnist'; valid names: 'digits'" in message
    assert "'imagefolder', or a data factory 'package.module:function'" in message
    assert cfg.DataSpec(name="pkg.mod:make_data").name == "pkg.mod:make_data"
    with pytest.raises(ValueError, match="unknown dataset 'data.py:'"):
        cfg.DataSpec(name="data.py:")


def test_the_pipeline_loads_what_the_yaml_names(tiny_space, factories, tmp_path) -> None:
    root = _image_folder(tmp_path / "folder", {"train": 3, "test": 1})
    config = cfg.load(tiny_space(data={"name": "imagefolder", "dir": str(root),
                                       "image_size": 8, "workers": 0, "val_fraction": 0.34}))
    ds = pipeline.dataset(config)
    assert ds.input_shape == (3, 8, 8) and (ds.len_split("train"), ds.len_split("val")) == (6, 3)
    config = cfg.load(tiny_space(data={"name": f"{factories}:make", "args": {"n_train": 20},
                                       "workers": 0}))
    ds = pipeline.dataset(config)
    assert ds.len_split("train") + ds.len_split("val") == 20
    model = pipeline.build_model(config, ds)  # ResNet-20 with the factory's 2 channels
    assert model(next(ds.batches("test", 2, train=False))[0]).shape == (2, 3)


@pytest.mark.parametrize("case", ["empty class folder", "broken factory", "bad sample"])
def test_search_stops_with_one_line(tiny_space, factories, tmp_path, capsys, case) -> None:
    """``ranksearch search`` on bad data: exit code 2 and one line naming the problem (the
    bad sample only shows when the reference's training reaches its batch)."""
    if case == "empty class folder":
        root = _image_folder(tmp_path / "images", {"train": 2, "test": 1})
        (root / "test" / "square").rename(root / "test" / "renamed")
        (root / "train" / "renamed").mkdir()
        data, expected = ({"name": "imagefolder", "dir": str(root), "workers": 0},
                          f"class folder {root / 'train' / 'renamed'} holds no images")
    elif case == "broken factory":
        data, expected = {"name": f"{factories}:nowhere"}, "has no function 'nowhere'"
    else:
        data = {"name": f"{factories}:odd_train", "workers": 0, "val_fraction": 0.25,
                "args": {"index": 9, "sample": [[1.0], 0], "targets": True}}
        expected = "split: train[9]: the input is list, not a torch.Tensor"
    space = tiny_space(data=data, model={"name": "resnet20"})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["search", str(space), "--run-dir", str(tmp_path / "run"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and expected in lines[0], lines


NETS = """
from torch import nn


def tiny(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


def _user_study(tiny_space, tmp_path: Path, kind: str, trials: int) -> Path:
    """A tiny space on user data and a user model, both named by paths relative to
    ``tmp_path`` (where the search runs)."""
    (tmp_path / "nets.py").write_text(NETS)
    if kind == "imagefolder":
        _image_folder(tmp_path / "images", {"train": 8, "test": 2})
        data = {"name": "imagefolder", "dir": "images", "image_size": 12}
    else:
        (tmp_path / "user_data.py").write_text(FACTORIES)
        data = {"name": "user_data.py:make", "args": {"noise": 0.1}}
    return tiny_space(model={"name": "nets.py:tiny"}, trials=trials,
                      data={**data, "workers": 1, "val_fraction": 0.25})


def _complete_trials(run: Path) -> int:
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "study.journal")))
    study = optuna.load_study(study_name="tiny", storage=storage)
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials]
    assert not any(reasons), reasons
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["imagefolder", "factory"])
def test_search_with_two_workers(tiny_space, tmp_path, kind) -> None:
    """`ranksearch search --workers 2` starts a worker process that loads the data again from
    the config; data and model are found by relative paths, as in the launcher."""
    space = _user_study(tiny_space, tmp_path, kind, trials=3)
    subprocess.run([sys.executable, "-m", "ranksearch", "search", space.name, "--workers", "2",
                    "--run-dir", "run", "--quiet"], cwd=tmp_path, check=True, timeout=600)
    assert _complete_trials(tmp_path / "run") == 3


@pytest.mark.slow
def test_ray_search(tiny_space, tmp_path) -> None:
    """Ray runs each trial in a folder of its own: relative paths still name the user's
    files, a folder of images and a model module (a data module is found as the model's is,
    by ``ranksearch.imports.resolve``; test_search_with_two_workers runs both kinds)."""
    space = _user_study(tiny_space, tmp_path, "imagefolder", trials=2)
    subprocess.run([sys.executable, "-m", "ranksearch", "search", space.name, "--backend", "ray",
                    "--run-dir", "run", "--quiet"], cwd=tmp_path, check=True, timeout=600)
    assert _complete_trials(tmp_path / "run") == 2


SHARED_NET = """
from torch import nn


class Shared(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.block_again = self.block  # one layer, run twice
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.stem(x).relu()
        return self.head(self.block_again(self.block(x).relu()).relu())
"""


def test_a_user_model_with_a_shared_layer_runs_exports_and_loads(tiny_space, tmp_path,
                                                                  monkeypatch) -> None:
    import ranksearch
    from ranksearch import svd

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(SHARED_NET)
    space = tiny_space(model={"name": "nets.py:Shared"}, trials=2)
    cli.main(["search", str(space), "--run-dir", "run", "--quiet"])
    assert _complete_trials(tmp_path / "run") == 2
    cli.main(["export", "run", "--min-accuracy", "0", "--out", "best"])
    model = ranksearch.load("best")
    assert model.block_again is model.block
    assert not any(isinstance(m, svd.SVDLayer) for m in model.modules())
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)

"""Tests of ranksearch.models: CIFAR ResNets, torchvision names, factories, layer groups."""

from __future__ import annotations

import sys
import textwrap
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ranksearch import models
from ranksearch.models import CIFAR_RESNET_DEPTHS, ModelError, create, layer_groups


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", list(CIFAR_RESNET_DEPTHS))
def test_cifar_resnet_structure(name: str) -> None:
    depth = CIFAR_RESNET_DEPTHS[name]
    n = (depth - 2) // 6
    model = create(name)
    # depth = 1 stem conv + 6n block convs + 1 fc; option B adds two 1×1 projections.
    assert _count(model, nn.Conv2d) == depth - 1 + 2
    assert _count(model, nn.Linear) == 1
    for stage, width in zip((model.layer1, model.layer2, model.layer3), (16, 32, 64), strict=True):
        assert len(stage) == n
        assert all(block.conv2.out_channels == width for block in stage)
    assert model.layer1[0].downsample is None
    for stage in (model.layer2, model.layer3):
        projection = stage[0].downsample[0]
        assert projection.kernel_size == (1, 1) and projection.stride == (2, 2)
        assert all(block.downsample is None for block in stage[1:])


@pytest.mark.parametrize("name", list(CIFAR_RESNET_DEPTHS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_cifar_resnet_runs(name: str, in_channels: int) -> None:
    model = create(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 8, 8))
    assert out.shape == (2, 7)
    assert model.conv1.in_channels == in_channels


def test_resnet20_parameter_count() -> None:
    count = sum(p.numel() for p in create("resnet20").parameters())
    # The paper's option-A ResNet-20 has 269,722 parameters ("0.27M"); the two option-B
    # projections add 16·32 + 32·64 conv weights and 2·(32 + 64) batch-norm parameters.
    assert count == 269_722 + 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert 0.26e6 < count < 0.28e6


def test_torchvision_model() -> None:
    model = create("resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert model.conv1.in_channels == 3


def test_torchvision_in_channels_adaptation() -> None:
    reference = create("mobilenet_v3_small", num_classes=5)
    model = create("mobilenet_v3_small", num_classes=5, in_channels=1).eval()
    first, original = model.features[0][0], reference.features[0][0]
    assert first.in_channels == 1
    for attribute in ("out_channels", "kernel_size", "stride", "padding", "dilation"):
        assert getattr(first, attribute) == getattr(original, attribute)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_available_lists_both_families() -> None:
    names = models.available()
    assert names[:5] == list(CIFAR_RESNET_DEPTHS)
    assert {"resnet18", "mobilenet_v2", "vgg11"} <= set(names)
    assert len(names) == len(set(names))


def test_factory(tmp_path, monkeypatch) -> None:
    (tmp_path / "userfactory.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def make(num_classes, in_channels):
                return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes))

            def not_a_model(num_classes, in_channels):
                return 42

            def old_signature(num_classes):
                return nn.Linear(4, num_classes)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create("userfactory:make", num_classes=5, in_channels=2)
    assert model[1].in_features == 8 and model[1].out_features == 5
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        create("userfactory:not_a_model")
    with pytest.raises(ModelError, match="no function"):
        create("userfactory:missing")
    with pytest.raises(ModelError, match=r"'userfactory:old_signature' failed when called with "
                       r"num_classes=10, in_channels=3: TypeError: .*in_channels"):
        create("userfactory:old_signature")
    with pytest.raises(ModelError, match="cannot import"):
        create("no_such_module_xyz:make")
    sys.modules.pop("userfactory", None)


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 299)])
def test_models_with_auxiliary_heads_train_on_their_logits(name: str, size: int) -> None:
    model = create(name, num_classes=7).train()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_unknown_name() -> None:
    with pytest.raises(ModelError) as info:
        create("resnet21")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert "'resnet21'" in message and "resnet20" in message and "resnet18" in message


def test_layer_groups_cifar_resnet() -> None:
    model = create("resnet20")
    groups = layer_groups(model)
    compressible = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert list(groups) == compressible
    assert list(dict.fromkeys(groups.values())) == ["conv1", "layer1", "layer2", "layer3", "fc"]
    assert groups["layer2.0.downsample.0"] == "layer2"


def test_layer_groups_torchvision() -> None:
    resnet = layer_groups(create("resnet18"))
    assert list(dict.fromkeys(resnet.values())) == [
        "conv1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc",
    ]
    mobilenet = layer_groups(create("mobilenet_v2"))
    # features has 19 children, all holding convs: chunks of 5, 5, 5 and 4.
    assert list(dict.fromkeys(mobilenet.values())) == [
        "features[0:5]",
        "features[5:10]",
        "features[10:15]",
        "features[15:19]",
        "classifier",
    ]
    assert mobilenet == layer_groups(create("mobilenet_v2"))


@pytest.mark.parametrize("name, expected", [
    # Deep CIFAR ResNets: a stage of 9 or 18 blocks is one group still.
    ("resnet56", ["conv1", "layer1", "layer2", "layer3", "fc"]),
    ("resnet110", ["conv1", "layer1", "layer2", "layer3", "fc"]),
    ("resnet50", ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]),
    # A trunk of four stages: each stage its own group.
    ("regnet_x_400mf", ["stem", "trunk_output.block1", "trunk_output.block2",
                        "trunk_output.block3", "trunk_output.block4", "fc"]),
    # The trunk found inside a module: ViT's encoder.layers.
    ("vit_b_16", ["conv_proj", "encoder.layers[0:3]", "encoder.layers[3:6]",
                  "encoder.layers[6:9]", "encoder.layers[9:12]", "heads"]),
])
def test_layer_groups_are_stages(name: str, expected: list[str]) -> None:
    groups = layer_groups(create(name, num_classes=10))
    assert list(dict.fromkeys(groups.values())) == expected


def test_layer_groups_long_sequential_root() -> None:
    convs = [nn.Conv2d(1, 1, 1) for _ in range(6)]
    model = nn.Sequential(*convs, nn.Flatten(), nn.Linear(4, 2))
    # Seven compressible children (0-5 and 7) in chunks of 2, 2, 2 and 1.
    assert layer_groups(model) == {
        "0": "[0:2]",
        "1": "[0:2]",
        "2": "[2:4]",
        "3": "[2:4]",
        "4": "[4:6]",
        "5": "[4:6]",
        "7": "[7:8]",
    }
    short = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    assert layer_groups(short) == {"0": "0", "3": "3"}
    # Built from an OrderedDict, as a user's model factory may be: named children.
    named = nn.Sequential(OrderedDict((f"conv{i}", conv) for i, conv in enumerate(convs)))
    assert layer_groups(named) == {"conv0": "[0:2]", "conv1": "[0:2]", "conv2": "[2:4]",
                                   "conv3": "[2:4]", "conv4": "[4:5]", "conv5": "[5:6]"}

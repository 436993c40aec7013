"""Models that ranksearch can compress: CIFAR ResNets, torchvision models and user factories.

:func:`create` builds an untrained model from a name:

- ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``: the CIFAR ResNets of
  He et al. 2016 ("Deep Residual Learning for Image Recognition", section 4.2): a 3×3 stem
  conv with 16 filters, three stages of ``n = (depth - 2) / 6`` basic blocks with 16, 32 and 64
  channels (the first block of stages 2 and 3 halves the resolution), global average pooling
  and one fully connected layer.

  Shortcuts use the paper's **option B**: identity where shapes match and a 1×1 convolution
  with batch norm (stride 2) where a block changes resolution and width. The paper's CIFAR
  networks used option A (zero-padded strided identity), which is usually written with a
  lambda layer; Torch-Pruning cannot trace through such a layer to couple the channels of a
  residual sum, while it handles a projection conv. Option B adds two 1×1 convs
  (16→32 and 32→64), about 2.8k parameters on top of ResNet-20's 0.27M.

  Module names follow torchvision's ResNets (``conv1``, ``bn1``, ``layer1``..``layer3``,
  ``fc``; blocks have ``conv1``, ``bn1``, ``conv2``, ``bn2`` and ``downsample``), so a layer
  name such as ``layer2.0.conv1`` means the same thing in both families.
- any torchvision classification model name (``resnet18``, ``mobilenet_v2``, ...), built by
  ``torchvision.models.get_model(name, weights=None, num_classes=...)``; when
  ``in_channels != 3`` its first convolution is replaced by one with the same settings and
  ``in_channels`` inputs.
- ``"package.module:function"``: imports ``package.module`` and returns
  ``function(num_classes=..., in_channels=...)``. This **runs the user's own code**: only
  name modules you trust.

:func:`layer_groups` assigns every compressible layer (``Linear``, ``Conv2d``) to a group, the
unit of stage-level hyperparameters in a search space.
"""

from __future__ import annotations

import difflib

import torch
import torchvision
from torch import nn

from .errors import UserError
from .imports import ImportFailed, resolve

__all__ = ["ModelError", "CIFAR_RESNET_DEPTHS", "available", "create", "layer_groups"]

CIFAR_RESNET_DEPTHS = {
    "resnet20": 20,
    "resnet32": 32,
    "resnet44": 44,
    "resnet56": 56,
    "resnet110": 110,
}

# A top-level nn.Sequential with more children than this is split into this many groups.
MAX_SEQUENTIAL_GROUPS = 4


class ModelError(UserError, ValueError):
    """A model name that cannot be built; the message is one line."""


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection (He et al. 2016, figure 2 left).

    ``downsample`` is the option-B projection (1×1 conv + BN) when the block changes the
    number of channels or the resolution, else ``None`` (identity shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32×32-like inputs: 3 stages of ``blocks_per_stage`` blocks (16/32/64 channels).

    Any input size works (global average pooling); the paper's design assumes about 32×32.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        # He et al. initialise convolutions with their own method ("MSRA" init).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _torchvision_names() -> list[str]:
    # Restricting to the top-level module lists the classification models only (no
    # detection, segmentation, video or quantized models, whose constructors differ).
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available() -> list[str]:
    """Every model name :func:`create` accepts (``module:function`` factories aside)."""
    return list(CIFAR_RESNET_DEPTHS) + _torchvision_names()


def _unknown(name: str) -> ModelError:
    close = difflib.get_close_matches(name, available(), n=3)
    return ModelError(
        f"unknown model {name!r}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + f"; built in: {', '.join(CIFAR_RESNET_DEPTHS)} and {len(_torchvision_names())} "
        "torchvision classification models (torchvision.models.list_models()), or a "
        "'package.module:function' factory"
    )


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``Conv2d`` (in module order) for one taking ``in_channels`` inputs."""
    convs = ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    qualified, module = next(convs, ("", None))
    if module is None:
        raise ModelError(f"cannot set in_channels={in_channels}: the model has no Conv2d")
    if module.groups != 1:
        raise ModelError(
            f"cannot set in_channels={in_channels}: the first conv {qualified!r} is grouped"
        )
    replacement = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    parent_name, _, child_name = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, replacement)


def _from_factory(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        factory = resolve(spec, "model factory")
    except ImportFailed as error:
        raise ModelError(str(error)) from None
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels)
    except Exception as error:  # the user's code: one line naming it, not a traceback
        raise ModelError(f"model factory {spec!r} failed when called with num_classes="
                         f"{num_classes}, in_channels={in_channels}: "
                         f"{type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def create(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build an untrained model.

    Args:
        name: a CIFAR ResNet (``resnet20/32/44/56/110``), a torchvision classification model
            name, or a ``"package.module:function"`` (or ``"file.py:function"``) factory,
            imported and called with ``num_classes=`` and ``in_channels=`` (this runs the
            named user code).
        num_classes: size of the classifier's output.
        in_channels: channels of the input images (1 for grey-scale data).

    Raises:
        ModelError: unknown name, a factory that cannot be imported or does not return an
            ``nn.Module``, or a torchvision model whose first conv cannot be adapted.
    """
    if ":" in name:
        return _from_factory(name, num_classes, in_channels)
    key = name.lower()
    if key in CIFAR_RESNET_DEPTHS:
        blocks = (CIFAR_RESNET_DEPTHS[key] - 2) // 6
        return CifarResNet(blocks, num_classes=num_classes, in_channels=in_channels)
    if key not in _torchvision_names():
        raise _unknown(name)
    # GoogLeNet and Inception v3 train with auxiliary heads by default and then return a
    # tuple; the loss, the trial pipeline and the pruning baselines need the logits.
    extra = {"aux_logits": False} if key in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(key, weights=None, num_classes=num_classes, **extra)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _contains_compressible(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in module.modules())


def _sequential_groups(prefix: str, sequential: nn.Sequential) -> dict[str, str]:
    """Map each child name of a long Sequential (its index, unless it was built from an
    ``OrderedDict``) to a group ``prefix[a:b]``.

    Only children holding a Linear or Conv2d are split, so that every group holds layers; the
    ``k`` such children go into ``min(k, MAX_SEQUENTIAL_GROUPS)`` consecutive chunks whose
    sizes differ by at most one (the earlier chunks take the extra child). ``a:b`` is the
    range of child indices the chunk spans in the Sequential.
    """
    children = [(i, name) for i, (name, child) in enumerate(sequential.named_children())
                if _contains_compressible(child)]
    chunks = min(len(children), MAX_SEQUENTIAL_GROUPS)
    groups: dict[str, str] = {}
    start = 0
    for chunk in range(chunks):
        size = len(children) // chunks + (1 if chunk < len(children) % chunks else 0)
        members = children[start : start + size]
        start += size
        group = f"{prefix}[{members[0][0]}:{members[-1][0] + 1}]"
        for _, name in members:
            groups[name] = group
    return groups


def layer_groups(model: nn.Module) -> dict[str, str]:
    """Map every ``Linear``/``Conv2d`` qualified name to its group, in module order.

    The group is the layer's top-level child of ``model``: ``conv1``, ``layer1``, ``layer2``,
    ``layer3``, ``fc`` for the CIFAR and torchvision ResNets, whatever their depth. Where one
    ``nn.Sequential`` holds more than half of the model's layers (the trunk: ``features`` of
    MobileNet, VGG, EfficientNet; ``trunk_output`` of RegNet; ``encoder.layers`` of ViT,
    found by descending into the child that holds more than half), it would be one group for
    most of the network, so its children holding layers are the groups instead: each its own
    when there are at most ``MAX_SEQUENTIAL_GROUPS`` (4) of them (``trunk_output.block1``),
    else by order in 4 near-equal chunks named by the child-index range they span:
    ``features[0:5]``, ``features[5:10]``, ... When ``model`` itself is the trunk the groups
    are named ``[0:3]``, ``[3:6]``, ... (or by child name).

    The result is deterministic: it depends only on the module structure.
    """
    names = [q for q, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prefix, trunk = _trunk(model, names)
    chunks: dict[str, str] = {}
    if trunk is not None:
        if len(trunk) > MAX_SEQUENTIAL_GROUPS:
            chunks = _sequential_groups(prefix, trunk)
        else:
            chunks = {name: f"{prefix}.{name}" if prefix else name
                      for name, _ in trunk.named_children()}
    groups: dict[str, str] = {}
    for qualified in names:
        in_trunk = trunk is not None and (not prefix or qualified.startswith(prefix + "."))
        rest = qualified[len(prefix) + 1:] if prefix else qualified  # the name in the trunk
        groups[qualified] = chunks[rest.split(".")[0]] if in_trunk else qualified.split(".")[0]
    return groups


def _trunk(model: nn.Module, names: list[str]) -> tuple[str, nn.Sequential | None]:
    """The ``nn.Sequential`` (and its qualified name) holding more than half of the layers
    ``names``, reached through modules that each hold more than half; ``("", None)`` when
    no Sequential does (a ResNet's stages each hold less)."""
    def held(prefix: str) -> int:
        return sum(1 for n in names if not prefix or n.startswith(prefix + "."))

    prefix, module = "", model
    while not (isinstance(module, nn.Sequential) and len(module) > 1):
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            if 2 * held(qualified) > len(names):
                prefix, module = qualified, child
                break
        else:
            return "", None
    return prefix, module

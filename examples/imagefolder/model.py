"""A small CNN for the image-folder example, named in the YAML as
``model: {name: "examples/imagefolder/model.py:small_cnn"}``.

ranksearch calls a model factory with ``num_classes=`` and ``in_channels=`` read from the data
(3 classes and RGB here). Every ``Conv2d`` and ``Linear`` may be SVD-trained unless the YAML's
``model.exclude`` keeps it dense.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


def small_cnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Four 3×3 conv blocks of 16, 32, 64 and 64 channels (max pooling halves the resolution
    twice), global average pooling and a linear classifier ``fc``; the first conv is
    ``stem.0``."""
    return nn.Sequential(OrderedDict(
        stem=_block(in_channels, 16),
        block1=_block(16, 32), pool1=nn.MaxPool2d(2),
        block2=_block(32, 64), pool2=nn.MaxPool2d(2),
        block3=_block(64, 64),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(64, num_classes),
    ))

"""The pieces of :mod:`ranksearch.data`, which is the public face: import from there.

- :mod:`.base`: the :class:`~.base.Dataset` interface, its errors and the seeded splits;
- :mod:`.memory`: small datasets held and augmented on the training device;
- :mod:`.imagefolder`: ImageNet-style folders streamed by DataLoader workers;
- :mod:`.files`: the readers of the on-disk formats (IDX, CIFAR's restricted pickles).

Nothing here imports :mod:`ranksearch.data`. This file imports nothing at all: the config
names the datasets through :data:`DatasetName` without importing torch.
"""

import typing
from typing import Literal

DatasetName = Literal["digits", "fashion-mnist", "cifar10", "cifar100", "imagenet", "imagefolder"]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)

"""The pieces of :mod:`ranksearch.data`, which is the public face: import from there.

- :mod:`.base`: the :class:`~.base.Dataset` interface, its errors and the seeded splits;
- :mod:`.memory`: small datasets held and augmented on the training device;
- :mod:`.stream`: the base of datasets read by DataLoader workers, each sample under its own
  seed, with the checks of ``(input tensor, int label)`` samples;
- :mod:`.imagefolder`: class folders (ImageNet, the user's image folders) streamed that way;
- :mod:`.factory`: the user's ``torch.utils.data.Dataset`` objects from a data factory;
- :mod:`.files`: the readers of the on-disk formats (IDX, CIFAR's restricted pickles).

Nothing here imports :mod:`ranksearch.data`. This file imports nothing at all: the config
names the datasets through :data:`DatasetName` without importing torch.
"""

import typing
from typing import Literal

DatasetName = Literal["digits", "fashion-mnist", "cifar10", "cifar100", "imagenet", "imagefolder"]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)

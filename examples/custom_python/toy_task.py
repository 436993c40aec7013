"""A toy task with everything of its own: the data, the model, the training loop, the metric.

Images of bars and boxes (1x12x12, four classes) drawn at random positions under noise,
generated from a seed: nothing to download. ``run.py`` searches SVD training for it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

SIDE = 12
NOISE = 0.4
CLASSES = ("horizontal bar", "vertical bar", "diagonal", "box")


class Shapes(Dataset):
    """``count`` noisy 1x12x12 images of the four shapes, the same for the same ``seed``."""

    classes = CLASSES

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(len(CLASSES), (count,), generator=generator).tolist()
        self.images = NOISE * torch.randn(count, 1, SIDE, SIDE, generator=generator)
        for image, label in zip(self.images, self.targets, strict=True):
            row, col = torch.randint(2, SIDE - 6, (2,), generator=generator).tolist()
            if label == 0:
                image[0, row, col:col + 5] += 1
            elif label == 1:
                image[0, row:row + 5, col] += 1
            elif label == 2:
                image[0, range(row, row + 5), range(col, col + 5)] += 1
            else:
                image[0, row:row + 4, col:col + 4] += 1
                image[0, row + 1:row + 3, col + 1:col + 3] -= 1

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def make_data(train: int = 800, test: int = 400) -> dict[str, Dataset]:
    """The data factory: ``train`` and ``test`` splits (ranksearch holds ``val`` out of
    ``train``)."""
    return {"train": Shapes(train, seed=0), "test": Shapes(test, seed=1)}


def small_cnn(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    """The model factory: three 3x3 convolutions and a classifier."""

    def block(inputs: int, outputs: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs),
                nn.ReLU()]

    return nn.Sequential(*block(in_channels, 8), *block(8, 16, 2), *block(16, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def train(model: nn.Module, phase) -> None:
    """The training loop, for every phase: label-smoothed cross-entropy plus the phase's
    regulariser (SVD training's orthogonality and sparsity terms), over the phase's batches
    with its optimizer and learning-rate schedule."""
    optimizer = phase.optimizer(model)
    for step, (x, y) in enumerate(phase.batches()):
        for group in optimizer.param_groups:
            group["lr"] = phase.lr_at(step)
        with phase.autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss = loss + phase.regulariser(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def macro_f1(model: nn.Module, batches) -> float:
    """The metric: the F1 score of each class, averaged over the classes."""
    confusion = None
    for x, y in batches:
        logits = model(x)
        k = logits.shape[1]
        counts = torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k)
        confusion = counts if confusion is None else confusion + counts
    hits = confusion.diag().double()
    return (2 * hits / (confusion.sum(0) + confusion.sum(1)).clamp(min=1)).mean().item()

"""Write a tiny image folder: coloured circles, squares and triangles, 32×32 PNGs.

    python examples/imagefolder/make_data.py [FOLDER]

FOLDER (default ``examples/imagefolder/data``) receives ``train/<class>/*.png`` (100 images
per class) and ``test/<class>/*.png`` (30 per class), the layout ``data: {name: imagefolder}``
reads. Shapes, colours, sizes, positions and noise are drawn from a fixed seed, so
every run writes the same images; nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
PER_CLASS = {"train": 100, "test": 30}
CLASSES = ("circle", "square", "triangle")


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    """One bright shape of a random colour, size and position on a random dark background,
    with pixel noise: the small ones are the hard ones."""
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 100, 3)))
    colour = tuple(int(v) for v in rng.integers(120, 256, 3))
    radius = rng.uniform(4, 12)
    cx, cy = rng.uniform(radius + 1, SIZE - radius - 1, 2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                    fill=colour)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 16, (SIZE, SIZE, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def main(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in PER_CLASS.items():
        for shape in CLASSES:
            (folder / split / shape).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(shape, rng).save(folder / split / shape / f"{i:03d}.png")
    total = sum(PER_CLASS.values()) * len(CLASSES)
    print(f"{total} images of {', '.join(CLASSES)} in {folder}/train and {folder}/test")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/imagefolder/data"))

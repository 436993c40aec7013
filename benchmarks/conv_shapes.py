"""What a thin convolution costs on this CPU: the layers an SVD pair of ResNet-20 is made of.

Every 3x3 convolution of a CIFAR ResNet-20 stage (16 channels at 32x32, 32 at 16x16, 64 at
8x8) against the thin convolutions that replace it: ``c -> r`` (3x3, the channel scheme's
first conv, and 1x1) and ``r -> c`` (1x1, the channel scheme's second conv, and 3x3), for
ranks r from 1 up. channels_last, fp32, batch 32, 2 threads; the convolutions of one input
shape alternate pass by pass and the fastest of ``--passes`` passes of each is kept
(:func:`ranksearch.measure.fastest_passes`).

What it shows: oneDNN computes output channels in blocks of 16, so a conv with fewer than 16
output channels costs what 16 cost; a channel-scheme pair ``c -> r`` (3x3) + ``r -> c`` (1x1)
with r < 16 saves FLOPs but not time.

    python benchmarks/conv_shapes.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from ranksearch import measure

STAGES = ((16, 32), (32, 16), (64, 8))  # channels, height = width
RANKS = (1, 4, 8, 16, 24, 32)


def conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2).to(memory_format=torch.channels_last)


def timed(convs: dict[str, nn.Conv2d], shape: tuple[int, int, int], batch: int,
          passes: int) -> list[dict]:
    seconds = measure.fastest_passes(tuple(convs.values()), shape, batch, passes)
    rows = []
    for (name, layer), second in zip(convs.items(), seconds, strict=True):
        flops = batch * measure.flops(layer, shape)
        rows.append({"conv": name, "input": list(shape), "ms": 1e3 * second,
                     "gflops_per_s": flops / second / 1e9})
        print(f"  {name:20s} {1e3 * second:7.3f} ms {flops / second / 1e9:7.1f} GFLOP/s",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conv_shapes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for channels, size in STAGES:
        print(f"{channels} channels at {size}x{size}")
        ranks = [r for r in RANKS if r < channels]
        narrowing = {f"{channels}->{channels} 3x3": conv(channels, channels, 3)}
        for r in ranks:
            narrowing[f"{channels}->{r} 3x3"] = conv(channels, r, 3)
            narrowing[f"{channels}->{r} 1x1"] = conv(channels, r, 1)
        rows += timed(narrowing, (channels, size, size), args.batch, args.passes)
        for r in ranks:
            widening = {f"{r}->{channels} 1x1": conv(r, channels, 1),
                        f"{r}->{channels} 3x3": conv(r, channels, 3)}
            rows += timed(widening, (r, size, size), args.batch, args.passes)
    result = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch,
              "passes": args.passes, "layout": "channels_last, fp32", "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Cost of one SVD-training step relative to one dense training step (CPU).

One step = forward, cross-entropy (+ orthogonality and Hoyer sparsity for the SVD models),
backward and an SGD step, on a CIFAR ResNet-20 at full rank (the state during SVD training).
The SVD layers run either ``forward_mode="dense"`` (rebuild the dense weight from U, s, V,
then one convolution) or ``"factored"`` (two thin convolutions). The variants are timed in
interleaved rounds so that load from other processes affects them alike; the table shows
the median and the fastest seconds per step, each with its ratio to the dense model.

    python benchmarks/svd_step_cost.py --steps 10 --batch-size 128 [--out FILE.json]

fp32, NCHW, SGD: the cost of the method itself. Training as ranksearch ships it (bf16 autocast,
channels_last, fused Adam) is timed by ``cpu_precision.py``, dense and SVD alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ranksearch import models, svd


def make_step(model: nn.Module, regularised: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        if regularised:
            loss = loss + svd.orthogonality_loss(model) + svd.sparsity_loss(model, "hoyer", 1e-3)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: PyTorch's choice); on a loaded "
                             "machine 1 avoids stalls of multi-threaded kernels")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1 the "
                             "work done, unaffected by waiting for a core on a busy machine)")
    parser.add_argument("--out", type=Path, help="also write the table to this JSON file")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense = models.create("resnet20").train()
    variants = {"dense": make_step(dense, regularised=False)}
    for scheme in svd.SCHEMES:
        for mode in ("dense", "factored"):
            model = svd.decompose(dense, scheme=scheme, forward_mode=mode).train()
            variants[f"svd {scheme} / {mode}"] = make_step(model, regularised=True)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    for step in variants.values():
        for _ in range(args.warmup):
            step(x, y)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, step in variants.items():
            start = clock()
            step(x, y)
            times[name].append(clock() - start)

    base = statistics.median(times["dense"])
    print(f"CIFAR ResNet-20, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, median of {args.steps} steps")
    base_min = min(times["dense"])
    print(f"{'variant':<26} {'s/step':>8} {'ratio':>7} {'min s':>8} {'ratio':>7}")
    table = {}
    for name, values in times.items():
        median, fastest = statistics.median(values), min(values)
        table[name] = {"median_s": median, "median_ratio": median / base,
                       "fastest_s": fastest, "fastest_ratio": fastest / base_min}
        print(f"{name:<26} {median:8.4f} {median / base:7.3f} {fastest:8.4f} "
              f"{fastest / base_min:7.3f}")
    if args.out:
        args.out.write_text(json.dumps({
            "torch": torch.__version__, "model": "CIFAR ResNet-20, fp32, NCHW, SGD",
            "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "clock": args.clock, "steps": args.steps, "warmup": args.warmup,
            "when": time.strftime("%Y-%m-%d %H:%M"), "variants": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()

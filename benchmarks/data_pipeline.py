"""Share of a training step spent producing its batch: in-memory data pipeline vs the step.

The data pipeline of the small datasets runs in the training process, on the training
device: gather a shuffled batch of uint8 images, random-crop and flip it in one batched
gather, convert and normalise. This benchmark times one such batch of real Fashion-MNIST
(batch 128, 2-pixel padding, flips) against one training step of a CIFAR ResNet-20 with one
input channel (forward, cross-entropy, backward, SGD with momentum). Both are timed in
interleaved rounds so that load from other processes affects them alike; the table shows
medians and the pipeline's share of the step (goal: under 5 %).

    python benchmarks/data_pipeline.py --threads 1      # from the repository root, with
    python benchmarks/data_pipeline.py --device cuda    # ranksearch installed or PYTHONPATH=.

Fashion-MNIST is read from --data-dir, else from Debian's /usr/share/datasets/fashion-mnist
(``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from ranksearch import data, models
from ranksearch.precision import cpu_name

GOAL_PERCENT = 5.0


def _timer(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        # Kernels run asynchronously on a GPU: wait for them before reading the clock.
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def _median_seconds(fn: Callable[[], object], repeats: int, now: Callable[[], float]) -> float:
    times = []
    for _ in range(repeats):
        start = now()
        fn()
        times.append(now() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (at most)")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed per round")
    parser.add_argument("--batches", type=int, default=40, help="data batches timed per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--budget", type=float, default=40.0, help="stop starting rounds after this many seconds"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline.json"))
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    now = _timer(device)
    torch.manual_seed(0)
    load_start = time.perf_counter()
    ds = data.load("fashion-mnist", data_dir=args.data_dir, device=device)
    load_seconds = time.perf_counter() - load_start
    model = models.create("resnet20", num_classes=ds.num_classes, in_channels=1).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    # One endless stream of epochs, so the per-epoch shuffle is amortised as in training.
    stream = itertools.chain.from_iterable(
        ds.batches("train", args.batch_size, train=True, generator=generator)
        for _ in itertools.count()
    )
    x, y = next(stream)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    data_times: list[float] = []
    step_times: list[float] = []
    # Slow CPUs (or busy ones) get fewer rounds, so the whole run stays near a minute.
    timing_start = time.perf_counter()
    for _ in range(args.rounds):
        if len(step_times) >= 2 and time.perf_counter() - timing_start > args.budget:
            break
        start = now()
        for _ in range(args.batches):
            next(stream)
        data_times.append((now() - start) / args.batches)
        start = now()
        for _ in range(args.steps):
            step()
        step_times.append((now() - start) / args.steps)
    data_s, step_s = statistics.median(data_times), statistics.median(step_times)

    # Where the pipeline's time goes, on one batch.
    images, _, index = ds._splits["train"]
    batch_index = index[: args.batch_size]
    raw = images[batch_index]
    augmented = ds.augment(raw, generator)
    repeats = 50
    stages = {
        "gather (shuffled index)": _median_seconds(lambda: images[batch_index], repeats, now),
        "crop + flip (one gather)": _median_seconds(
            lambda: ds.augment(raw, generator), repeats, now
        ),
        "to float + normalise": _median_seconds(
            lambda: augmented.float().mul_(ds._mul).sub_(ds._sub), repeats, now
        ),
    }

    share = 100 * data_s / step_s
    rows = [
        ("data: one augmented batch", data_s),
        *((f"  {name}", seconds) for name, seconds in stages.items()),
        ("train step: fwd + bwd + SGD", step_s),
    ]
    print(
        f"Fashion-MNIST -> ResNet-20 (1 channel), batch {args.batch_size}, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'':32}{'ms':>10}")
    for name, seconds in rows:
        print(f"{name:32}{1e3 * seconds:10.3f}")
    verdict = "meets" if share < GOAL_PERCENT else "misses"
    print(f"pipeline share of a step: {share:.2f} % ({verdict} the {GOAL_PERCENT:.0f} % goal)")

    result = {
        "benchmark": "data_pipeline",
        "dataset": "fashion-mnist",
        "model": "resnet20",
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": len(step_times),
        "load_seconds": load_seconds,
        "data_batch_ms": 1e3 * data_s,
        "data_stage_ms": {name: 1e3 * seconds for name, seconds in stages.items()},
        "train_step_ms": 1e3 * step_s,
        "share_percent": share,
        "goal_percent": GOAL_PERCENT,
        "meets_goal": share < GOAL_PERCENT,
        "command": "python benchmarks/data_pipeline.py"
        + (f" --threads {args.threads}" if args.threads is not None else "")
        + f" --device {device}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Does a FLOPs reduction from compaction turn into a CPU speedup?

For each model, batch size and target FLOPs reduction (2×, 3×, 4×), the model is decomposed
(channel scheme by default), every SVD layer keeps the same fraction of its singular values
(the fraction is found by bisection on the measured FLOPs of the compact model), and the
compact model is timed against the dense one. Efficiency = measured speedup ÷ FLOPs
reduction: 1 means the CPU turns every saved FLOP into time.

Weights are random: latency does not depend on their values, only the ranks do, and those
are set directly here. FLOPs come from ``ranksearch.measure.flops`` (batch size 1). With
``--clock wall`` (default) latencies come from ``ranksearch.measure.latency`` (median of
``--repeats`` passes, the dense and compact models alternating over ``--rounds`` rounds,
best round kept); with ``--clock cpu`` both models are timed pass by pass, alternating, in
process CPU time, keeping the fastest pass, which is what to use with ``--threads 1`` on a
machine shared with other jobs. The speedup always compares the two models timed in the
same window.

Variants (the dense model gets the same treatment, so the comparison stays like with like):

* ``naive``: the compaction before the deployable default: exact kept ranks, NCHW, batch
  norms unfolded (``compact(rank_multiple=1, channels_last=False)``);
* ``deployed``: what ``svd.compact(model)`` and ``svd.for_inference`` give by default, and
  what trials measure and ``export`` writes without a latency measurement: ranks rounded up
  by ``svd.rank_multiple_for`` (16 in layers of full rank >= 128, else 8), channels_last,
  batch norms folded; the fraction is bisected again for the target, and where the rounding
  makes it unreachable the row shows the reduction reached;
* ``deployed-r8``, ``deployed-r16``: the same with every rank rounded to 8, or to 16;
* ``deployed+latmerge``: ``deployed`` with each pair merged back where the dense layer is
  measured faster at the input the layer receives (``compaction_plan(merge="latency")``, what
  a study with ``measure_latency: true`` does); the FLOPs reduction then falls below the
  target and the efficiency uses the actual one.

    python benchmarks/compact_latency.py                      # idle machine
    python benchmarks/compact_latency.py --threads 1 --clock cpu  # shared machine
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ranksearch import measure, models, svd

CASES = [  # model, input shape (C, H, W), batch size
    ("resnet18", (3, 224, 224), 1),
    ("resnet18", (3, 224, 224), 8),
    ("resnet20", (3, 32, 32), 1),
    ("resnet20", (3, 32, 32), 32),
]
TARGETS = (2.0, 3.0, 4.0)
# variant: (rank multiple, deployed form, merge rule)
VARIANTS = {
    "naive": (1, False, "flops"),
    "deployed": (None, True, "flops"),
    "deployed-r8": (8, True, "flops"),
    "deployed-r16": (16, True, "flops"),
    "deployed+latmerge": (None, True, "latency"),
}


def set_fraction(model: nn.Module, fraction: float) -> None:
    """Keep ``round(fraction · full rank)`` (at least 1) singular values in every layer."""
    svd.set_ranks(model, {name: max(1, min(layer.full_rank, round(fraction * layer.full_rank)))
                          for name, layer in svd.svd_layers(model).items()})


def fraction_for(
    model: nn.Module, dense_flops: int, target: float, input_shape: tuple, rank_multiple: int
) -> float:
    """Bisect the kept fraction so that the compact model's FLOPs reduction is ``target``."""

    def reduction(fraction: float) -> float:
        set_fraction(model, fraction)
        compacted = svd.compact(model, rank_multiple=rank_multiple, channels_last=False)
        return dense_flops / measure.flops(compacted, input_shape)

    low, high = 0.0, 1.0  # reduction(low) ≥ target > reduction(high)
    for _ in range(12):
        middle = (low + high) / 2
        if reduction(middle) >= target:
            low = middle
        else:
            high = middle
    return low


def cpu_latencies(models_: tuple[nn.Module, ...], input_shape: tuple, batch: int,
                  passes: int) -> list[float]:
    """Fastest pass of each model, timed with this process's CPU time and alternating the
    models pass by pass. With one thread this is the work done, unaffected by waiting for a
    core on a machine shared with other jobs; interference only adds time, hence the min."""
    copies = [copy.deepcopy(model).eval() for model in models_]
    x = torch.randn(batch, *input_shape)
    best = [math.inf] * len(copies)
    with torch.inference_mode():
        for model in copies:
            for _ in range(3):
                model(x)
        for _ in range(passes):
            for i, model in enumerate(copies):
                start = time.process_time()
                model(x)
                best[i] = min(best[i], time.process_time() - start)
    return best


def paired_latency(
    dense: nn.Module, compacted: nn.Module, input_shape: tuple, batch: int, args
) -> tuple[float, float]:
    """Latency of the dense and the compact model, measured alike (see ``--clock``)."""
    if args.clock == "cpu":
        dense_seconds, compact_seconds = cpu_latencies(
            (dense, compacted), input_shape, batch, args.repeats * args.rounds)
        return dense_seconds, compact_seconds
    best = [math.inf, math.inf]
    for _ in range(args.rounds):
        for i, model in enumerate((dense, compacted)):
            seconds = measure.latency(model, input_shape, batch_size=batch,
                                      repeats=args.repeats, warmup=3)
            best[i] = min(best[i], seconds)
    return best[0], best[1]


def run_case(name: str, input_shape: tuple, batch: int, args, report: Callable) -> None:
    torch.manual_seed(0)
    dense = models.create(name, num_classes=1000 if name == "resnet18" else 10).eval()
    dense_flops = measure.flops(dense, input_shape)
    decomposed = svd.decompose(dense, args.scheme).eval()
    multiples = {multiple for multiple, _, _ in VARIANTS.values()}
    for target in TARGETS:
        fractions = {m: fraction_for(decomposed, dense_flops, target, input_shape, m)
                     for m in multiples}
        for variant, (multiple, deployed, merge) in VARIANTS.items():
            set_fraction(decomposed, fractions[multiple])
            example = torch.randn(batch, *input_shape)
            if deployed:
                example = example.contiguous(memory_format=torch.channels_last)
            plan = svd.compaction_plan(decomposed, merge=merge, rank_multiple=multiple,
                                       example_input=example)
            compacted = svd.compact(decomposed, plan, channels_last=deployed)
            flops = measure.flops(compacted, input_shape)
            treated = ((svd.for_inference(dense), svd.for_inference(compacted)) if deployed
                       else (dense, compacted))
            dense_seconds, compact_seconds = paired_latency(*treated, input_shape, batch, args)
            # Both timed in the same window: the ratio holds even when the load drifts.
            speedup = dense_seconds / compact_seconds
            report({
                "model": name, "input": list(input_shape), "batch": batch, "target": target,
                "variant": variant, "rank_multiple": multiple,
                "rank_fraction": round(fractions[multiple], 4),
                "merged_layers": sum(rank is None for rank in plan.values()),
                "dense_flops": dense_flops, "compact_flops": flops,
                "flops_reduction": dense_flops / flops,
                "dense_ms": dense_seconds * 1e3, "compact_ms": compact_seconds * 1e3,
                "speedup": speedup, "efficiency": speedup / (dense_flops / flops),
            })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compact_latency.json"))
    parser.add_argument("--scheme", choices=("channel", "spatial"), default="channel")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the timings (default: PyTorch's)")
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per latency")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: ranksearch.measure.latency (median of --repeats passes, "
                             "best of --rounds); cpu: fastest of all passes in process CPU "
                             "time, models alternating (use with --threads 1 on a busy "
                             "machine)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating latency rounds")
    parser.add_argument("--models", nargs="*", default=None,
                        help="only these cases, as name:batch (e.g. resnet20:1)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows: list[dict] = []
    header = (f"{'model':<9} {'batch':>5} {'target':>6} {'variant':<22} {'frac':>5} "
              f"{'merged':>6} {'FLOPs red':>9} {'dense ms':>9} {'comp ms':>8} {'speedup':>7} "
              f"{'eff':>5}")
    print(f"scheme={args.scheme}, threads={torch.get_num_threads()}, clock={args.clock}, "
          "random weights")
    print(header)

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['model']:<9} {row['batch']:>5} {row['target']:>6.1f} {row['variant']:<22} "
              f"{row['rank_fraction']:>5.2f} {row['merged_layers']:>6} "
              f"{row['flops_reduction']:>9.2f} {row['dense_ms']:>9.2f} {row['compact_ms']:>8.2f} "
              f"{row['speedup']:>7.2f} {row['efficiency']:>5.2f}", flush=True)

    start = time.perf_counter()
    for name, input_shape, batch in CASES:
        if args.models is None or f"{name}:{batch}" in args.models:
            run_case(name, input_shape, batch, args, report)
    result = {
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "clock": args.clock, "scheme": args.scheme,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "weights": "random (latency depends on shapes only)",
        "flops_convention": measure.FLOPS_CONVENTION,
        "seconds": time.perf_counter() - start, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

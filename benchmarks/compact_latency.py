"""Does a FLOPs reduction from compaction turn into a CPU speedup?

For each model, batch size and target FLOPs reduction (2×, 3×, 4×), the model is decomposed
(channel scheme by default), every SVD layer keeps the same fraction of its singular values
(the fraction is found by bisection on the measured FLOPs of the compact model), and the
compact model is timed against the dense one. Efficiency = measured speedup ÷ FLOPs
reduction: 1 means the CPU turns every saved FLOP into time.

Weights are random: latency does not depend on their values, only the ranks do, and those
are set directly here. FLOPs come from ``ranksearch.measure.flops`` (batch size 1). The dense
and the compact model are timed pass by pass, alternating, ``--passes`` times each, and the
fastest pass of each is kept: load from other processes only adds time and hits both alike.
``--clock wall`` (default) times wall time; ``--clock cpu`` this process's CPU time, what to
use with ``--threads 1`` on a machine shared with other jobs. Where two variants give the same
structure (e.g. every rank rounded to 16 or by the default rule), it is timed once and the row
says which variant it shares.

Amdahl's bound: the share of the dense model's time spent in convolutions and matrix
products (``torch.profiler``) is all that can shrink with the ranks; pooling, activations and
residual additions stay. ``efficiency_bound`` is the efficiency at the row's reduction if the
compute ops took time exactly in proportion to their FLOPs and the rest stayed.

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
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ranksearch import measure, models, svd
from ranksearch.precision import cpu_name

CASES = [  # model, input shape (C, H, W), batch size
    ("resnet18", (3, 224, 224), 1),
    ("resnet18", (3, 224, 224), 8),
    ("resnet20", (3, 32, 32), 1),
    ("resnet20", (3, 32, 32), 32),
]
TARGETS = (2.0, 3.0, 4.0)
# variant: (rank multiple, deployed form, merge rule)
# Operators whose time scales with FLOPs: convolutions (oneDNN's, or PyTorch's im2col kernel,
# which small convolutions at batch 1 get) and the classifier's matrix product.
COMPUTE_OPS = {"aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
               "aten::_nnpack_spatial_convolution", "aten::convolution_overrideable",
               "aten::addmm", "aten::mm"}
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


def compute_share(model: nn.Module, input_shape: tuple, batch: int) -> float:
    """Share of ``model``'s forward time spent in convolutions and matrix products, from
    :mod:`torch.profiler` (self CPU time of each operator). The rest (pooling, activations,
    residual additions, ...) does not shrink with the ranks, which bounds the efficiency any
    rank choice can reach. The profiler's per-operator overhead counts as the rest, so the
    share is slightly low and the bound slightly pessimistic."""
    x = measure.example_input(model, input_shape, batch)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with torch.profiler.profile() as profiler:
            for _ in range(5):
                model(x)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    return sum(event.self_cpu_time_total for event in events if event.key in COMPUTE_OPS) / total


def efficiency_bound(share: float, reduction: float) -> float:
    """The efficiency if the compute ops took time in proportion to their FLOPs and the rest
    stayed as it is (Amdahl): speedup ``1 / (share / reduction + 1 - share)`` ÷ reduction."""
    return 1 / (share + (1 - share) * reduction)


def run_case(name: str, input_shape: tuple, batch: int, args, report: Callable) -> None:
    torch.manual_seed(0)
    dense = models.create(name, num_classes=1000 if name == "resnet18" else 10).eval()
    dense_flops = measure.flops(dense, input_shape)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    deployed_dense = svd.for_inference(dense)
    share = compute_share(deployed_dense, input_shape, batch)
    decomposed = svd.decompose(dense, args.scheme).eval()
    multiples = {multiple for multiple, _, _ in VARIANTS.values()}
    for target in TARGETS:
        fractions = {m: fraction_for(decomposed, dense_flops, target, input_shape, m)
                     for m in multiples}
        timed: dict[tuple, tuple[str, float, float]] = {}  # structure: variant, dense, compact
        for variant, (multiple, deployed, merge) in VARIANTS.items():
            set_fraction(decomposed, fractions[multiple])
            example = torch.randn(batch, *input_shape)
            if deployed:
                example = example.contiguous(memory_format=torch.channels_last)
            plan = svd.compaction_plan(decomposed, merge=merge, rank_multiple=multiple,
                                       example_input=example)
            compacted = svd.compact(decomposed, plan, channels_last=deployed)
            flops = measure.flops(compacted, input_shape)
            structure = (deployed, tuple(sorted(plan.items())))
            if structure in timed:  # another variant gave the same model: one timing, not two
                same_as, dense_seconds, compact_seconds = timed[structure]
            else:
                treated = ((deployed_dense, svd.for_inference(compacted)) if deployed
                           else (dense, compacted))
                # Both timed in the same window: the ratio holds even when the load drifts.
                dense_seconds, compact_seconds = measure.fastest_passes(
                    treated, input_shape, batch, args.passes, clock)
                same_as = None
                timed[structure] = (variant, dense_seconds, compact_seconds)
            reduction = dense_flops / flops
            speedup = dense_seconds / compact_seconds
            report({
                "model": name, "input": list(input_shape), "batch": batch, "target": target,
                "variant": variant, "rank_multiple": multiple,
                "rank_fraction": round(fractions[multiple], 4),
                "merged_layers": sum(rank is None for rank in plan.values()),
                "same_structure_as": same_as,
                "dense_flops": dense_flops, "compact_flops": flops,
                "flops_reduction": reduction,
                "dense_ms": dense_seconds * 1e3, "compact_ms": compact_seconds * 1e3,
                "speedup": speedup, "efficiency": speedup / reduction,
                "dense_compute_share": share,
                "efficiency_bound": efficiency_bound(share, reduction),
            })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/compact_latency.json for the channel "
                             "scheme, compact_latency_<scheme>.json for the others")
    parser.add_argument("--scheme", choices=svd.SCHEMES, default="channel")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the timings (default: PyTorch's)")
    parser.add_argument("--passes", type=int, default=40,
                        help="timed passes of each model, the two alternating; the fastest kept")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: wall time (what a user waits for); cpu: this process's CPU "
                             "time (use with --threads 1 on a busy machine)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="only these cases, as name:batch (e.g. resnet20:1)")
    args = parser.parse_args()
    if args.out is None:
        suffix = "" if args.scheme == "channel" else f"_{args.scheme}"
        args.out = Path(f"benchmarks/results/compact_latency{suffix}.json")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows: list[dict] = []
    header = (f"{'model':<9} {'batch':>5} {'target':>6} {'variant':<22} {'frac':>5} "
              f"{'merged':>6} {'FLOPs red':>9} {'dense ms':>9} {'comp ms':>8} {'speedup':>7} "
              f"{'eff':>5} {'bound':>5}")
    print(f"scheme={args.scheme}, threads={torch.get_num_threads()}, clock={args.clock}, "
          "random weights")
    print(header)

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['model']:<9} {row['batch']:>5} {row['target']:>6.1f} {row['variant']:<22} "
              f"{row['rank_fraction']:>5.2f} {row['merged_layers']:>6} "
              f"{row['flops_reduction']:>9.2f} {row['dense_ms']:>9.2f} {row['compact_ms']:>8.2f} "
              f"{row['speedup']:>7.2f} {row['efficiency']:>5.2f} "
              f"{row['efficiency_bound']:>5.2f}", flush=True)

    start = time.perf_counter()
    for name, input_shape, batch in CASES:
        if args.models is None or f"{name}:{batch}" in args.models:
            run_case(name, input_shape, batch, args, report)
    result = {
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "clock": args.clock,
        "scheme": args.scheme,
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

"""How fast can an SVD-trained ResNet-20 for Fashion-MNIST be on this CPU, at best?

A decomposed layer keeps its input and output widths; only the rank between the two factors
shrinks. So whatever the ranks, every activation between layers keeps the dense model's
channels, while filter pruning thins the activations themselves. This script times the
fastest structures SVD training can deploy for the Fashion-MNIST space's model (ResNet-20,
1 x 28 x 28, ``conv1`` and ``fc`` kept dense): every decomposed layer at rank 1, 4, 8 and
16 (without rounding; rank 16 is the full rank of the first stage, which then stays dense),
in both schemes, in the deployed form (channels_last, batch norms folded), against the dense
model, the two alternating pass by pass (:func:`ranksearch.measure.fastest_passes`).

No accuracy is involved: rank 1 everywhere is no usable network, only a lower bound on the
latency of any SVD structure of this model. With ``--run RUN_DIR`` the run's dense reference
and every baseline's pruned structure (``ranksearch.latency.run_models``, as ``ranksearch
latency`` rebuilds them) are timed in the same window, all models alternating pass by pass,
and the script lists the baselines faster than the fastest SVD structure.

    python benchmarks/fashion_mnist_resnet20/latency_floor.py --run runs/fashion-mnist-resnet20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from ranksearch import measure, models, svd
from ranksearch.latency import run_models

INPUT = (1, 28, 28)
EXCLUDE = ("conv1", "fc")
RANKS = (1, 4, 8, 16)


def floor_structures() -> dict[str, nn.Module]:
    """The dense model and, per scheme and uniform rank, its fastest SVD structure, deployed."""
    torch.manual_seed(0)
    dense = models.create("resnet20", num_classes=10, in_channels=1).eval()
    structures = {"dense": svd.for_inference(dense)}
    for scheme in ("channel", "spatial", "pointwise_first"):
        decomposed = svd.decompose(dense, scheme, exclude=EXCLUDE).eval()
        for rank in RANKS:
            svd.set_ranks(decomposed, {name: min(rank, layer.full_rank)
                                       for name, layer in svd.svd_layers(decomposed).items()})
            compact = svd.compact(decomposed, rank_multiple=1)
            structures[f"svd:{scheme}-rank{rank}"] = svd.for_inference(compact)
    return structures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="the space's latency batch")
    parser.add_argument("--threads", type=int, default=2, help="the space's latency threads")
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--run", type=Path, default=None,
                        help="a run whose reference and baselines to time alongside")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("latency_floor.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    structures = floor_structures()
    if args.run is not None:
        builders, input_shape = run_models(args.run)
        if tuple(input_shape) != INPUT:
            raise SystemExit(f"{args.run}: input {tuple(input_shape)}, not the {INPUT} of "
                             "the Fashion-MNIST space")
        structures.update({key: build() for key, build in builders.items()
                           if key == "reference" or key.startswith("baseline:")})
    seconds = dict(zip(structures, measure.fastest_passes(
        tuple(structures.values()), INPUT, args.batch, args.passes), strict=True))
    rows = []
    for key, model in structures.items():
        # Each against its own dense model: the random-weight one, or the run's reference.
        base = seconds["reference" if key.startswith("baseline:") else "dense"]
        rows.append({"model": key, "flops": measure.flops(model, INPUT),
                     "ms": 1e3 * seconds[key], "latency_ratio": seconds[key] / base})
        print(f"{key:26s} {rows[-1]['flops'] / 1e6:7.2f} MFLOPs {1e3 * seconds[key]:7.2f} ms "
              f"x {rows[-1]['latency_ratio']:.2f}", flush=True)
    floor = min(row["latency_ratio"] for row in rows if row["model"].startswith("svd:"))
    faster = [row["model"] for row in rows
              if row["model"].startswith("baseline:") and row["latency_ratio"] < floor]
    print(f"fastest SVD structure: {floor:.2f} x dense latency; baselines faster: "
          f"{len(faster)} ({', '.join(faster) or 'none'})")
    result = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch,
              "passes": args.passes, "input": list(INPUT), "exclude": list(EXCLUDE),
              "run": None if args.run is None else str(args.run), "rows": rows,
              "fastest_svd_structure_ratio": floor, "baselines_faster_than_that": faster,
              "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

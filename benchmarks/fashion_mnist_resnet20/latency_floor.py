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
latency of any SVD structure of this model. With ``--run RUN_DIR`` the script sets the
bound beside the latency / dense latency of that run's baselines and SVD trials
(``RUN_DIR/latency.json``, written by ``ranksearch latency``).

    python benchmarks/fashion_mnist_resnet20/latency_floor.py --run runs/fashion-mnist-resnet20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ranksearch import measure, models, svd

INPUT = (1, 28, 28)
EXCLUDE = ("conv1", "fc")
RANKS = (1, 4, 8, 16)


def floor_rows(batch: int, passes: int) -> list[dict]:
    """One row per scheme and uniform rank: FLOPs and latency against the dense model."""
    torch.manual_seed(0)
    dense = models.create("resnet20", num_classes=10, in_channels=1).eval()
    dense_flops = measure.flops(dense, INPUT)
    rows = []
    for scheme in ("channel", "spatial"):
        decomposed = svd.decompose(dense, scheme, exclude=EXCLUDE).eval()
        for rank in RANKS:
            svd.set_ranks(decomposed, {name: min(rank, layer.full_rank)
                                       for name, layer in svd.svd_layers(decomposed).items()})
            compact = svd.compact(decomposed, rank_multiple=1)
            dense_s, compact_s = measure.fastest_passes(
                (svd.for_inference(dense), svd.for_inference(compact)), INPUT, batch, passes)
            rows.append({"scheme": scheme, "rank": rank,
                         "flops_reduction": dense_flops / measure.flops(compact, INPUT),
                         "dense_ms": 1e3 * dense_s, "compact_ms": 1e3 * compact_s,
                         "latency_ratio": compact_s / dense_s})
            print(f"batch {batch}, {scheme}, rank {rank}: FLOPs / "
                  f"{rows[-1]['flops_reduction']:.2f}, latency x {rows[-1]['latency_ratio']:.2f}"
                  f" ({1e3 * compact_s:.2f} vs {1e3 * dense_s:.2f} ms)", flush=True)
    return rows


def run_ratios(run: Path) -> dict[str, float]:
    """Latency / dense latency of every model of a run at its latency batch."""
    timed = json.loads((run / "latency.json").read_text())
    reference = timed["models"]["reference"]["latency_ms"]
    return {key: value["latency_ms"] / reference for key, value in timed["models"].items()
            if key != "reference"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="the space's latency batch")
    parser.add_argument("--threads", type=int, default=2, help="the space's latency threads")
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--run", type=Path, default=None, help="a run with latency.json")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("latency_floor.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result: dict = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch,
                    "passes": args.passes, "input": list(INPUT), "exclude": list(EXCLUDE),
                    "rows": floor_rows(args.batch, args.passes)}
    if args.run is not None:
        ratios = run_ratios(args.run)
        floor = min(row["latency_ratio"] for row in result["rows"])
        result["run"] = str(args.run)
        result["run_latency_ratios"] = ratios
        result["fastest_svd_structure_ratio"] = floor
        result["baselines_faster_than_that"] = sorted(
            key for key, ratio in ratios.items() if key.startswith("baseline:") and ratio < floor)
        print(f"fastest SVD structure: {floor:.2f} x dense latency; baselines below it: "
              f"{', '.join(result['baselines_faster_than_that']) or 'none'}")
    result["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Train the dense ResNet-20 reference that the Fashion-MNIST benchmark compresses.

SGD 0.1 with Nesterov momentum 0.9, cosine decay, weight decay 5e-4, batch 128, random crop
(4-pixel zero padding) and horizontal flips, on the official training split minus the 5 %
that the benchmark's search holds out for validation (same split: same seed and fraction as
``search_spaces/fashion_mnist_resnet20.yaml``). bf16 autocast and channels_last on a CPU
that computes bf16 natively (``precision: auto``).

Writes ``reference/resnet20-fashion-mnist.safetensors`` (a plain state dict, about 1 MB),
``reference/reference.json`` (the command, schedule, accuracies, wall time, SHA-256) and the
per-epoch log ``reference/train.log``. The search space loads the weights through
``model.weights``; its SHA-256 is part of the reference's cache key.

    python benchmarks/fashion_mnist_resnet20/train_reference.py --epochs 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ranksearch import models
from ranksearch.config import Schedule
from ranksearch.data import load
from ranksearch.precision import resolve_precision
from ranksearch.runs import save_state
from ranksearch.train import Phase, evaluate, fit

HERE = Path(__file__).resolve().parent
VAL_FRACTION = 0.05  # as in search_spaces/fashion_mnist_resnet20.yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--out", type=Path, default=HERE / "reference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = load("fashion-mnist", val_fraction=VAL_FRACTION, seed=args.seed, device="cpu")
    schedule = Schedule(epochs=args.epochs, lr=0.1, optimizer="sgd", momentum=0.9,
                        weight_decay=5e-4, batch_size=128, lr_schedule="cosine")
    torch.manual_seed(args.seed)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    result = fit(model, Phase("reference", data, schedule, seed=args.seed,
                              precision=args.precision, channels_last=True))
    metrics = {"val_accuracy": evaluate(model, data, "val"),
               "test_accuracy": evaluate(model, data, "test")}
    weights = args.out / "resnet20-fashion-mnist.safetensors"
    save_state(weights, {k: v.contiguous() for k, v in model.state_dict().items()})
    log = "\n".join(f"epoch {i + 1}: mean training loss {loss:.4f}"
                    for i, loss in enumerate(result.losses))
    (args.out / "train.log").write_text(log + "\n")
    record = {
        "command": "python " + shlex.join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "model": "resnet20 (CIFAR ResNet-20, 1 input channel, 10 classes)",
        "data": f"fashion-mnist, official training split minus {VAL_FRACTION:.0%} held out "
                f"(seed {args.seed}); test = official test split",
        "schedule": schedule.model_dump(), "precision": resolve_precision(args.precision, "cpu"),
        "channels_last": True, "seed": args.seed, **metrics,
        "train_seconds": result.seconds, "seconds_per_epoch": result.seconds / args.epochs,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    (args.out / "reference.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

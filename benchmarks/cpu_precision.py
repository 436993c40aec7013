"""CPU training speed and accuracy parity: fp32, channels_last, bf16 autocast.

Four settings of ``ranksearch.train.fit`` on ResNet-20 and the full Fashion-MNIST (or, with
``--dataset digits``, the quickstart's 8x8 digits):

* ``fp32``: NCHW, fp32 (the default of the shipped spaces before bf16 on CPUs);
* ``fp32+cl``: channels_last;
* ``bf16+cl``: channels_last and bf16 autocast (``precision: auto`` on a CPU with
  AVX512-BF16/AMX), regularisers and the batch norm outputs that reach more than a
  convolution (residual sums) in fp32 (``ranksearch.precision.fp32_batch_norms``);
* ``bf16-plain+cl``: the same without ``fp32_batch_norms``, autocast as PyTorch gives it
  (every batch norm returns the bf16 it receives): what the fp32 residual stream costs in
  time and what it buys in accuracy. ranksearch never trains this way.

All four step with the fused optimizers ``ranksearch.train.Phase.optimizer`` makes.

**Speed.** Seconds per training step (``--batch-size``, 128 by default) of the dense model
and of the SVD model (channel scheme, orthogonality + Hoyer), both models and all settings
taking turns in rounds of ``--steps`` steps so that load from other processes affects them
alike: the median round of each setting, its speedup as the median over rounds of that
round's fp32 time over its own, and the SVD step's cost in each setting as the median over
rounds of that round's SVD time over its dense time.

**Parity.** The same short reference schedule (SGD 0.1, Nesterov, cosine, weight decay 5e-4,
``--epochs`` epochs, same seed and batch order) trained in ``fp32+cl`` and in each bf16
setting, then the test accuracy of each (evaluated in fp32). Parity means within 0.3 point
of ``fp32+cl``; with ``--seeds``, one run per seed (initialisation and batch order) and
setting, and the mean gap of each bf16 setting.

    python benchmarks/cpu_precision.py --epochs 3
    python benchmarks/cpu_precision.py --epochs 3 --rounds 0 --seeds 1 2 --out ...  # parity only
    python benchmarks/cpu_precision.py --dataset digits --batch-size 64 --epochs 15 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

from ranksearch import models, svd
from ranksearch.config import Schedule
from ranksearch.data import load
from ranksearch.precision import cpu_has_bf16, cpu_name, resolve_precision
from ranksearch.train import Phase, evaluate, fit

DATASETS = {
    "fashion-mnist": "fashion-mnist (full; test = official test split)",
    "digits": "digits (scikit-learn's 8x8; test = ranksearch's fixed 20 % split)",
}
SETTINGS = {  # name: (precision, channels_last, fp32 batch-norm outputs)
    "fp32": ("fp32", False, True),
    "fp32+cl": ("fp32", True, True),
    "bf16+cl": ("auto", True, True),
    "bf16-plain+cl": ("auto", True, False),
}
KINDS = ("dense", "svd")
BF16_SETTINGS = [name for name, (precision, _, _) in SETTINGS.items() if precision != "fp32"]


@contextlib.contextmanager
def _norms_as_autocast_leaves_them(_model: torch.nn.Module, _precision: str):  # noqa: ANN202
    yield


def _fit(model: torch.nn.Module, phase: Phase, fp32_norms: bool):  # noqa: ANN202
    """``fit``, with ``fp32_batch_norms`` replaced by nothing for a ``-plain`` setting."""
    if fp32_norms:
        return fit(model, phase)
    with mock.patch("ranksearch.train.fp32_batch_norms", _norms_as_autocast_leaves_them):
        return fit(model, phase)


def _regulariser(model: torch.nn.Module) -> torch.Tensor:
    return svd.orthogonality_loss(model) + svd.sparsity_loss(model, "hoyer", 0.01)


def step_times(data, steps: int, rounds: int, batch_size: int
               ) -> dict[str, dict[str, list[float]]]:
    """Seconds per step of each model kind (dense, SVD) and setting in each round, every kind
    and setting taking its turn in every round."""
    schedule = Schedule(epochs=1, lr=1e-3, optimizer="adam", batch_size=batch_size,
                        max_batches=steps)
    nets = {}
    for kind in KINDS:
        for name in SETTINGS:
            torch.manual_seed(0)
            net = models.create("resnet20", num_classes=10, in_channels=1)
            nets[kind, name] = (svd.decompose(net, exclude=("conv1", "fc")) if kind == "svd"
                                else net)
    times: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in SETTINGS}
                                                for kind in KINDS}
    for round_ in range(rounds + 1):
        for kind in KINDS:
            for name, (precision, channels_last, fp32_norms) in SETTINGS.items():
                phase = Phase("svd" if kind == "svd" else "reference", data, schedule,
                              seed=round_, precision=precision, channels_last=channels_last,
                              regulariser=_regulariser if kind == "svd" else None,
                              progress=False)
                result = _fit(nets[kind, name], phase, fp32_norms)
                if round_:  # the first round warms up (allocations, kernel choice)
                    times[kind][name].append(result.seconds / steps)
    return times


def _paired_median(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of each round's own ratio: a slow spell of the machine that
    lasts a round slows both sides of that round alike and cancels out."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def parity(data, epochs: int, seed: int, batch_size: int) -> dict[str, float]:
    schedule = Schedule(epochs=epochs, lr=0.1, optimizer="sgd", weight_decay=5e-4,
                        batch_size=batch_size)
    accuracy = {}
    for name in ("fp32+cl", *BF16_SETTINGS):
        precision, channels_last, fp32_norms = SETTINGS[name]
        torch.manual_seed(seed)
        model = models.create("resnet20", num_classes=10, in_channels=1)
        result = _fit(model, Phase("reference", data, schedule, seed=seed, precision=precision,
                                   channels_last=channels_last, desc=name, progress=False),
                      fp32_norms)
        accuracy[name] = evaluate(model, data, "test")
        print(f"seed {seed}, {name}: test accuracy {accuracy[name]:.4f} after {epochs} epochs "
              f"({result.seconds:.0f} s)", flush=True)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="parity schedule")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="0: no timing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="parity seeds")
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_precision.json"))
    args = parser.parse_args()
    data = load(args.dataset, val_fraction=0.05, seed=0, device="cpu")
    start = time.perf_counter()
    rounds = step_times(data, args.steps, args.rounds, args.batch_size) if args.rounds else {}
    timing = {kind: {name: statistics.median(t) for name, t in times.items()}
              for kind, times in rounds.items()}
    speedup = {kind: {name: _paired_median(times["fp32"], series)
                      for name, series in times.items()}
               for kind, times in rounds.items()}
    svd_over_dense = ({name: _paired_median(rounds["svd"][name], rounds["dense"][name])
                       for name in SETTINGS} if rounds else {})
    for kind, values in timing.items():
        print(kind, {k: f"{v:.3f} s/step ({speedup[kind][k]:.2f}x)" for k, v in values.items()},
              flush=True)
    if svd_over_dense:
        print("svd step / dense step", {k: f"{v:.3f}" for k, v in svd_over_dense.items()},
              flush=True)
    accuracy = ({seed: parity(data, args.epochs, seed, args.batch_size) for seed in args.seeds}
                if args.epochs else {})
    gaps = {name: {seed: 100 * (a[name] - a["fp32+cl"]) for seed, a in accuracy.items()}
            for name in BF16_SETTINGS}
    out = {
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(), "cpu_has_bf16": cpu_has_bf16(),
        "bf16_resolves_to": resolve_precision("auto", "cpu"),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "model": "resnet20 (1 input channel)",
        "dataset": DATASETS[args.dataset], "batch_size": args.batch_size,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "seconds_per_step": timing,
        "speedup_vs_fp32": speedup,
        "svd_step_over_dense_step": svd_over_dense,
        "seconds_per_step_by_round": rounds,
        "parity_epochs": args.epochs,
        "test_accuracy": {str(seed): a for seed, a in accuracy.items()},
        "accuracy_gap_points": {name: {str(seed): g for seed, g in by_seed.items()}
                                for name, by_seed in gaps.items() if by_seed},
        "mean_gap_points": {name: statistics.mean(by_seed.values())
                            for name, by_seed in gaps.items() if by_seed},
        "seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

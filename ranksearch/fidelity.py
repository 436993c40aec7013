"""Many points per trained model: the energy-threshold sweep and its promotion rule.

One SVD-trained model gives a whole accuracy–FLOPs curve: prune it at many energy
thresholds and evaluate each candidate without fine-tuning. :func:`sweep` does that, with the
study's metric (top-1 accuracy or the user's), on a fixed subset of the validation split (its
first ``proxy_samples`` samples; the split's order is fixed by the study's seed), after
re-estimating the batch-norm statistics of each pruned candidate on ``bn_batches`` training
batches (pruning shifts every activation's scale, and stale statistics, not the pruning, would
then decide the proxy accuracy). FLOPs are those of the candidate's compact model (FLOPs merge
rule, the study's rank rounding).

:func:`promote` picks the candidates worth fine-tuning: on the proxy front, by the
hypervolume each adds. The search makes each a complete trial of the study with its real
parameters; the others stay low-fidelity points of the report. Nothing here knows Optuna.

The sweep of an SVD-trained model is cached in the run directory under a key of the SVD
model's and the sweep's settings, so a trial cut off by a kill reruns none of it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import config as cfg
from . import measure, svd
from .data import Dataset
from .dominance import hypervolume_contributions, nondominated
from .pipeline import (
    dataset,
    deployable,
    expand_by_layer,
    quality,
    reference,
    svd_key,
    svd_trained,
)
from .precision import autocast, fp32_batch_norms, resolve_precision
from .runs import RunDir, read_json, write_json

__all__ = ["Candidate", "energy_candidates", "sweep", "promote", "allocate"]

Energy = float | dict[str, float]
#: Thresholds per unit whose sensitivity :func:`sweep` measures for :func:`allocate`.
ALLOCATION_LEVELS = 5


@dataclass(frozen=True)
class Candidate:
    """One energy setting of a sweep, pruned and evaluated without fine-tuning."""

    energy: Energy
    """As a trial's ``energy`` parameter holds it: one value, or one per stage/layer."""
    flops: int
    proxy_accuracy: float
    rank: int
    """Kept rank summed over the SVD layers."""
    seconds: float
    source: str = "sweep"
    """``sweep`` (:func:`energy_candidates`), ``sensitivity`` (one unit pruned further than
    the rest, measuring its sensitivity) or ``allocated`` (:func:`allocate`); the trial's own
    setting comes first whatever its source."""


def _on_step(spec: cfg.Range, value: float) -> float:
    """``value`` as the range can hold it: on its ``step`` grid (as Optuna's distribution has
    it, a promoted candidate off the grid would be refused) and inside its ends."""
    if spec.step is not None:
        top = spec.low + math.floor((spec.high - spec.low) / spec.step + 1e-9) * spec.step
        value = round(min(spec.low + round((value - spec.low) / spec.step) * spec.step, top),
                      12)  # 0.36, not 0.36000000000000004
    return float(min(max(value, spec.low), spec.high))


def _grid(spec: Any, n: int) -> list[float]:
    """``n`` values spread over a searched range (log-spaced for a log range; on its step
    grid for a stepped one, fewer where steps coincide), the choices of a list, or the one
    constant."""
    if isinstance(spec, cfg.Range):
        spaced = np.geomspace if spec.log else np.linspace
        # Clipped: rounding must not take an end point outside the searched range.
        return list(dict.fromkeys(_on_step(spec, v) for v in spaced(spec.low, spec.high, n)))
    if isinstance(spec, list):
        return [float(v) for v in spec]
    return [float(spec)]


def energy_candidates(space: cfg.SearchSpace, decay: str, units: list[str], n: int,
                      seed: int) -> list[Energy]:
    """The energy settings a sweep tries: the space's range for ``decay`` cut into a grid
    (the same value for every unit), and with stage or layer units as many again drawn at
    random per unit (log-uniformly for a log range), from a generator seeded by ``seed``."""
    spec = space.for_decay("energy", decay)
    if not units:
        return sorted(set(_grid(spec, n)))
    uniform = [dict.fromkeys(units, v) for v in _grid(spec, max(1, n // 2))]
    if not isinstance(spec, cfg.Range):
        return uniform
    rng = np.random.default_rng(seed)
    low, high = (math.log(spec.low), math.log(spec.high)) if spec.log else (spec.low, spec.high)
    drawn = []
    for _ in range(n - len(uniform)):
        values = rng.uniform(low, high, len(units))
        drawn.append({u: _on_step(spec, math.exp(v) if spec.log else v)
                      for u, v in zip(units, values, strict=True)})
    return uniform + drawn


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, data: Dataset, batches: int, batch_size: int,
                    precision: str) -> None:
    """Re-estimate every batch norm's running statistics on ``batches`` training batches
    (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = next(model.parameters()).device
    # Shuffled and augmented as in training, the same batches for every candidate.
    generator = torch.Generator().manual_seed(0)
    # The statistics of the activations as training computed them (bf16 convolutions,
    # fp32 batch norm outputs, when the study trains in bf16).
    with fp32_batch_norms(model, resolve_precision(precision, device.type)):
        for x, _ in data.batches("train", batch_size, train=True, generator=generator,
                                 limit=batches):
            with autocast(device, precision):
                model(x)
    model.eval()


def _evaluate_candidates(model: nn.Module, energies: list[Energy], data: Dataset,
                         config: cfg.StudyConfig, spec: cfg.SweepSpec,
                         groups: dict[str, str], evaluated: dict[str, Candidate],
                         source: str = "sweep") -> list[Candidate]:
    """A candidate per setting of ``energies``. ``evaluated`` holds the candidates of the
    model evaluated so far, by setting: a setting met again (a sensitivity probe's base is a
    uniform candidate, an allocation may be a probe) is returned from it, costing 0 s."""
    model = copy.deepcopy(model).eval()
    layers = svd.svd_layers(model)
    names = list(layers)
    batch_size = config.schedule.finetune.batch_size
    results = []
    for energy in energies:
        key = json.dumps(energy, sort_keys=True)
        if key in evaluated:
            results.append(replace(evaluated[key], seconds=0.0, source=source))
            continue
        start = time.perf_counter()
        svd.unprune(model)
        svd.prune_by_energy(model, expand_by_layer(energy, names, groups))
        # The compact model (a copy) is the one counted, recalibrated and evaluated: its
        # FLOPs and proxy accuracy describe the same model, and its thin layers make both
        # forward passes cheaper than the masked full-rank one. Built as a trial builds it
        # (with measure_latency, pairs slower than their layer merged back, timed), so that
        # a promoted candidate's trial ends with the FLOPs its candidate had.
        candidate, _ = deployable(model, data, config)
        flops = measure.flops(candidate, data.input_shape)
        _recalibrate_bn(candidate, data, spec.bn_batches, batch_size, config.precision)
        accuracy = quality(candidate, data, config, "val",
                           batch_size=min(spec.proxy_samples, 500),
                           precision=config.precision, samples=spec.proxy_samples)
        results.append(Candidate(energy, flops, accuracy,
                                 sum(int(layer.rank) for layer in layers.values()),
                                 time.perf_counter() - start, source))
        evaluated[key] = results[-1]
    return results


def allocate(levels: list[float], probes: dict[str, list[tuple[float, float]]],
             targets: list[float]) -> list[dict[str, float]]:
    """Per-unit thresholds meeting each FLOPs target at the least summed accuracy loss.

    ``probes[unit][i]`` is the (proxy accuracy, FLOPs) of the model with ``unit`` at
    ``levels[i]`` and every other unit at ``levels[0]`` (so ``probes[unit][0]`` is that
    base model for every unit). Units' losses and savings are taken as additive, as AIMET's
    per-layer compression-ratio selection takes them. Greedy: from the base, repeatedly move
    the one unit whose step to a higher level loses the least accuracy per FLOP saved, until
    the FLOPs are at or below the target (or no unit can save more). The last move is the
    one of all that reach the target losing the least accuracy: the best ratio's step may
    save far more than is left to save, and overshoot the target by a whole level.
    """
    allocations = []
    for target in targets:
        chosen = dict.fromkeys(probes, 0)
        flops = next(iter(probes.values()))[0][1]
        while flops > target:
            moves = []  # (accuracy lost per FLOP saved, accuracy lost, unit, level, saving)
            for unit, rows in probes.items():
                accuracy, unit_flops = rows[chosen[unit]]
                for j in range(chosen[unit] + 1, len(levels)):
                    saving = unit_flops - rows[j][1]
                    if saving > 0:
                        loss = max(accuracy - rows[j][0], 0.0)
                        moves.append((loss / saving, loss, unit, j, saving))
            if not moves:
                break
            best = min(moves, key=lambda move: move[0])
            if flops - best[4] <= target:
                best = min((m for m in moves if flops - m[4] <= target),
                           key=lambda move: (move[1], move[4]))
            _, _, unit, j, saving = best
            chosen[unit] = j
            flops -= saving
        allocations.append({unit: levels[i] for unit, i in chosen.items()})
    return allocations


def _allocated(model: nn.Module, candidates: list[Candidate], data: Dataset,
               config: cfg.StudyConfig, spec: cfg.SweepSpec, groups: dict[str, str],
               units: list[str], decay: str, evaluated: dict[str, Candidate]
               ) -> list[Candidate]:
    """The sensitivity probes of every unit and the distinct :func:`allocate` candidates at
    ``spec.allocate`` FLOPs targets spread (log-spaced) over the other candidates' range."""
    levels = _grid(config.space.for_decay("energy", decay), ALLOCATION_LEVELS)
    if len(levels) < 2:
        return []
    base = dict.fromkeys(units, levels[0])
    energies = [base] + [{**base, unit: level} for unit in units for level in levels[1:]]
    probed = _evaluate_candidates(model, energies, data, config, spec, groups, evaluated,
                                  "sensitivity")
    # probed[0] is the base; then each unit's probes, one per level above the first.
    per_unit = len(levels) - 1
    probes = {unit: [(c.proxy_accuracy, c.flops) for c in
                     [probed[0], *probed[1 + i * per_unit:1 + (i + 1) * per_unit]]]
              for i, unit in enumerate(units)}
    flops = [c.flops for c in candidates]
    targets = np.geomspace(min(flops), max(flops), spec.allocate + 2)[1:-1].tolist()
    # Neighbouring targets may get the same allocation: list it once (``evaluated`` would
    # spare its second evaluation, not its second row).
    distinct = list({json.dumps(a, sort_keys=True): a
                     for a in allocate(levels, probes, targets)}.values())
    allocated = _evaluate_candidates(model, distinct, data, config, spec, groups, evaluated,
                                     "allocated")
    return probed + allocated


def sweep(config: cfg.StudyConfig, params: cfg.TrialParams, run: RunDir,
          groups: dict[str, str], units: list[str]) -> list[Candidate]:
    """The sweep of the SVD-trained model that ``params`` determine (trained, or loaded
    from the run's cache): ``params.energy`` and every :func:`energy_candidates` setting,
    pruned and evaluated without fine-tuning, in that order; with ``sweep.allocate``, then
    each unit's sensitivity probes and the allocated candidates (:func:`allocate`). Cached
    in the run directory; computed once per model.

    ``groups`` maps each SVD layer to its stage; ``units`` are the stages or layers that
    the space's granularity gives a threshold each (empty for one global threshold).
    """
    spec = config.space.sweep if config.space is not None else None
    if spec is None:
        raise ValueError("the search space has no 'sweep' section")
    # Without allocation the key is the one sweeps had before it existed: they resume.
    key = cfg.settings_key("sweep", svd_key(config, params),
                           spec.model_dump(exclude=set() if spec.allocate else {"allocate"}),
                           units, params.energy, config.space.energy, config.rank_multiple,
                           # the merge rule (only when timed: earlier sweeps keep their keys)
                           *(["latency merge"] if config.measure_latency else []),
                           # allocate()'s rule, since its last move loses least
                           *(["allocation: least-loss last move"] if spec.allocate else []))
    entry = run.cache("sweep", key)
    with entry.lock():
        if entry.is_valid():
            return [Candidate(**c) for c in read_json(entry.file("sweep.json"))]
        entry.prepare()
        dense, _ = reference(config, run, progress=False)
        model, _ = svd_trained(config, params, run, dense, groups, progress=False)
        energies = [params.energy, *energy_candidates(config.space, params.decay, units,
                                                      spec.candidates, config.seed)]
        data = dataset(config)
        evaluated: dict[str, Candidate] = {}
        candidates = _evaluate_candidates(model, energies, data, config, spec, groups,
                                          evaluated)
        if spec.allocate and units:
            candidates += _allocated(model, candidates, data, config, spec, groups, units,
                                     params.decay, evaluated)
        write_json(entry.file("sweep.json"), [asdict(c) for c in candidates])
        entry.seal()
    return candidates


def promote(candidates: list[Candidate], count: int, reference_flops: float,
            exclude: Energy | None = None, taken: Sequence[Energy] = ()) -> list[Candidate]:
    """Up to ``count`` candidates of the proxy front (:func:`~ranksearch.dominance.
    nondominated` in proxy accuracy and FLOPs), those adding the most hypervolume first,
    each chosen given the ones before it. ``exclude`` (the trial's own setting, fine-tuned
    anyway) and ``taken`` (settings of the same model another trial promoted already) count
    as already chosen. Candidates at or above the reference's FLOPs add nothing and are
    never promoted."""
    if count <= 0 or not candidates:
        return []
    accuracy = np.array([c.proxy_accuracy for c in candidates])
    flops = np.array([c.flops / reference_flops for c in candidates])
    front = nondominated(accuracy, flops) & (flops < 1.0)
    chosen = [i for i, c in enumerate(candidates) if c.energy == exclude or c.energy in taken]
    picked: list[int] = []
    for _ in range(count):
        remaining = [i for i in np.flatnonzero(front) if i not in chosen]
        if not remaining:
            break
        gains = []
        for i in remaining:
            subset = chosen + [i]
            gains.append(hypervolume_contributions(accuracy[subset], flops[subset],
                                                   (0.0, 1.0))[-1])
        best = remaining[int(np.argmax(gains))]
        if gains[int(np.argmax(gains))] <= 0:
            break
        chosen.append(best)
        picked.append(best)
    return [candidates[i] for i in picked]

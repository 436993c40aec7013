"""One trial, independent of any search backend: settings in, metrics out.

``reference -> decompose -> SVD-train -> prune -> fine-tune -> measure``

Work shared by several trials is cached in the run directory under a key of the settings that
determine it: the dense reference (once per study) and the SVD-trained model before pruning
(shared by trials that differ only in their energy thresholds). Concurrent workers take a lock
on an entry, so each is computed once.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import config as cfg
from . import measure, models, svd
from .data import Dataset
from .data import load as load_data
from .errors import UserError
from .imports import resolve, split_spec
from .runs import RunDir, atomic_write_text, load_state, read_json, save_state, write_json
from .train import (
    Diverged,
    FitResult,
    Metric,
    MetricFailed,
    Phase,
    PhaseName,
    Regulariser,
    TrainLoop,
    evaluate,
    resolve_device,
    run_phase,
)
from .user_code import file_digest, source_file, user_code_errors, user_weights

__all__ = [
    "TrialFailed", "ReferenceFailed", "run_trial", "reference", "dataset", "build_model",
    "svd_layer_groups", "expand_by_layer", "measured", "deployable", "svd_trained", "svd_key",
    "train", "quality", "training_loop", "metric", "reference_key", "trial_budget",
    "SPECTRUM_ENERGY",
]


class TrialFailed(RuntimeError):
    """A trial that could not produce a result; ``str(err)`` is the reason recorded."""


class ReferenceFailed(TrialFailed, UserError):
    """The dense reference could not be trained (it diverged): the schedule needs fixing,
    so the command line says so in one line rather than failing trial after trial."""


def build_model(config: cfg.StudyConfig, data: Dataset) -> nn.Module:
    """The dense network the config names, shaped for the dataset."""
    spec = config.model
    try:
        return models.create(spec.name, num_classes=spec.num_classes or data.num_classes,
                             in_channels=spec.in_channels or data.input_shape[0])
    except models.ModelError as err:
        raise models.ModelError(f"model.name: {err}") from None


def svd_layer_groups(config: cfg.StudyConfig, dense: nn.Module) -> dict[str, str]:
    """The group of each layer that SVD training decomposes in ``dense``: its
    :func:`ranksearch.models.layer_groups` group, or its own name where it has none."""
    groups = models.layer_groups(dense)
    try:
        names = svd.decomposable(dense, exclude=tuple(config.model.exclude))
    except ValueError as err:  # a pattern that matches no layer of this model
        raise cfg.ConfigError(f"model.exclude: {err}") from None
    return {name: groups.get(name, name) for name in names}


@functools.lru_cache(maxsize=4)
def _cached_dataset(spec_json: str, seed: int, device: str) -> Dataset:
    spec = cfg.DataSpec.model_validate_json(spec_json)
    return load_data(spec.name, data_dir=spec.dir, val_fraction=spec.val_fraction, seed=seed,
                     device=device, subset=spec.subset, num_workers=spec.workers,
                     args=spec.args, image_size=spec.image_size, mean=spec.mean, std=spec.std)


def dataset(config: cfg.StudyConfig) -> Dataset:
    """The study's dataset on its training device, loaded once per process."""
    device = str(resolve_device(config.device))
    return _cached_dataset(config.data.model_dump_json(), config.seed, device)


def _user_code(spec: str, what: str) -> Callable[..., Any]:
    target, name = split_spec(spec)
    # Keyed by the resolved file: a relative path names another file from another folder.
    return _resolved(f"{target}:{name}" if name else spec, what)


@functools.cache
def _resolved(spec: str, what: str) -> Callable[..., Any]:
    # Once per process: a file-named spec would otherwise be looked up on every phase.
    return resolve(spec, what)


def training_loop(config: cfg.StudyConfig) -> TrainLoop | None:
    """The user's ``train_loop(model, phase)`` the config names; None for ranksearch's.

    Raises:
        ImportFailed: the function cannot be imported (one line).
    """
    return _user_code(config.train_loop, "training loop") if config.train_loop else None


def metric(config: cfg.StudyConfig) -> Metric | None:
    """The user's ``evaluate(model, batches)`` the config names; None for top-1 accuracy.

    Raises:
        ImportFailed: the function cannot be imported (one line).
    """
    spec = config.metric.evaluate
    return _user_code(spec, f"metric {config.metric.name}") if spec else None


def quality(model: nn.Module, data: Dataset, config: cfg.StudyConfig, split: str,
            **kwargs: Any) -> float:
    """The study's metric of ``model`` on ``split`` (:func:`ranksearch.train.evaluate`,
    whose keyword arguments ``kwargs`` are).

    Raises:
        MetricFailed: the metric returned no finite number.
    """
    return evaluate(model, data, split, metric=metric(config), name=config.metric.name,
                    **kwargs)


def train(
    config: cfg.StudyConfig, model: nn.Module, name: PhaseName, schedule: cfg.Schedule, *,
    seed: int, desc: str, progress: bool, regulariser: Regulariser | None = None,
    lr: float | None = None, epochs: int | None = None,
) -> FitResult:
    """Train ``model`` in place for one phase of the study: with the config's training loop
    (:func:`training_loop`), else ranksearch's :func:`~ranksearch.train.fit`.

    Raises:
        Diverged: the loss, or the weights a user's loop left, became non-finite.
    """
    phase = Phase(name, dataset(config), schedule, seed=seed, lr=lr, epochs=epochs,
                  regulariser=regulariser, precision=config.precision,
                  channels_last=config.channels_last, desc=desc, progress=progress)
    return run_phase(model, phase, training_loop(config))


def reference_key(config: cfg.StudyConfig) -> str:
    """What determines the dense reference (and, through it, every cache entry): model,
    data, schedule, seed, the content of the user's weights, and the user's training loop
    and metric when given (with the content of the files defining them)."""
    parts: list[Any] = [
        "reference", config.model.model_dump(exclude={"exclude"}), config.data.model_dump(),
        file_digest(config.model.weights),
        config.schedule.reference.key(), config.seed, config.precision,
    ]
    # Only when given: the caches of studies without them keep their keys (and resume).
    user = {"train_loop": config.train_loop, "metric": config.metric.evaluate}
    if any(user.values()):
        parts.append({**user, "code": [file_digest(source_file(spec))
                                       for spec in user.values()]})
    return cfg.settings_key(*parts)


def measured(model: nn.Module, data: Dataset, config: cfg.StudyConfig) -> dict[str, Any]:
    """Validation and test quality (the study's metric, keyed ``accuracy`` and
    ``test_accuracy``), FLOPs, parameters (and latency) of a trained model, all measured on
    its deployed form (:func:`ranksearch.svd.for_inference`: batch norms folded,
    channels_last, eval mode) in fp32, the model that ``export`` writes.

    Latency is CPU time at ``config.latency.batch_size`` (``latency_ms``, what the latency
    objective minimises), and also at batch 1 when that batch is larger
    (``latency_batch1_ms``), on ``config.latency.threads`` threads.

    Raises:
        MetricFailed: the metric returned no finite number.
    """
    t0 = time.perf_counter()
    deployed = svd.for_inference(model)
    metrics: dict[str, Any] = {
        "accuracy": quality(deployed, data, config, "val"),
        "test_accuracy": quality(deployed, data, config, "test"),
        "flops": measure.flops(deployed, data.input_shape),
        "params": measure.params(deployed),
    }
    if config.measure_latency:
        spec = config.latency
        with measure.num_threads(spec.threads) as threads:
            metrics["latency_ms"] = 1e3 * measure.latency(deployed, data.input_shape,
                                                          batch_size=spec.batch_size)
            if spec.batch_size > 1:
                metrics["latency_batch1_ms"] = 1e3 * measure.latency(deployed, data.input_shape)
        metrics.update(latency_batch_size=spec.batch_size, latency_threads=threads)
    metrics["eval_time_s"] = time.perf_counter() - t0
    return metrics


def deployable(model: nn.Module, data: Dataset, config: cfg.StudyConfig
               ) -> tuple[nn.Module, dict[str, int | None]]:
    """The compact model of a pruned SVD model, in the fastest form the engine makes, and
    its compaction plan.

    Kept ranks are rounded up (``config.rank_multiple``, default per layer); a pair is merged
    back into one layer where it is slower than the dense layer, timed on the CPU at the
    latency batch when the study measures latency, where it costs at least the dense
    layer's FLOPs at the dataset's input size otherwise.
    """
    # What the deployed (channels_last) model receives: the latency batch where pairs are
    # timed, one image where the FLOPs rule only needs the size of each layer's input.
    batch = config.latency.batch_size if config.measure_latency else 1
    example = measure.example_input(model, data.input_shape, batch, channels_last=True)
    with measure.num_threads(config.latency.threads if config.measure_latency else None):
        plan = svd.compaction_plan(model, merge="latency" if config.measure_latency else "flops",
                                   rank_multiple=config.rank_multiple, example_input=example)
    return svd.compact(model, plan), plan


def reference(
    config: cfg.StudyConfig, run: RunDir, *, progress: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained dense reference and its metrics, trained once per study and cached."""
    data = dataset(config)
    device = resolve_device(config.device)
    entry = run.cache("reference", reference_key(config))
    torch.manual_seed(config.seed)
    model = build_model(config, data).to(device)
    with entry.lock():
        if entry.is_valid():
            model.load_state_dict(load_state(entry.file("model.safetensors"), device))
            return model, read_json(entry.file("metrics.json"))
        entry.prepare()
        if config.model.weights:
            model.load_state_dict(user_weights(config.model.weights, device))
            train_seconds, epochs = 0.0, 0
        else:
            if progress:  # its bar shows on a terminal only: say what the wait is for
                print(f"training the dense reference ({config.schedule.reference.epochs} "
                      "epochs; cached for every trial)", file=sys.stderr, flush=True)
            try:
                with user_code_errors(config, "training"):
                    result = train(config, model, "reference", config.schedule.reference,
                                   seed=config.seed, desc="reference", progress=progress)
            except Diverged as err:
                raise ReferenceFailed(
                    f"reference {err}; lower schedule.reference.lr or check the training loop"
                ) from None
            train_seconds, epochs = result.seconds, result.epochs
        with user_code_errors(config, "measuring"):
            metrics = measured(model, data, config)
        metrics["train_time_s"] = train_seconds
        metrics["epochs"] = epochs
        save_state(entry.file("model.safetensors"), model.state_dict())
        write_json(entry.file("metrics.json"), metrics)
        entry.seal()
    return model, metrics


def expand_by_layer(
    value: float | dict[str, float], layer_names: list[str], groups: dict[str, str]
) -> float | dict[str, float]:
    """Resolve a per-stage or per-layer setting to one value per layer name.

    Keys of ``value`` are layer names or group names of :func:`ranksearch.models.layer_groups`;
    a layer's own name wins over its group's. A layer that neither names gets 0.
    """
    if not isinstance(value, dict):
        return value
    unknown = set(value) - set(layer_names) - set(groups.values())
    if unknown:
        raise TrialFailed(f"unknown layer or group {sorted(unknown)[0]!r} in the trial params")
    return {name: value.get(name, value.get(groups.get(name, ""), 0.0)) for name in layer_names}


#: The energy threshold at which :func:`svd_trained` records each layer's rank before and
#: after SVD training.
SPECTRUM_ENERGY = 0.01


def svd_key(config: cfg.StudyConfig, params: cfg.TrialParams) -> str:
    """What determines the SVD-trained model before pruning."""
    return cfg.settings_key(
        "svd", reference_key(config), params.training_key(), config.model.exclude,
        config.schedule.svd.key(),
    )


def svd_trained(
    config: cfg.StudyConfig, params: cfg.TrialParams, run: RunDir, dense: nn.Module,
    layer_groups: dict[str, str], progress: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """The reference decomposed and SVD-trained, cached for trials that share its settings."""
    entry = run.cache("svd", svd_key(config, params))
    torch.manual_seed(config.seed)
    model = svd.decompose(dense, scheme=params.scheme, init=params.init,
                          exclude=tuple(config.model.exclude))
    layer_names = list(svd.svd_layers(model))
    lambda_s = expand_by_layer(params.lambda_s, layer_names, layer_groups)
    with entry.lock():
        if entry.is_valid():
            model.load_state_dict(load_state(entry.file("model.safetensors"),
                                             resolve_device(config.device)))
            return model, {**read_json(entry.file("meta.json")), "svd_cached": True}
        entry.prepare()

        def regulariser(m: nn.Module) -> torch.Tensor:
            loss = params.lambda_o * svd.orthogonality_loss(m)
            if params.decay != "none":
                loss = loss + svd.sparsity_loss(m, params.decay, lambda_s)
            return loss

        before = svd.ranks_at_energy(model, SPECTRUM_ENERGY)
        result = train(config, model, "svd", config.schedule.svd, seed=config.seed + 1,
                       regulariser=regulariser, lr=params.lr, epochs=params.svd_epochs,
                       desc="svd-train", progress=progress)
        after = svd.ranks_at_energy(model, SPECTRUM_ENERGY)
        meta = {"svd_train_time_s": result.seconds, "svd_epochs": result.epochs,
                "svd_losses": result.losses,
                # Whether SVD training reshaped the spectrum: the rank kept at e = 0.01 per
                # layer, before and after (the same means truncated SVD + fine-tuning).
                "spectrum": {name: [before[name], after[name]] for name in before}}
        save_state(entry.file("model.safetensors"), model.state_dict())
        write_json(entry.file("meta.json"), meta)
        entry.seal()
    return model, {**meta, "svd_cached": False}


def trial_budget(config: cfg.StudyConfig) -> dict[str, cfg.Schedule]:
    """The SVD-training and fine-tuning schedules of the longest trial the study may run:
    the schedule's, with the most epochs the space may choose where it searches them (or
    those a one-trial config's ``params`` fix), so that no baseline trains for less than an
    SVD trial."""
    def most(field: str, schedule: cfg.Schedule) -> cfg.Schedule:
        choices = getattr(config.space, field, None)
        fixed = getattr(config.params, field, None)
        epochs = max(choices) if choices else fixed if fixed is not None else schedule.epochs
        return schedule.model_copy(update={"epochs": epochs})

    return {"svd": most("svd_epochs", config.schedule.svd),
            "finetune": most("finetune_epochs", config.schedule.finetune)}


def finetune_lr(config: cfg.StudyConfig, lr: float | None) -> float:
    """The fine-tuning rate: the schedule's, scaled as ``lr``, a rate given for SVD training
    (a searched one), scales the schedule's SVD-training rate."""
    if lr is None:
        return config.schedule.finetune.lr
    return config.schedule.finetune.lr * lr / config.schedule.svd.lr


def trial_config(config: cfg.StudyConfig, params: cfg.TrialParams) -> cfg.StudyConfig:
    """The single-trial config that ``ranksearch train`` reruns to reproduce this trial."""
    return config.model_copy(update={"space": None, "params": params, "baselines": None})


def run_trial(
    config: cfg.StudyConfig,
    params: cfg.TrialParams,
    run: RunDir,
    trial_dir: Path | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one SVD-training trial and return its metrics (see ``docs/internals.md``).

    With ``trial_dir``, the compact model, its compaction plan, the metrics and the trial's
    own config are written there. Raises :class:`TrialFailed` with the reason when the trial
    diverges.
    """
    start = time.perf_counter()
    data = dataset(config)
    dense, ref_metrics = reference(config, run, progress=progress)
    groups = models.layer_groups(dense)
    try:
        model, svd_meta = svd_trained(config, params, run, dense, groups, progress)
        layer_names = list(svd.svd_layers(model))
        if params.ranks is not None:
            svd.set_ranks(model, params.ranks)
        else:
            svd.prune_by_energy(model, expand_by_layer(params.energy, layer_names, groups))
        finetune_epochs = (params.finetune_epochs if params.finetune_epochs is not None
                           else config.schedule.finetune.epochs)
        finetune_seconds, finetune_trained = 0.0, 0
        if finetune_epochs > 0:
            result = train(config, model, "finetune", config.schedule.finetune,
                           seed=config.seed + 2,
                           regulariser=lambda m: params.lambda_o * svd.orthogonality_loss(m),
                           lr=finetune_lr(config, params.lr), epochs=finetune_epochs,
                           desc="fine-tune", progress=progress)
            finetune_seconds, finetune_trained = result.seconds, result.epochs
    except Diverged as err:
        raise TrialFailed(str(err)) from None
    ranks = {name: int(layer.rank) for name, layer in svd.svd_layers(model).items()}
    compact, plan = deployable(model, data, config)
    try:
        metrics = measured(compact, data, config)
    except MetricFailed as err:
        raise TrialFailed(str(err)) from None
    svd_train_s = 0.0 if svd_meta["svd_cached"] else svd_meta["svd_train_time_s"]
    metrics.update(
        flops_reduction=ref_metrics["flops"] / metrics["flops"],
        reference_accuracy=ref_metrics["accuracy"],
        ranks=ranks,
        plan=plan,
        svd_cached=svd_meta["svd_cached"],
        spectrum=svd_meta.get("spectrum"),
        train_time_s=svd_train_s + finetune_seconds,
        # The trial's budget, the baselines' yardstick: SVD training plus fine-tuning.
        epochs=svd_meta["svd_epochs"] + finetune_trained,
        wall_time_s=time.perf_counter() - start,
        status="complete",
        full_budget=True,
    )
    if trial_dir is not None:
        save_state(trial_dir / "model.safetensors", compact.state_dict())
        write_json(trial_dir / "plan.json", {
            "model": config.model.name, "scheme": params.scheme, "plan": plan,
            "input_shape": list(data.input_shape),
            "num_classes": config.model.num_classes or data.num_classes,
            "in_channels": config.model.in_channels or data.input_shape[0],
            # What a deployment must do to its inputs (the statistics may have been estimated
            # on the training images, in which case nothing else records them).
            "normalisation": ({"mean": list(data.normalisation[0]),
                               "std": list(data.normalisation[1])}
                              if data.normalisation is not None else None),
        })
        final = params.model_copy(update={"ranks": ranks})
        atomic_write_text(trial_dir / "config.yaml", cfg.dump(trial_config(config, final)))
        write_json(trial_dir / "metrics.json", metrics)
    return metrics

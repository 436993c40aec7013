"""The YAML files users write: search spaces and single-trial configs.

One schema serves both. A *search space* has a ``space:`` section (what to search); a *trial
config* (what ``ranksearch train`` runs, and what ``ranksearch export`` writes) has a ``params:``
section holding one resolved point of a space, optionally with the exact per-layer ``ranks``
that reproduce an exported trial. Everything is validated before anything runs; a wrong field
raises :class:`ConfigError` whose message is one line naming the field and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .datasets import DatasetName
from .errors import validation_message
from .schema import (
    DECAY_TYPES,
    ConfigError,
    Decay,
    Granularity,
    Init,
    PruningMethod,
    Range,
    Scheme,
    Searchable,
    Strict,
    check_settings,
)

__all__ = [
    "ConfigError", "Range", "ModelSpec", "DataSpec", "MetricSpec", "Schedule", "TrialParams",
    "SearchSpace", "StudyConfig", "load", "loads", "updated", "dump", "mask_url", "settings_key",
]

#: Above this many trials GPSampler costs more than 1 % of a 10-minute trial per suggestion.
GP_MAX_TRIALS = 300


class ModelSpec(Strict):
    """Which network: a built-in name (``resnet20``, a torchvision name) or ``module:function``."""

    name: str
    in_channels: PositiveInt | None = None
    num_classes: PositiveInt | None = None
    exclude: list[str] = Field(default_factory=list)
    """fnmatch patterns of layer names to keep dense."""
    weights: str | None = None
    """A trained dense model's state dict (``.safetensors``, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``): the reference is then evaluated, not trained."""


class DataSpec(Strict):
    """Which data: a built-in dataset, an image folder, or a ``module:function`` factory."""

    name: DatasetName | str
    """A built-in name (``ranksearch.data.DATASETS``: ``imagefolder`` reads ``dir``), or a
    factory ``"package.module:function"`` / ``"path/to/file.py:function"`` called with
    ``**args`` that returns ``{"train": Dataset, "test": Dataset}`` and optionally ``"val"``
    (``torch.utils.data.Dataset`` objects yielding ``(input tensor, int label)``)."""
    dir: str | None = None
    """The folder holding the dataset's files (relative to the working directory); default
    ``./data``. For ``imagefolder``: the folder holding ``train/<class>/*`` and
    ``test/<class>/*`` (and optionally ``val/<class>/*``)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of a data factory."""
    image_size: PositiveInt | None = None
    """``imagefolder``: the side images are resized and cropped to (default 224)."""
    mean: list[float] | None = None
    """``imagefolder``: per-channel means of the images scaled to [0, 1] (default: computed
    over the training split)."""
    std: list[PositiveFloat] | None = None
    """``imagefolder``: per-channel standard deviations (default: computed, like ``mean``)."""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    subset: PositiveInt | None = None
    """Use at most this many training samples (short search schedules)."""
    workers: int = Field(2, ge=0)
    """DataLoader worker processes, for streamed datasets (image folders, factories)."""

    @field_validator("name")
    @classmethod
    def _dataset_or_factory(cls, name: str) -> str:
        # Checked here, not by the type, whose failure would list every branch of the union.
        names = typing.get_args(DatasetName)
        if name in names or re.fullmatch(r".+:[A-Za-z_][\w.]*", name):
            return name
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(map(repr, names))},"
                         " or a data factory 'package.module:function' or 'file.py:function'")

    @model_validator(mode="after")
    def _stats_given_together(self) -> DataSpec:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are computed)")
        return self


class Schedule(Strict):
    """How one training phase runs."""

    epochs: PositiveInt
    lr: PositiveFloat
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: PositiveInt = 128
    lr_schedule: Literal["cosine", "constant", "step"] = "cosine"
    max_batches: PositiveInt | None = None
    """Cap on batches per epoch (tiny smoke runs); a capped run is still a full-budget run of
    the capped schedule, since every trial shares the cap."""

    def key(self) -> dict[str, Any]:
        return self.model_dump()


class TrainingSchedule(Strict):
    """The three training phases of a study."""

    reference: Schedule
    svd: Schedule
    finetune: Schedule


class TrialParams(Strict):
    """One resolved point of a search space: the settings of one SVD-training trial."""

    scheme: Scheme = "channel"
    init: Init = "svd"
    decay: Decay = "hoyer"
    lambda_o: float = 1.0
    lambda_s: float | dict[str, float] = 0.0
    energy: float | dict[str, float] = 0.0
    lr: float | None = None
    """Overrides ``schedule.svd.lr`` (and the fine-tuning rate scaled alike) when searched."""
    svd_epochs: PositiveInt | None = None
    finetune_epochs: int | None = Field(None, ge=0)
    ranks: dict[str, int] | None = None
    """Exact kept ranks per layer (an exported trial); overrides ``energy`` when given."""

    _in_range = field_validator("lambda_o", "lambda_s", "energy", "lr")(check_settings)

    def training_key(self) -> dict[str, Any]:
        """The settings that determine the SVD-trained model (not pruning, not fine-tuning)."""
        return self.model_dump(exclude={"energy", "ranks", "finetune_epochs"})


class SweepSpec(Strict):
    """Many points per trained model (``ranksearch.fidelity``): after SVD training, try
    ``candidates`` energy settings without fine-tuning, then fine-tune the ``promote`` best
    (by proxy hypervolume) as trials of their own."""

    candidates: PositiveInt = 24
    promote: int = Field(2, ge=0)
    proxy_samples: PositiveInt = 2000
    """Proxy accuracy on the first this many images of the validation split."""
    bn_batches: int = Field(8, ge=0)
    """Training batches that re-estimate batch-norm statistics of each pruned candidate."""
    allocate: int = Field(0, ge=0)
    """Also this many candidates with per-stage (per-layer) thresholds allocated from each
    unit's measured sensitivity (``ranksearch.fidelity.allocate``)."""


class SearchSpace(Strict):
    """What the search varies. Each field is a constant, a list of choices or a range; the
    ``lambda_s`` and ``energy`` ranges may be given per decay type."""

    scheme: Scheme | list[Scheme] = "channel"
    init: Init = "svd"
    decay: Decay | list[Decay] = "hoyer"
    granularity: Granularity = "global"
    """Whether λ_s and e are one value, one per stage (layer group), or one per layer."""
    lambda_o: Searchable = 1.0
    # A range first: {low, high} also reads as a per-decay mapping of floats.
    lambda_s: Searchable | dict[str, Searchable] = Field(0.0, union_mode="left_to_right")
    energy: Searchable | dict[str, Searchable] = Field(0.0, union_mode="left_to_right")
    lr: Searchable | None = None
    svd_epochs: list[PositiveInt] | None = None
    finetune_epochs: list[Annotated[int, Field(ge=0)]] | None = None
    energy_trials_per_model: PositiveInt = 1
    """How many energy thresholds to try on each SVD-trained model: trials after the first reuse
    the cached SVD-trained checkpoint and only prune and fine-tune."""
    sweep: SweepSpec | None = None
    """Multi-fidelity: sweep thresholds without fine-tuning, fine-tune only promising ones."""

    def for_decay(self, field: str, decay: str) -> Any:
        """``lambda_s`` or ``energy`` for ``decay``: the field, or its entry for ``decay``."""
        value = getattr(self, field)
        return value[decay] if isinstance(value, dict) else value

    @field_validator("lambda_s", "energy")
    @classmethod
    def _decay_keys(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) <= set(Range.model_fields):
            # A range whose own check failed also fits the per-decay mapping; say what is
            # wrong with the range instead.
            try:
                Range(**value)
            except ValidationError as err:
                raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(DECAY_TYPES))
            if unknown:
                raise ValueError(
                    f"per-decay ranges are keyed by {', '.join(DECAY_TYPES)}; got {unknown[0]!r}"
                )
        return value

    # Checked here, not first in a trial: a search would fail at its first such draw.
    _trial_can_take = field_validator("lambda_o", "lambda_s", "energy", "lr")(check_settings)

    @model_validator(mode="after")
    def _ranges_cover_decays(self) -> SearchSpace:
        decays = self.decay if isinstance(self.decay, list) else [self.decay]
        for field in ("lambda_s", "energy"):
            value = getattr(self, field)
            if isinstance(value, dict):
                # Decay "none" needs no λ_s, but every decay needs an energy threshold.
                missing = [d for d in decays
                           if d not in value and (d != "none" or field == "energy")]
                if missing:
                    raise ValueError(f"{field} has no range for decay type {missing[0]!r}")
        if self.sweep is not None and self.sweep.allocate and self.granularity == "global":
            raise ValueError("sweep.allocate gives each stage or layer its own threshold: it "
                             "needs granularity stage or layer")
        return self


class Constraints(Strict):
    max_flops: PositiveFloat | None = None
    """A FLOPs ceiling (absolute FLOPs)."""
    min_accuracy: float | None = Field(None, ge=0, le=1)


class SamplerSpec(Strict):
    name: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    n_startup_trials: PositiveInt | None = None
    population_size: PositiveInt | None = None


class BaselineSpec(Strict):
    methods: list[PruningMethod] = Field(
        default_factory=lambda: ["l1", "fpgm", "slimming"]
    )
    targets: list[Annotated[float, Field(gt=1)]] = Field(
        default_factory=lambda: [1.5, 2.0, 3.0, 4.0, 6.0]
    )
    slimming_penalty: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Network slimming's λ: above 0, ``slimming`` first trains the reference for the
    SVD-training budget with ``λ · Σ|γ|`` on its batch-norm scales added to the loss, then
    prunes by those scales and fine-tunes (Liu et al. used 1e-5 on CIFAR ResNets). At 0 it
    prunes the reference by its scales and trains the pruned network for both phases: ahead
    on the quickstart's digits, level on Fashion-MNIST (``benchmarks/baseline_slimming.py``)."""
    lr: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, min_length=1)
    """Rates to try for each baseline's first phase, its fine-tuning rate scaled alike (as a
    searched ``space.lr`` scales a trial's); each rate is a run of the full budget, and the
    one with the best validation metric is kept. Give the rates a searched ``space.lr``
    covers, so that the baselines are tuned as the trials are. Default: the schedule's."""

    @field_validator("lr")
    @classmethod
    def _distinct_rates(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(set(value)) < len(value):
            raise ValueError("each rate once")
        return value

    def settings(self, method: str, *, tuned: bool = True) -> dict[str, Any]:
        """What decides a ``method`` baseline's result beyond its target and the study's
        budget, recorded with it so that one of other settings is made again; with
        ``tuned=False``, one run's (not the rates tried). The defaults add nothing."""
        one = ({"slimming_penalty": self.slimming_penalty}
               if method == "slimming" and self.slimming_penalty > 0 else {})
        return {**one, "lr": list(self.lr)} if tuned and self.lr else one

    def is_current(self, result: dict[str, Any]) -> bool:
        """Whether a baseline's ``result`` (its ``metrics.json``) is one of the runs asked for
        here, made with today's :meth:`settings`: what the report draws and a search keeps."""
        method = result.get("method")
        return (method in self.methods and result.get("target") in self.targets
                and result.get("settings", {}) == self.settings(str(method)))


class LatencySpec(Strict):
    """How CPU latency is measured (with ``measure_latency: true``): always at batch 1, and
    also at ``batch_size`` when it is larger, on ``threads`` threads (default: PyTorch's)."""

    batch_size: PositiveInt = 1
    """The batch the latency objective and the latency front use."""
    threads: PositiveInt | None = None


class MetricSpec(Strict):
    """The quality objective: top-1 accuracy, or the user's own metric (higher is better),
    kept as ``accuracy`` (columns, objective, ``min_accuracy``) and read as accuracy is: a
    fraction shown in percent, 0 the worst (hypervolume); best in [0, 1] (mIoU, F1)."""

    name: str = Field("accuracy", min_length=1)
    """How the report, the status and the logs name the metric (e.g. ``mIoU``)."""
    evaluate: str | None = None
    """``"module:function"`` / ``"file.py:function"`` called as ``evaluate(model, batches)``
    (eval mode, no grad) with an iterable of one split's ``(x, y)`` batches in a fixed order,
    returning a float in [0, 1], else the trial fails; default: top-1 accuracy."""


class StudyConfig(Strict):
    """A whole study (with ``space``) or one trial (with ``params``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelSpec
    data: DataSpec
    schedule: TrainingSchedule
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """Training precision: ``bf16`` autocast, or ``auto`` (bf16 where the GPU or CPU computes
    it natively, else fp32). Accuracy, FLOPs and latency are always measured in fp32."""
    channels_last: bool = False
    train_loop: str | None = None
    """``"module:function"`` / ``"file.py:function"``: the user's training loop, called as
    ``train_loop(model, phase)`` for every phase (reference, SVD training, fine-tuning,
    baselines) in place of ranksearch's (``ranksearch.train.Phase``); weights it leaves
    non-finite fail the trial. Default: ranksearch's cross-entropy loop."""
    metric: MetricSpec = Field(default_factory=lambda: MetricSpec())
    measure_latency: bool = False
    latency: LatencySpec = Field(default_factory=lambda: LatencySpec())
    rank_multiple: PositiveInt | None = None
    """Kept ranks of the deployed model are rounded up to a multiple of this (default: the
    engine's per-layer rule, ``ranksearch.svd.rank_multiple_for``: 16 in wide layers, else 8);
    1 keeps them exact."""
    objectives: list[Literal["accuracy", "flops", "latency"]] = Field(
        default_factory=lambda: ["accuracy", "flops"]
    )
    constraints: Constraints = Field(default_factory=Constraints)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    storage: str | None = None
    trials: PositiveInt = 20
    baselines: BaselineSpec | None = None
    space: SearchSpace | None = None
    params: TrialParams | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if value[:2] != ["accuracy", "flops"] or len(value) != len(set(value)):
            raise ValueError("must be [accuracy, flops] optionally followed by latency")
        return value

    @model_validator(mode="after")
    def _latency_measured(self) -> StudyConfig:
        if "latency" in self.objectives and not self.measure_latency:
            raise ValueError("the latency objective needs measure_latency: true")
        if self.space is None and self.params is None:
            raise ValueError("a config needs a 'space' section (a search) or 'params' (one trial)")
        if self.sampler.name == "gp" and self.trials > GP_MAX_TRIALS:
            warnings.warn(
                f"sampler gp with {self.trials} trials: its suggestion time grows with the "
                "square of the study (17 s at 1,000 trials, 72 s at 2,000 on 2 cores, "
                "benchmarks/scale); tpe or nsga2 suit studies beyond a few hundred trials",
                stacklevel=2,
            )
        return self


def loads(text: str, source: str = "<config>") -> StudyConfig:
    """Parse and validate YAML text. Raises :class:`ConfigError` with a one-line message."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected a YAML mapping")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(validation_message(err, source)) from None


_Model = typing.TypeVar("_Model", bound=BaseModel)


def updated(model: _Model, source: str, **changes: Any) -> _Model:
    """``model`` with ``changes``, validated as a file is (``model_copy`` validates nothing,
    so a run could get a config it cannot read back); a :class:`ConfigError` names ``source``."""
    try:
        return type(model).model_validate({**model.model_dump(), **changes})
    except ValidationError as err:
        raise ConfigError(validation_message(err, source)) from None


def load(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else err.strerror
        raise ConfigError(f"{path}: cannot read the file ({reason})") from None
    return loads(text, source=str(path))


def dump(config: StudyConfig) -> str:
    """The config as YAML text, with storage passwords masked."""
    data = config.model_dump(mode="json", exclude_none=True)
    if data.get("storage"):
        data["storage"] = mask_url(data["storage"])
    return yaml.safe_dump(data, sort_keys=False)


def mask_url(url: str) -> str:
    """Replace the password of a URL (``user:pass@``, ``:pass@``) by ``***``."""
    return re.sub(r"(?<=://)([^/@:]*):([^/@]*)@", r"\1:***@", url)


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable settings: the name of a cache entry."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""The building blocks of the YAML schema (:mod:`ranksearch.config`): the choices a field may
take, the strict base of every section, a searchable number, and the values a trial's
numeric settings may take."""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, ValidationInfo, model_validator

from .errors import UserError

__all__ = [
    "Scheme", "Decay", "Init", "Granularity", "PruningMethod", "DECAY_TYPES", "ConfigError",
    "Strict", "Range", "Searchable", "searchable_values", "check_setting", "check_settings",
]

# Each choice is one Literal type; the tuples of its values derive from it. Reading a config
# must not import torch (``ranksearch report`` and ``status`` start in seconds), so the
# choices live here or in torch-free modules (dataset names: ranksearch.datasets), not in
# svd/, which imports torch and nothing of ranksearch: its SCHEMES and SPARSITY_KINDS are
# checked equal to these by tests/test_bad_input.py.
Scheme = Literal["channel", "spatial", "pointwise_first"]
Decay = Literal["l1", "hoyer", "hoyer_square", "none"]
Init = Literal["svd", "random"]
Granularity = Literal["global", "stage", "layer"]
PruningMethod = Literal["l1", "fpgm", "slimming", "random"]
DECAY_TYPES: tuple[str, ...] = typing.get_args(Decay)


class ConfigError(UserError, ValueError):
    """A config file that cannot be used; the message is one line meant for the user."""


class Strict(BaseModel):
    """The base of every section: unknown keys are errors, and a loaded config is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(Strict):
    """A numeric range to search: ``{low: 1e-4, high: 1e-2, log: true}``."""

    low: float
    high: float
    log: bool = False
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"a range needs finite ends, got {self.low:g} to {self.high:g}")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("a range cannot have both log and step")
        return self


# A searchable number: a constant, a list of choices, or a range.
Searchable = float | list[float] | Range


def searchable_values(value: Any) -> list[float]:
    """Every number a searchable field (or its per-decay mapping) may hand a trial at the
    edges: its constant, its choices, the two ends of its range."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in searchable_values(item)]
    if isinstance(value, Range):
        return [value.low, value.high]
    return list(value) if isinstance(value, list) else [value]


def check_setting(field: str, value: float) -> None:
    """Raise ValueError where ``value`` is not one a trial's ``field`` may take (``lambda_o``,
    ``lambda_s``, ``energy``, ``lr``): the rule for a trial's params and for a space's
    constants, choices and range ends alike."""
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value:g}")
    if field == "energy" and not 0 <= value < 1:
        raise ValueError(f"an energy threshold must be in [0, 1), got {value:g}")
    if field == "lr" and value <= 0:
        raise ValueError(f"a learning rate must be > 0, got {value:g}")
    if value < 0:
        raise ValueError(f"must be >= 0, got {value:g}")


def check_settings(value: Any, info: ValidationInfo) -> Any:
    """A field validator of trial params and search spaces alike: :func:`check_setting` on
    every number the field (``info.field_name``) may hand a trial."""
    for v in searchable_values(value) if value is not None else []:
        check_setting(info.field_name, v)
    return value

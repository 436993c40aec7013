"""What a study optimises, stated once: its objectives (names, directions, Ray Tune modes) and
its constraints.

A trial's objective values, ``trial.values`` in Optuna and the reported metrics in Ray Tune,
follow :data:`OBJECTIVES` in order: accuracy (maximised), FLOPs (minimised) and, when the
config asks for it, the measured latency (minimised). The study, both backends, the trial
function and the report all read the order from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the config's pydantic models are not needed to read the objectives
    from .config import StudyConfig

__all__ = [
    "Objective",
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "objectives",
    "names",
    "directions",
    "ray_modes",
    "values",
    "constraint_values",
]


@dataclass(frozen=True)
class Objective:
    name: str
    """The metric's key in a trial's metrics dict (and the report's column)."""
    direction: Literal["maximize", "minimize"]
    optional: bool = False
    """Only in studies whose config lists it under ``objectives``."""
    config_name: str = ""
    """Its name in the config's ``objectives`` list, for the optional ones."""

    @property
    def ray_mode(self) -> Literal["max", "min"]:
        return "max" if self.direction == "maximize" else "min"


OBJECTIVES: tuple[Objective, ...] = (
    Objective("accuracy", "maximize"),
    Objective("flops", "minimize"),
    Objective("latency_ms", "minimize", optional=True, config_name="latency"),
)
#: Names of every objective a study may have, in the order of ``trial.values``.
OBJECTIVE_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECTIVES)


def objectives(config: StudyConfig) -> tuple[Objective, ...]:
    """The objectives of the study of ``config``, in the order of ``trial.values``."""
    return tuple(o for o in OBJECTIVES if not o.optional or o.config_name in config.objectives)


def names(config: StudyConfig) -> list[str]:
    """The names of the study's objectives, in Optuna's order (``trial.values``)."""
    return [o.name for o in objectives(config)]


def directions(config: StudyConfig) -> list[str]:
    """Optuna's study directions."""
    return [o.direction for o in objectives(config)]


def ray_modes(config: StudyConfig) -> list[str]:
    """Ray Tune's ``mode`` for each reported objective."""
    return [o.ray_mode for o in objectives(config)]


def values(config: StudyConfig, metrics: Mapping[str, Any]) -> list[float]:
    """A trial's objective values, taken from its metrics dict."""
    return [float(metrics[name]) for name in names(config)]


def constraint_values(config: StudyConfig, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The study's constraints on a trial, by name (``max_flops``, ``min_accuracy``), as
    Optuna reads them (``Trial.set_constraint``: satisfied when <= 0); empty without any."""
    c = config.constraints
    found = {}
    if c.max_flops is not None:
        found["max_flops"] = metrics["flops"] / c.max_flops - 1.0
    if c.min_accuracy is not None:
        found["min_accuracy"] = c.min_accuracy - metrics["accuracy"]
    return found

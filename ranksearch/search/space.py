"""Turn a :class:`~ranksearch.config.SearchSpace` into Optuna suggestions.

The same define-by-run function serves both backends (Ray Tune's ``OptunaSearch`` accepts a
define-by-run callable), so a study reads the same whichever backend ran it.

Parameter names: ``scheme``, ``decay``, ``lambda_o``, ``lr``, ``svd_epochs``,
``finetune_epochs``; λ_s and the energy threshold are named ``lambda_s`` / ``energy`` when one
range serves every decay type and ``lambda_s_<decay>`` / ``energy_<decay>`` when the ranges
depend on the decay type (an Optuna parameter keeps one distribution for the whole study). At
``stage`` or ``layer`` granularity the group or layer name follows a dot:
``energy_hoyer.layer2``.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Range, SearchSpace, TrialParams

__all__ = ["suggest", "training_param_names", "granularity_units", "energy_params",
           "constant_params", "SuggestTrial"]


class SuggestTrial(Protocol):
    """The part of :class:`optuna.Trial` that the space uses."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def _value(trial: SuggestTrial, name: str, spec: Any) -> Any:
    if isinstance(spec, Range):
        if spec.low == spec.high:
            return spec.low
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, list):
        return spec[0] if len(spec) == 1 else trial.suggest_categorical(name, spec)
    return spec


def _per_decay(trial: SuggestTrial, field: str, spec: Any, decay: str, units: list[str]
               ) -> float | dict[str, float]:
    """Suggest one value (global) or one per unit (stage/layer) of ``field``."""
    name = field
    if isinstance(spec, dict):
        spec = spec[decay]
        name = f"{field}_{decay}"
    if not units:
        return float(_value(trial, name, spec))
    return {unit: float(_value(trial, f"{name}.{unit}", spec)) for unit in units}


def suggest(trial: SuggestTrial, space: SearchSpace, layer_groups: dict[str, str]
            ) -> TrialParams:
    """Sample one point of ``space``.

    ``layer_groups`` maps each decomposable layer's name to its group (stage); it sets the
    units of ``stage`` and ``layer`` granularity.
    """
    scheme = _value(trial, "scheme", space.scheme)
    decay = _value(trial, "decay", space.decay)
    units = granularity_units(space, layer_groups)
    lambda_s = 0.0 if decay == "none" else _per_decay(trial, "lambda_s", space.lambda_s, decay,
                                                       units)
    values: dict[str, Any] = {
        "scheme": scheme,
        "init": space.init,
        "decay": decay,
        "lambda_o": float(_value(trial, "lambda_o", space.lambda_o)),
        "lambda_s": lambda_s,
        "energy": _per_decay(trial, "energy", space.energy, decay, units),
    }
    if space.lr is not None:
        values["lr"] = float(_value(trial, "lr", space.lr))
    if space.svd_epochs is not None:
        values["svd_epochs"] = int(_value(trial, "svd_epochs", space.svd_epochs))
    if space.finetune_epochs is not None:
        values["finetune_epochs"] = int(_value(trial, "finetune_epochs", space.finetune_epochs))
    return TrialParams(**values)


def constant_params(params: TrialParams, suggested: dict[str, Any]) -> dict[str, Any]:
    """What the space fixed rather than searched, named as :func:`suggest` would name the
    parameter (a per-unit value as ``energy.layer2``): ``params`` less the ``suggested``
    parameters, so that a trial's record holds every setting it ran with."""
    constants: dict[str, Any] = {}
    for field in ("scheme", "decay", "lambda_o", "lambda_s", "energy", "lr", "svd_epochs",
                  "finetune_epochs"):
        value = getattr(params, field)
        if value is None or (field == "lambda_s" and params.decay == "none"):
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for unit, item in items:
            dotted = "" if unit is None else f".{unit}"
            # Suggested as the field's own name, or under the decay type's (lambda_s_hoyer).
            if not {f"{field}{dotted}", f"{field}_{params.decay}{dotted}"} & suggested.keys():
                constants[f"{field}{dotted}"] = item
    return constants


def granularity_units(space: SearchSpace, layer_groups: dict[str, str]) -> list[str]:
    """What gets a λ_s and a threshold of its own: nothing (one global value), each stage,
    or each layer."""
    if space.granularity == "global":
        return []
    if space.granularity == "stage":
        return list(dict.fromkeys(layer_groups.values()))
    return list(layer_groups)


def energy_params(space: SearchSpace, decay: str, energy: float | dict[str, float]
                  ) -> dict[str, float]:
    """The suggested parameters that give ``energy`` (a global value or one per unit), named
    as :func:`suggest` names them; constants of the space are not parameters."""
    spec = space.for_decay("energy", decay)
    if not isinstance(spec, (Range, list)) or (isinstance(spec, Range) and spec.low == spec.high
                                                ) or (isinstance(spec, list) and len(spec) == 1):
        return {}
    name = f"energy_{decay}" if isinstance(space.energy, dict) else "energy"
    if not isinstance(energy, dict):
        return {name: float(energy)}
    return {f"{name}.{unit}": float(value) for unit, value in energy.items()}


def training_param_names(params: dict[str, Any]) -> dict[str, Any]:
    """The suggested parameters that determine the SVD-trained model: all but the energy
    thresholds and the fine-tuning length, which act after SVD training."""
    return {k: v for k, v in params.items()
            if not k.startswith("energy") and k != "finetune_epochs"}

"""The Python entry points: a whole study from a script, the one the command line runs.

.. code-block:: python

    import ranksearch

    if __name__ == "__main__":
        run = ranksearch.optimize("space.yaml", model=make_model, data=make_data,
                                  train_loop=train, evaluate=macro_f1, metric_name="macro-F1")
        ranksearch.report_run(run)
        ranksearch.export_run(run, "exports/best", max_flops="2x")

:func:`optimize` is ``ranksearch search`` (the search, then the baselines), :func:`report_run`
``ranksearch report``, and :func:`ranksearch.export_run` ``ranksearch export``. The user's
functions reach the study's config as import strings (:func:`ranksearch.imports.spec_of`), so
that worker processes, here or under Ray on other hosts, import them by name: they must be
defined at the top level of a module or of the script, and a script's call to
:func:`optimize` must sit under ``if __name__ == "__main__":``, since workers import the
script for its functions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from . import config as cfg
from .errors import UserError
from .imports import spec_of

__all__ = ["optimize", "report_run", "study_config", "Space"]

#: A search space: a YAML file, its content as a dict, or a validated config.
Space = str | os.PathLike[str] | Mapping[str, Any] | cfg.StudyConfig

# The module names under which ranksearch.imports loads user files: a call to optimize()
# from such a module is a worker importing the script for its functions.
_USER_MODULE_PREFIX = "_ranksearch_user_"


def _spec(value: Callable[..., Any] | str, what: str) -> str:
    """A name as given (a built-in name or an import string), or the import string of a
    function."""
    return value if isinstance(value, str) else spec_of(value, what)


def _source(space: Space) -> str:
    """How errors name the space."""
    if isinstance(space, cfg.StudyConfig):
        return "the space"
    return "the space dict" if isinstance(space, Mapping) else str(space)


def _raw(space: Space) -> dict[str, Any]:
    """The space as a plain mapping, not validated yet: a file may leave out what the
    arguments of :func:`optimize` give (``model``, ``data``)."""
    if isinstance(space, Mapping):
        return dict(space)
    if isinstance(space, cfg.StudyConfig):
        return space.model_dump(mode="json", exclude_none=True)
    try:
        raw = yaml.safe_load(Path(space).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        cfg.load(space)  # raises the one-line error that says what is wrong with the file
    return raw


def study_config(
    space: Space, *, model: Callable[..., Any] | str | None = None,
    data: Callable[..., Any] | str | Mapping[str, Any] | None = None,
    train_loop: Callable[..., Any] | str | None = None,
    evaluate: Callable[..., Any] | str | None = None, metric_name: str | None = None,
    trials: int | None = None,
) -> cfg.StudyConfig:
    """The validated config of ``space`` with the arguments of :func:`optimize` written in.

    Raises:
        ConfigError: an invalid space (one line naming the field).
        ImportFailed: a function that worker processes could not import by name (a lambda,
            a nested function, one defined in an interactive session).
    """
    raw = _raw(space)
    if model is not None:
        raw["model"] = {**raw.get("model", {}), "name": _spec(model, "model factory")}
    if isinstance(data, Mapping):
        raw["data"] = dict(data)
    elif data is not None:
        raw["data"] = {**raw.get("data", {}), "name": _spec(data, "data factory")}
    if train_loop is not None:
        raw["train_loop"] = _spec(train_loop, "training loop")
    metric = dict(raw.get("metric", {}))
    if evaluate is not None:
        metric["evaluate"] = _spec(evaluate, "metric")
        # Named after the function unless named: "accuracy" would misname it.
        metric["name"] = metric_name or metric["evaluate"].rpartition(":")[2]
    elif metric_name is not None:
        metric["name"] = metric_name
    if metric:
        raw["metric"] = metric
    if trials is not None:
        raw["trials"] = trials
    try:
        text = yaml.safe_dump(raw, sort_keys=False)
    except yaml.YAMLError as err:
        raise cfg.ConfigError(f"{_source(space)}: values must be plain numbers, strings, lists "
                              f"and dicts ({err})") from None
    return cfg.loads(text, _source(space))


def optimize(
    space: Space, *, model: Callable[..., Any] | str | None = None,
    data: Callable[..., Any] | str | Mapping[str, Any] | None = None,
    train_loop: Callable[..., Any] | str | None = None,
    evaluate: Callable[..., Any] | str | None = None, metric_name: str | None = None,
    run_dir: str | os.PathLike[str] | None = None, trials: int | None = None,
    workers: int = 1, backend: str = "optuna", progress: bool = True,
) -> Path:
    """Start or resume a study, as ``ranksearch search`` does, and return its run directory.

    The search runs until the study holds ``trials`` complete trials, then the baselines the
    space asks for; calling it again with the same space resumes it (after a crash too).

    Args:
        space: a search-space YAML file, its content as a dict, or a
            :class:`~ranksearch.config.StudyConfig`; the other arguments override it.
        model: a factory ``model(num_classes=, in_channels=) -> nn.Module``, or a model name
            (``resnet20``, a torchvision name, ``"module:function"``).
        data: a factory ``data(**args) -> {"train": Dataset, "test": Dataset[, "val"]}`` of
            ``torch.utils.data.Dataset`` objects yielding ``(input tensor, int label)``, a
            dataset name or ``"module:function"``, or a whole ``data`` section as a dict
            (``{"name": ..., "args": {...}}``).
        train_loop: ``train_loop(model, phase)``, called for every training phase in place
            of ranksearch's loop (see :class:`ranksearch.train.Phase`).
        evaluate: ``evaluate(model, batches) -> float`` (higher is better; ``batches``
            iterates one split's ``(x, y)`` in a fixed order) in place of top-1 accuracy.
        metric_name: how the report, the status and the logs name the metric (default: the
            function's name).
        run_dir: the run directory (default ``runs/<study name>``).
        trials: complete trials the study should hold (default: the space's ``trials``).
        workers: worker processes (``optuna``) or concurrent trials (``ray``).
        backend: ``optuna`` or ``ray``.
        progress: show progress bars.

    Functions are written into the study's config as import strings, which every worker
    imports: define them at the top level of a module or of the script, and call
    :func:`optimize` under ``if __name__ == "__main__":``.

    Raises:
        UserError: an invalid space, data or model that cannot be had, a function workers
            could not import, or a call made while a worker imports the script; each with a
            one-line message.
    """
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith(_USER_MODULE_PREFIX):
        raise UserError("ranksearch.optimize() ran while a worker imported the script for its "
                        "functions: call it under 'if __name__ == \"__main__\":'")
    import optuna

    from .app import start_search

    config = study_config(space, model=model, data=data, train_loop=train_loop,
                          evaluate=evaluate, metric_name=metric_name, trials=trials)
    # ranksearch logs one line per trial itself; Optuna's own line would repeat it.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run = start_search(config, run_dir, source=_source(space), backend=backend,
                           workers=workers, progress=progress)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return run.path


def report_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
               ) -> Path:
    """Write the report of the study in ``run_dir`` (``ranksearch report``) into ``out``
    (default ``reports/<study name>``) and return that folder; ``index.html`` is the page."""
    from .app import write_report_for_run

    return write_report_for_run(run_dir, out)

"""ranksearch: find the best low-rank version of a PyTorch network.

A multi-objective search (Optuna, Ray Tune) over the hyperparameters of SVD training (Yang et
al., CVPR-W 2020), reported as an accuracy-vs-FLOPs Pareto front next to filter-pruning
baselines. The public API:

- :func:`ranksearch.optimize`, :func:`ranksearch.report_run`, :func:`ranksearch.export_run`:
  a whole study from Python, with the user's own model, data, training loop and metric
  (:mod:`ranksearch.api`; ``export_run`` from :mod:`ranksearch.export`), as ``ranksearch
  search``, ``report`` and ``export`` run it
- :mod:`ranksearch.svd`: decompose, regularise, prune and compact networks (pure PyTorch)
- :mod:`ranksearch.measure`: FLOPs, parameters, CPU latency
- :mod:`ranksearch.models`: CIFAR ResNets, torchvision models, user factories
- :mod:`ranksearch.baselines`: filter pruning to a FLOPs target with Torch-Pruning
- :func:`ranksearch.load`: rebuild an exported compact model without unpickling anything
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use: ``import ranksearch`` stays free of torch and Optuna.
_EXPORTS = {"optimize": "api", "report_run": "api", "export_run": "export"}
#: The public modules, reachable as ``ranksearch.svd`` after a plain ``import ranksearch``.
_MODULES = ("api", "baselines", "export", "measure", "models", "svd")

__all__ = ["__version__", "load", *_EXPORTS]


def load(export_dir, *, deployed=True):  # noqa: ANN001, ANN201 - see ranksearch.export.load
    """Rebuild the compact model of an export folder: the deployed model, or with
    ``deployed=False`` the one with its batch norms (see :func:`ranksearch.export.load`)."""
    from .export import load as _load

    return _load(export_dir, deployed=deployed)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_MODULES})

"""ranksearch: find the best low-rank version of a PyTorch network.

A multi-objective search (Optuna, Ray Tune) over the hyperparameters of SVD training (Yang et
al., CVPR-W 2020), reported as an accuracy-vs-FLOPs Pareto front next to filter-pruning
baselines. The public API:

- :mod:`ranksearch.svd`: decompose, regularise, prune and compact networks (pure PyTorch)
- :mod:`ranksearch.measure`: FLOPs, parameters, CPU latency
- :mod:`ranksearch.models`: CIFAR ResNets, torchvision models, user factories
- :mod:`ranksearch.baselines`: filter pruning to a FLOPs target with Torch-Pruning
- :func:`ranksearch.load`: rebuild an exported compact model without unpickling anything
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(export_dir):  # noqa: ANN001, ANN201 - documented in ranksearch.export.load
    """Rebuild the compact model of an export folder (see :func:`ranksearch.export.load`)."""
    from .export import load as _load

    return _load(export_dir)

"""Published compression results, quoted next to a study's own front in the report.

Torch-free: reading the packaged ``literature.csv`` needs only pandas.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["points"]


def points(model: str, dataset: str) -> pd.DataFrame:
    """Published reference points for ``model`` on ``dataset`` (empty when there are none).

    Read from the packaged ``literature.csv``: columns ``model``, ``dataset``, ``method``,
    ``base_accuracy`` and ``accuracy`` (top-1, fractions 0–1: the quoted dense and compressed
    accuracies), ``flops_reduction`` (dense FLOPs / compressed FLOPs, as quoted) and
    ``source``. Names compare case-insensitively, e.g. ``("resnet20", "cifar10")``.
    """
    with resources.files("ranksearch").joinpath("literature.csv").open("r") as handle:
        table = pd.read_csv(handle)
    matches = (table["model"].str.lower() == model.lower()) & (
        table["dataset"].str.lower() == dataset.lower()
    )
    return table[matches].reset_index(drop=True)

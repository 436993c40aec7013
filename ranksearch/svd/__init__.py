"""SVD training in pure PyTorch: decompose, regularise, prune and compact a network.

Every compressible layer of a model is rewritten as ``W = U · diag(s) · Vᵀ`` and trained in
that form (:func:`decompose`); the loss adds :func:`orthogonality_loss` and
:func:`sparsity_loss`; :func:`prune_by_energy` (or :func:`set_ranks`) masks small singular
values; :func:`compact` turns the result into plain ``torch.nn`` layers of the kept ranks,
and :func:`build_compact` rebuilds that structure for loading a saved ``state_dict``;
:func:`for_inference` folds batch norms for deployment.

This package imports nothing else of ``ranksearch``.
"""

from .compact import (
    RANK_MULTIPLE,
    build_compact,
    compact,
    compaction_plan,
    rank_multiple_for,
    saves_flops,
)
from .conv import SVDConv2d
from .decompose import decomposable, decompose, summary, svd_layers
from .inference import eval_mode, fold_batchnorm, for_inference, to_channels_last
from .layers import SCHEMES, DenseConv2d, DenseLinear, SVDLayer, SVDLinear
from .prune import prune_by_energy, ranks_at_energy, set_ranks, unprune
from .regularizers import SPARSITY_KINDS, orthogonality_loss, sparsity_loss

__all__ = [
    "RANK_MULTIPLE",
    "SCHEMES",
    "SPARSITY_KINDS",
    "DenseConv2d",
    "DenseLinear",
    "SVDConv2d",
    "SVDLayer",
    "SVDLinear",
    "build_compact",
    "compact",
    "compaction_plan",
    "decompose",
    "decomposable",
    "eval_mode",
    "fold_batchnorm",
    "for_inference",
    "orthogonality_loss",
    "prune_by_energy",
    "rank_multiple_for",
    "ranks_at_energy",
    "saves_flops",
    "set_ranks",
    "sparsity_loss",
    "summary",
    "svd_layers",
    "to_channels_last",
    "unprune",
]

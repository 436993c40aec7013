"""Filter-pruning baselines: structured pruning with Torch-Pruning down to a FLOPs target
(:mod:`.prune`), network slimming's sparsity training (:mod:`.slimming`), and the
equal-budget baseline runs of a study (:mod:`.runs`)."""

from .prune import METHODS, TOLERANCE, prune_to_flops
from .runs import baseline_structure, pruned_reference, run_baselines, run_baselines_for_run
from .slimming import bn_scale_penalty

__all__ = ["METHODS", "TOLERANCE", "prune_to_flops", "pruned_reference", "baseline_structure",
           "run_baselines", "run_baselines_for_run", "bn_scale_penalty"]

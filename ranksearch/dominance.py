"""Pareto dominance and 2-D hypervolume: maximise accuracy, minimise a cost.

NumPy only, so that the trial pipeline (the multi-fidelity sweep's promotion), the report and
the benchmarks share one routine without importing Optuna or pandas.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nondominated", "hypervolume_2d", "hypervolume_contributions"]


def nondominated(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Which points no other point dominates, as a boolean mask in the order given.

    Accuracy is maximised and cost minimised. A point is dominated when another is at least
    as accurate and at most as costly, and strictly better in one of the two; points with
    exactly equal accuracy and cost therefore both stay. Runs in O(n log n): after sorting by
    cost, a point is on the front when it is the most accurate of its cost value and more
    accurate than every cheaper point.
    """
    accuracy = np.asarray(accuracy, dtype=float)
    cost = np.asarray(cost, dtype=float)
    order = np.lexsort((-accuracy, cost))  # by cost, the most accurate first within a cost
    accuracy, cost = accuracy[order], cost[order]
    # cost is sorted, so np.unique's first indices point at each cost value's most accurate
    # point.
    unique_cost, first = np.unique(cost, return_index=True)
    best_of_value = accuracy[first]
    best_cheaper = np.concatenate(([-np.inf], np.maximum.accumulate(best_of_value)[:-1]))
    group = np.searchsorted(unique_cost, cost)
    mask = np.empty(len(order), dtype=bool)
    mask[order] = (accuracy == best_of_value[group]) & (accuracy > best_cheaper[group])
    return mask


def hypervolume_2d(
    accuracy: np.ndarray, cost: np.ndarray, ref_point: tuple[float, float] = (0.0, 1.0)
) -> float:
    """Area dominated by the points (maximise ``accuracy``, minimise ``cost``) and bounded
    by ``ref_point = (accuracy, cost)``. Points not strictly better than the reference point
    in both coordinates add nothing.
    """
    ref_accuracy, ref_cost = ref_point
    accuracy = np.asarray(accuracy, dtype=float)
    cost = np.asarray(cost, dtype=float)
    keep = (accuracy > ref_accuracy) & (cost < ref_cost)
    if not keep.any():
        return 0.0
    order = np.argsort(cost[keep], kind="mergesort")
    cost = cost[keep][order]
    best = np.maximum.accumulate(accuracy[keep][order])
    # Sweep over cost: between consecutive costs the dominated height is the best accuracy
    # reached so far.
    widths = np.diff(np.append(cost, ref_cost))
    return float(np.sum(widths * (best - ref_accuracy)))


def hypervolume_contributions(
    accuracy: np.ndarray, cost: np.ndarray, ref_point: tuple[float, float]
) -> np.ndarray:
    """The hypervolume each point adds to the others' (0 for a dominated point)."""
    accuracy = np.asarray(accuracy, dtype=float)
    cost = np.asarray(cost, dtype=float)
    total = hypervolume_2d(accuracy, cost, ref_point)
    keep = np.ones(len(accuracy), dtype=bool)
    contributions = np.zeros(len(accuracy))
    for i in range(len(accuracy)):
        keep[i] = False
        contributions[i] = total - hypervolume_2d(accuracy[keep], cost[keep], ref_point)
        keep[i] = True
    return contributions

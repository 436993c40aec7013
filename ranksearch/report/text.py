"""Wording and number formats shared by the report's page and its markdown summary."""

from __future__ import annotations

import math

import pandas as pd

__all__ = [
    "BASELINE_BUDGET_RULE", "HYPERVOLUME_TEXT", "pct", "mflops", "times", "reduction_header",
    "reduction_rows",
]

#: How baselines are trained, stated in the report so that the comparison can be judged.
BASELINE_BUDGET_RULE = (
    "each baseline is fine-tuned for the same number of epochs as one SVD trial's "
    "SVD-training plus fine-tuning, from the same reference"
)

HYPERVOLUME_TEXT = (
    "in the normalised space (top-1 accuracy as a fraction, FLOPs / reference FLOPs) with "
    "reference point (accuracy 0, FLOPs ratio 1.0 = the dense model): the mean, over FLOPs "
    "budgets up to the dense model's, of the best accuracy found within that budget"
)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def pct(value: float | None, digits: int = 2) -> str:
    """An accuracy fraction as a percentage; — when missing."""
    return f"{100 * value:.{digits}f} %" if _finite(value) else "—"


def mflops(value: float | None) -> str:
    return f"{value / 1e6:.4g} MFLOPs" if _finite(value) else "—"


def times(value: float | None) -> str:
    """A reduction factor (``2.00×``)."""
    return f"{value:.2f}×" if _finite(value) else "—"


def reduction_header(table: pd.DataFrame) -> list[str]:
    """Column headings of :func:`~.pareto.reduction_table` as shown."""
    drops = [c[len("within_") :] for c in table.columns if c.startswith("within_")]
    return ["method", *(f"within {d} pt" for d in drops)]


def reduction_rows(table: pd.DataFrame) -> list[list[str]]:
    columns = [c for c in table.columns if c.startswith("within_")]
    return [[str(r["method"]), *(times(r[c]) for c in columns)] for _, r in table.iterrows()]

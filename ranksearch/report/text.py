"""Wording and number formats shared by the report's page and its markdown summary."""

from __future__ import annotations

import math

import pandas as pd

from .. import config as cfg

__all__ = [
    "baseline_rule", "DEFAULT_METRIC", "STATE_WORDS", "hypervolume_text", "metric_label",
    "metric_note", "metric_title", "pct", "mflops", "times", "reduction_header", "reduction_rows",
    "trial_counts",
]

#: The name of the default metric, top-1 accuracy (``config.MetricSpec.name``).
DEFAULT_METRIC = "accuracy"


def baseline_rule(spec: cfg.BaselineSpec | None) -> str:
    """How the study's baselines (``spec``, the config's ``baselines``) were trained, stated
    in the report so that the comparison can be judged."""
    rates = "at the schedule's learning rates"
    if spec is not None and spec.lr:
        rates = (f"at whichever of the rates {', '.join(f'{lr:g}' for lr in spec.lr)} did best "
                 "on the validation split (each a full run; the fine-tuning rate scaled alike)")
    order = "each is pruned first and trained for both phases"
    if spec is not None and spec.slimming_penalty > 0 and "slimming" in spec.methods:
        order += (f", except slimming, which trains the reference with network slimming's L1 "
                  f"penalty ({spec.slimming_penalty:g}) on its batch-norm scales for the first "
                  "phase, then prunes and fine-tunes")
    return ("each baseline is trained for the same number of epochs as one SVD trial's "
            "SVD-training plus fine-tuning (the most a trial may get, where the space searches "
            f"them), from the same reference, {rates}; {order}")


def metric_label(metric: str) -> str:
    """How axes and tables name the study's metric: ``top-1 accuracy`` by default, else the
    user's name for it (``mIoU``)."""
    return "top-1 accuracy" if metric == DEFAULT_METRIC else metric


def metric_title(metric: str) -> str:
    """The metric at the start of a heading: ``Accuracy`` by default, else the user's name
    as written (``mIoU``, not ``MIoU``)."""
    return "Accuracy" if metric == DEFAULT_METRIC else metric


def metric_note(metric: str) -> str:
    """What the study's quality is, in words, after its :func:`metric_title`."""
    if metric == DEFAULT_METRIC:
        return "top-1 on the held-out validation split (the search objective)"
    return ("the study's own metric, higher is better, on the held-out validation split (the "
            "search objective), in percent (the columns accuracy and test_accuracy of "
            "trials.csv hold it as a fraction)")


def hypervolume_text(metric: str = DEFAULT_METRIC) -> str:
    """How the hypervolume is computed, in words."""
    return (
        f"in the normalised space ({metric_label(metric)} as a fraction, FLOPs / reference "
        f"FLOPs) with reference point ({metric} 0, FLOPs ratio 1.0 = the dense model): the "
        f"mean, over FLOPs budgets up to the dense model's, of the best {metric} found within "
        "that budget"
    )

#: Optuna's trial states as the report, ``status`` and ``export`` name them.
STATE_WORDS = {"COMPLETE": "complete", "RUNNING": "running", "FAIL": "failed",
               "PRUNED": "pruned", "WAITING": "queued"}


def trial_counts(counts: dict[str, int]) -> tuple[int, str]:
    """The number of SVD trials run or running, and their states in words.

    Queued trials have not run: they are named after the others, not counted among them.
    """
    queued = counts.get("WAITING", 0)
    run = {STATE_WORDS.get(state, state.lower()): n for state, n in counts.items()
           if state != "WAITING" and n}
    words = ", ".join(f"{n:,} {state}" for state, n in sorted(run.items()))
    if queued:
        words += ("; " if words else "") + f"{queued:,} more queued"
    return sum(run.values()), words


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction (accuracy, or the user's metric) as a percentage; — when missing."""
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

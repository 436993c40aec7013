"""The Pareto report of a study: tables (:mod:`.pareto`) and the written report (:mod:`.html`)."""

from ranksearch.report.html import write_report, write_report_for_run
from ranksearch.report.pareto import (
    eligible_mask,
    fronts_by_kind,
    hypervolume_2d,
    hypervolume_history,
    param_importances,
    pareto_front,
    reduction_table,
    trials_frame,
)

__all__ = [
    "write_report",
    "write_report_for_run",
    "trials_frame",
    "eligible_mask",
    "pareto_front",
    "fronts_by_kind",
    "reduction_table",
    "hypervolume_2d",
    "hypervolume_history",
    "param_importances",
]

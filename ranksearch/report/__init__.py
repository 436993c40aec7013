"""The Pareto report of a study.

- :mod:`.pareto`: the tables (every point as a row, fronts, reductions, hypervolume);
- :mod:`.data`: what the report shows, shaped once (:class:`~.data.ReportData`);
- :mod:`.figures` and :mod:`.page` (``index.html``, plotly), :mod:`.png` (``pareto.png``,
  matplotlib), :mod:`.markdown` (``summary.md``): the renderers;
- :mod:`.writer`: :func:`write_report`, which writes every file.

Names are imported on first use: the tables need pandas and Optuna only, the renderers plotly
and matplotlib as well.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "write_report": "writer",
    "ReportData": "data",
    "report_data": "data",
    "trials_frame": "pareto",
    "eligible_mask": "pareto",
    "pareto_front": "pareto",
    "fronts_by_kind": "pareto",
    "reduction_table": "pareto",
    "hypervolume_2d": "pareto",
    "hypervolume_history": "pareto",
    "param_importances": "pareto",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

"""Write the report's files: index.html, pareto.png, pareto.csv, trials.csv and summary.md."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from ranksearch.report.data import MAX_DOMINATED_POINTS, report_data
from ranksearch.report.markdown import summary
from ranksearch.report.page import page
from ranksearch.report.png import png
from ranksearch.runs import atomic_write_bytes, atomic_write_text

__all__ = ["write_report"]


def write_report(
    study: optuna.Study,
    run_dir: Path | None,
    out_dir: Path,
    *,
    title: str | None = None,
    model: str | None = None,
    dataset: str | None = None,
    metric: str | None = None,
    max_dominated: int = MAX_DOMINATED_POINTS,
) -> Path:
    """Write the Pareto report of ``study`` into ``out_dir`` and return ``out_dir/index.html``.

    Files: ``index.html`` (self-contained, offline), ``pareto.png``, ``pareto.csv`` (the SVD
    front), ``trials.csv`` (every point, with its ``kind``) and ``summary.md``; each is
    written atomically. Baselines are read from ``run_dir/baselines`` (none when ``run_dir``
    is None). ``model`` and ``dataset`` select the quoted literature points, ``metric`` names
    the quality on axes and tables (``accuracy``: top-1); by default they are read from the
    run's config (``run_dir/config.yaml`` or the study's ``config`` attr). At most
    ``max_dominated`` non-front trials are drawn in ``index.html`` (a fixed random sample;
    the page says so); ``pareto.png`` and the CSV files hold every trial.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_data(study, run_dir, title=title, model=model, dataset=dataset,
                       metric=metric, max_dominated=max_dominated)
    atomic_write_text(out_dir / "trials.csv", _counts_as_integers(data.trials).to_csv(index=False))
    atomic_write_text(out_dir / "pareto.csv", _counts_as_integers(data.front).to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", summary(data))
    atomic_write_bytes(out_dir / "pareto.png", png(data.chart, data.title, data.metric))
    index = out_dir / "index.html"
    # The page last: its presence means the report is whole.
    atomic_write_text(index, page(data))
    return index


#: Columns that count something: floats in the frame (a missing value is NaN), integers in
#: the files, where a trial number read "5.0" and ``export --trial 5.0`` was refused.
_COUNT_COLUMNS = ("number", "flops", "params", "epochs", "spectrum_rank_before",
                  "spectrum_rank_after")


def _counts_as_integers(frame: pd.DataFrame) -> pd.DataFrame:
    counts = [c for c in _COUNT_COLUMNS if c in frame and (frame[c].dropna() % 1 == 0).all()]
    return frame.astype({c: "Int64" for c in counts})

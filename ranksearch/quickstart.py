"""``ranksearch quickstart``: a whole small study on data that ships with the install.

ResNet-20 on scikit-learn's bundled 8x8 digits: the reference, a multi-objective search over
SVD training, the filter-pruning baselines, the report and an export of the best point within
one accuracy point of the reference. No download, no GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import config as cfg
from .runs import RunDir

__all__ = ["quickstart", "QUICKSTART_SPACE"]

# Package data, so that an installed wheel has it; the repository's
# search_spaces/digits_quickstart.yaml is a link to this file.
QUICKSTART_SPACE = Path(__file__).resolve().parent / "search_spaces" / "digits_quickstart.yaml"


def _say(message: str) -> None:
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


def trimmed(config: cfg.StudyConfig, max_batches: int) -> cfg.StudyConfig:
    """The same study with every epoch capped at ``max_batches`` batches (a smoke run)."""
    schedule = config.schedule.model_dump()
    for phase in ("reference", "svd", "finetune"):
        schedule[phase]["max_batches"] = max_batches
    return cfg.updated(config, "max_batches", schedule=schedule)


def export_best(run_dir: str | Path, export_dir: str | Path, reference_accuracy: float) -> Path:
    """Export the trial with the fewest FLOPs within one point of the reference, else the most
    accurate front point.

    Raises:
        ExportError: nothing to export, or ``export_dir`` inside the run's folders (named as
            ``export_dir``, ``--export`` on the command line).
    """
    from .export import ExportError, export_run

    try:
        try:
            return export_run(run_dir, export_dir,
                              min_accuracy=max(reference_accuracy - 0.01, 0.0))
        except ExportError as err:
            if err.argument is not None:
                raise
            return export_run(run_dir, export_dir, max_flops="1x")
    except ExportError as err:
        if err.argument != "out":
            raise
        # export_run's out is this function's export_dir, the command line's --export.
        raise ExportError(err.detail, argument="export_dir", flag="--export") from None


def quickstart(run_dir: str = "runs/quickstart", report_dir: str = "reports/quickstart",
               export_dir: str = "exports/quickstart", trials: int | None = None,
               max_batches: int | None = None, progress: bool = True) -> dict:
    """Run the quickstart study; returns the headline numbers it prints."""
    from .app import open_run_study, run_search, write_report_for_run
    from .report.pareto import reduction_table, trials_frame

    config = cfg.load(QUICKSTART_SPACE)
    if trials is not None:
        config = cfg.updated(config, "trials", trials=trials)
    if max_batches is not None:
        config = trimmed(config, max_batches)
    run = RunDir(run_dir).create()
    _say(f"study '{config.name}': {config.trials} SVD-training trials of {config.model.name} "
         f"on {config.data.name}, then baselines {', '.join(config.baselines.methods)} at "
         f"{', '.join(f'{t:g}x' for t in config.baselines.targets)} FLOPs reduction")
    run_search(config, run, progress=progress)
    _say("writing the report")
    report = write_report_for_run(run.path, report_dir)
    run, config, study = open_run_study(run.path)
    frame = trials_frame(study, run.path, config.baselines)
    reference = study.user_attrs["reference"]
    table = reduction_table(frame, reference["accuracy"], drops=(1,))
    svd_best = table.loc[table["kind"] == "svd"].iloc[0]["within_1"] if "kind" in table else None
    export = export_best(run.path, export_dir, reference["accuracy"])
    summary = {
        "reference_accuracy": reference["accuracy"],
        "best_reduction_within_1pt": svd_best,
        "report": str(Path(report) / "index.html"),
        "export": str(export),
    }
    print(f"reference accuracy: {100 * reference['accuracy']:.2f} % (validation), "
          f"{reference['flops'] / 1e6:.2f} MFLOPs")
    best = "none" if svd_best is None or svd_best != svd_best else f"{svd_best:.2f}x"
    print(f"best FLOPs reduction within 1 point: {best} (SVD training); "
          f"report: {summary['report']}")
    print(f"export: {export}  (load it with ranksearch.load('{export}'))")
    return summary

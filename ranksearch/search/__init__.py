"""Multi-objective search over SVD training: the study, its backends, and status.

``run_search`` starts or resumes a study; ``join_study`` adds a worker to one; both backends
write the same Optuna study, which ``status_text``, the report and the export read.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import config as cfg
from ..runs import RunDir, RunDirError
from .study import (
    STORAGE_ENV,
    TARGET_ATTR,
    StorageError,
    counts,
    create_study,
    load_study,
    open_storage,
    storage_url,
    study_config,
    write_storage_note,
)

__all__ = ["run_search", "join_study", "status_text", "open_run_study", "run_storage_url"]


def run_search(
    config: cfg.StudyConfig, run: RunDir, *, backend: str = "optuna", workers: int = 1,
    address: str | None = None, progress: bool = True, gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
) -> None:
    """Start or resume the study of ``config`` in ``run`` until it holds ``config.trials``
    complete trials, then run the baselines the config asks for."""
    # The training stack (torch, the backends) is imported here, not at module level: status,
    # the report and export read studies without it and start in a fraction of the time.
    from .. import pipeline
    from .optuna_backend import launch_workers

    if workers < 1:
        raise cfg.ConfigError(f"--workers: expected a positive number, got {workers}")
    url = storage_url(run, config.storage)
    if config.storage:
        write_storage_note(run, url)
    study = create_study(config, open_storage(url))
    study.set_user_attr(TARGET_ATTR, config.trials)
    # The reference is trained here, once, before any worker starts: every trial and every
    # baseline then loads the same cached model.
    _, ref_metrics = pipeline.reference(config, run, progress=progress)
    study.set_user_attr("reference", ref_metrics)
    if backend == "ray":
        from .ray_backend import run_ray_search

        run_ray_search(config, run, url, concurrency=workers, address=address,
                       progress=progress, gpus_per_trial=gpus_per_trial,
                       cpus_per_trial=cpus_per_trial)
    else:
        launch_workers(config, run, url, workers, progress=progress)
    _run_baselines(config, run, progress)


def _run_baselines(config: cfg.StudyConfig, run: RunDir, progress: bool) -> None:
    """The study's baselines: every worker takes the runs nobody has taken yet."""
    if config.baselines is not None:
        from ..baselines import run_baselines

        run_baselines(config, run, progress=progress)


def run_storage_url(run: RunDir) -> str:
    """The real storage URL of a run: ``$RANKSEARCH_STORAGE``, else the recorded one (which
    must not need a password, since passwords are never written down)."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    if run.storage_path.is_file():
        noted = run.storage_path.read_text().strip()
        if "***" in noted:
            raise StorageError(
                f"{run.path} uses the storage {noted}, whose password is not stored; pass the "
                f"URL as the argument or set ${STORAGE_ENV}"
            )
        return noted
    return str(run.journal_path)


def join_study(target: str, *, run_dir: str | None = None, worker: int = 0,
               progress: bool = True) -> None:
    """Join a study as one more worker: ``target`` is a run directory or a storage URL."""
    from .optuna_backend import run_worker

    if Path(target).is_dir():
        run = RunDir(target).require_existing()
        config = cfg.load(run.config_path)
        url = run_storage_url(run)
        if not os.environ.get(STORAGE_ENV) and not run.storage_path.is_file() \
                and not run.journal_path.is_file():
            raise StorageError(f"{run.path}: no study has been started here yet")
    else:
        if "://" not in target:
            raise RunDirError(f"{target}: no such run directory, and not a storage URL")
        url = target
        config = study_config(load_study(open_storage(url)))
        run = RunDir(run_dir or Path("runs") / config.name).create()
        if not run.config_path.is_file():
            from ..runs import atomic_write_text

            atomic_write_text(run.config_path, cfg.dump(config))
    run_worker(config, run, url, worker=worker, progress=progress)
    _run_baselines(config, run, progress)


def open_run_study(run_dir: str | Path):
    """The run directory, its config and its study (for status, report and export)."""
    run = RunDir(run_dir).require_existing()
    config = cfg.load(run.config_path)
    url = run_storage_url(run)
    if "://" not in url and not Path(url).is_file():
        raise RunDirError(f"{run.path}: no study has been started here yet")
    study = load_study(open_storage(url), config.name)
    return run, config, study


def status_text(run_dir: str | Path) -> str:
    """Counts of trials by state and the current Pareto front, as text."""
    from ..report.pareto import pareto_front, trials_frame

    run, config, study = open_run_study(run_dir)
    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    target = study.user_attrs.get(TARGET_ATTR, config.trials)
    lines = [
        f"study {config.name} ({run.path})",
        f"trials: {c['COMPLETE']} complete of {target}, {c['RUNNING']} running, "
        f"{c['FAIL']} failed, {c['WAITING']} queued",
    ]
    ref = study.user_attrs.get("reference")
    if ref:
        lines.append(f"reference: accuracy {ref['accuracy']:.4f}, FLOPs {ref['flops']:,}")
    baselines = run.baseline_results()
    if config.baselines is not None:
        wanted = len(config.baselines.methods) * len(config.baselines.targets)
        lines.append(f"baselines: {len(baselines)} of {wanted} done")
    front = pareto_front(trials_frame(study, run.path))
    if len(front):
        lines.append("Pareto front (val accuracy, FLOPs, reduction):")
        for row in front.itertuples():
            lines.append(f"  trial {int(row.number):>4}  {row.accuracy:.4f}  {int(row.flops):>12,}"
                         f"  {row.flops_reduction:.2f}x")
    failed = [t for t in trials if t.state.name == "FAIL"]
    for t in failed[-5:]:
        lines.append(f"  failed trial {t.number}: {t.user_attrs.get('fail_reason', 'unknown')}")
    return "\n".join(lines)

"""What the command line and the quickstart orchestrate: run a search, join one, read its
status, run its baselines and write its report.

Each function composes the layers below it: the config and run directory, the study
(:mod:`ranksearch.search`), the baselines and the report (:mod:`ranksearch.report`), which
never import one another.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from . import config as cfg
from .errors import UserError
from .runs import RunDir, RunDirError, atomic_write_text
from .search.backend import Backend
from .search.storage import (
    STORAGE_ENV,
    absolute_url,
    heartbeat_folder,
    is_journal_file,
    is_own_journal,
    open_storage,
    require_study,
    run_storage_url,
    storage_url,
    write_storage_note,
)
from .search.study import (
    TARGET_ATTR,
    counts,
    create_study,
    load_study,
    open_run_study,
    stale_trials,
    study_config,
)

__all__ = [
    "start_search", "train_trial", "run_search", "join_study", "status_text", "run_baselines",
    "write_report_for_run", "open_run_study", "make_backend", "check_inputs", "run_dir_of",
]


def make_backend(name: str = "optuna", *, workers: int = 1, address: str | None = None,
                 gpus_per_trial: float | None = None, cpus_per_trial: float = 1.0) -> Backend:
    """The backend ``name`` (``optuna`` or ``ray``); ``workers`` is the number of worker
    processes (optuna) or of concurrent trials (ray)."""
    if name not in ("optuna", "ray"):
        raise cfg.ConfigError(f"backend: expected 'optuna' or 'ray', got {name!r}")
    # The backends import the training stack (and Ray); status, report and export do not.
    if name == "ray":
        from .search.ray_backend import RayBackend

        return RayBackend(concurrency=workers, address=address, gpus_per_trial=gpus_per_trial,
                          cpus_per_trial=cpus_per_trial)
    from .search.optuna_backend import OptunaBackend

    return OptunaBackend(workers)


def run_dir_of(config: cfg.StudyConfig, run_dir: str | os.PathLike[str] | None = None) -> Path:
    """``run_dir``, or by default ``runs/<study name>``."""
    return Path(run_dir) if run_dir is not None else Path("runs") / config.name


def check_inputs(config: cfg.StudyConfig) -> None:
    """Fail in seconds, before any training, when the dataset, the model (or the layers it
    excludes), or the user's training loop or metric cannot be had (each with a one-line
    :class:`UserError`)."""
    from . import pipeline

    data = pipeline.dataset(config)
    dense = pipeline.build_model(config, data)
    groups = pipeline.svd_layer_groups(config, dense)
    if config.params is not None:
        _check_params(config, dense, groups)
    pipeline.training_loop(config)
    pipeline.metric(config)


def _check_params(config: cfg.StudyConfig, dense: object, groups: dict[str, str]) -> None:
    """The layers and groups a trial config names exist, and its exact ranks fit them: an
    edited export would otherwise fail only after SVD training."""
    from . import pipeline, svd

    params = config.params
    for field in ("energy", "lambda_s"):
        try:
            pipeline.expand_by_layer(getattr(params, field), list(groups), groups)
        except pipeline.TrialFailed as err:
            raise cfg.ConfigError(f"params.{field}: {err}") from None
    if params.ranks:
        # Decomposed for the layers' names and full ranks only (one SVD per layer, seconds).
        shapes = svd.decompose(dense, scheme=params.scheme, init="random",
                               exclude=tuple(config.model.exclude))
        try:
            svd.set_ranks(shapes, params.ranks)
        except ValueError as err:
            raise cfg.ConfigError(f"params.ranks: {err}") from None


def start_search(
    config: cfg.StudyConfig, run_dir: str | os.PathLike[str] | None = None, *,
    source: str = "the config", backend: str = "optuna", workers: int = 1,
    address: str | None = None, progress: bool = True, gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
) -> RunDir:
    """``ranksearch search``: check the inputs of ``config``, write it into its run
    directory (:func:`run_dir_of`) and start or resume its study there
    (:func:`run_search`); return the run directory. ``source`` names the config in errors.
    """
    if config.space is None:
        raise cfg.ConfigError(f"{source}: a search needs a 'space' section (this is a "
                              "one-trial config; run it with 'ranksearch train')")
    run = RunDir(run_dir_of(config, run_dir)).create()
    check_inputs(config)
    run_search(config, run, backend=backend, workers=workers, address=address,
               progress=progress, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial)
    return run


def train_trial(
    config: cfg.StudyConfig, run_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None, *, source: str = "the config",
    progress: bool = True,
) -> tuple[dict, Path]:
    """``ranksearch train``: run the one trial of a config with a ``params`` section (an
    export's config.yaml) in its run directory (the reference cache lives there); its files go
    to ``out``, by default ``RUN_DIR/train``. Returns the trial's metrics and ``out``."""
    from . import pipeline

    if config.params is None:
        raise cfg.ConfigError(f"{source}: 'ranksearch train' needs a 'params' section (one "
                              "trial); a search space runs with 'ranksearch search'")
    run = RunDir(run_dir_of(config, run_dir)).create()
    check_inputs(config)
    folder = Path(out) if out else run.path / "train"
    try:
        return pipeline.run_trial(config, config.params, run, folder, progress=progress), folder
    except pipeline.ReferenceFailed:
        raise  # one line of its own
    except pipeline.TrialFailed as err:  # diverged, say: the settings are the user's to fix
        raise UserError(f"{source}: the trial failed: {err}") from None


def run_search(
    config: cfg.StudyConfig, run: RunDir, *, backend: str = "optuna", workers: int = 1,
    address: str | None = None, progress: bool = True, gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
) -> None:
    """Start or resume the study of ``config`` in ``run`` until it holds ``config.trials``
    complete trials, then run the baselines the config asks for. ``config`` becomes the run's
    ``config.yaml`` once the study accepts it (a study started with other settings refuses)."""
    from . import pipeline

    if workers < 1:
        raise cfg.ConfigError(f"expected a positive number, got {workers}", argument="workers")
    if config.measure_latency and workers > 1 and address is None:
        warnings.warn(
            f"measure_latency with {workers} workers on this host: each trial times its model "
            "while the others train on the same cores; for the latency front, run "
            f"'ranksearch latency {run.path}' after the search (one model at a time)",
            stacklevel=2)
    if config.space is not None and isinstance(config.space.lr, list | cfg.Range) and (
            config.baselines and config.baselines.methods and not config.baselines.lr):
        warnings.warn("the space searches lr, but the baselines train at the schedule's rates;"
                      " give baselines.lr the rates the space covers to tune them alike",
                      stacklevel=2)
    runner = make_backend(backend, workers=workers, address=address,
                          gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial)
    runner.check()
    _require_same_study(run, config)
    url = storage_url(run, config.storage)
    if url != str(run.journal_path):
        write_storage_note(run, url)
        # A resume without --storage: the run's config.yaml keeps naming it (masked).
        config = cfg.updated(config, "the run's storage", storage=url)
    study = create_study(config, open_storage(url))
    # The same settings may name other inputs: new weights, edited training loop or metric.
    key = pipeline.reference_key(config)
    if study.user_attrs.get("reference_key", key) != key:
        raise cfg.ConfigError(
            f"{run.path}: the study started from other inputs (the file of model.weights, or "
            "the code of the training loop or metric, changed since); its trials would mix "
            "with new ones: restore them, or start another run directory")
    study.set_user_attr("reference_key", key)
    complete = counts(study.get_trials(deepcopy=False))["COMPLETE"]
    if complete > config.trials:  # a target below what is done would read "5 complete of 3"
        warnings.warn(f"the study already holds {complete} complete trials, more than the "
                      f"{config.trials} asked; none is added", stacklevel=2)
        config = cfg.updated(config, "the trial count", trials=complete)
    # Written only now: the commands that read the run (worker, baselines, latency, report)
    # must never see settings its study refused.
    atomic_write_text(run.config_path, cfg.dump(config))
    study.set_user_attr(TARGET_ATTR, config.trials)
    # The reference is trained here, once, before any worker starts: every trial and every
    # baseline then loads the same cached model.
    _, ref_metrics = pipeline.reference(config, run, progress=progress)
    study.set_user_attr("reference", ref_metrics)
    runner.run(config, run, url, progress=progress)
    run_baselines(config, run, progress=progress)


def _require_same_study(run: RunDir, config: cfg.StudyConfig) -> None:
    """A run directory holds one study: another name would start a second one whose trials
    write over the first one's trial folders."""
    try:
        recorded = cfg.load(run.config_path).name if run.config_path.is_file() else None
    except cfg.ConfigError:  # a damaged config.yaml is written again by this search
        recorded = None
    if recorded is None and run.journal_path.is_file():  # config.yaml deleted: ask the study
        import optuna

        names = optuna.get_all_study_names(open_storage(str(run.journal_path)))
        recorded = names[0] if names and config.name not in names else None
    if recorded is not None and recorded != config.name:
        raise cfg.ConfigError(
            f"{run.path} holds the study {recorded!r}; the study {config.name!r} needs a run "
            "directory of its own")


def run_baselines(config: cfg.StudyConfig, run: RunDir, *, progress: bool = True) -> None:
    """The study's baselines, if its config has any: every worker takes the runs nobody has
    taken yet."""
    if config.baselines is not None:
        from .baselines import run_baselines as run_all

        run_all(config, run, progress=progress)


def join_study(target: str, *, run_dir: str | None = None, worker: int = 0,
               progress: bool = True) -> tuple[RunDir, int]:
    """Join a study as one more worker.

    ``target`` is a run directory; or, on a host that has none yet, the run directory to
    create for the study in ``$RANKSEARCH_STORAGE``; or a storage URL or journal file (the run
    directory is then ``run_dir``, by default the journal's own run directory, else
    ``runs/NAME``). Returns the run directory and
    how many trials this worker completed.
    """
    from .search.optuna_backend import run_worker

    env_url = os.environ.get(STORAGE_ENV)
    if Path(target).is_dir():
        run = RunDir(target).require_existing()
        config = cfg.load(run.config_path)
        url = run_storage_url(run)
        if not env_url:
            require_study(run, url)
    else:
        if not is_journal_file(target) or Path(target).is_file():
            url = absolute_url(target)
        elif env_url:
            url, run_dir = env_url, target
        else:
            raise RunDirError(f"{target}: no such run directory, journal file or storage URL "
                              f"(to join a study in a database from a new host, set "
                              f"${STORAGE_ENV})")
        config = study_config(load_study(open_storage(url)))
        beside = Path(target).parent
        if run_dir is None and is_journal_file(target) and RunDir(beside).config_path.is_file():
            run_dir = beside  # the run's own journal: its trials belong in that run
        run = RunDir(run_dir_of(config, run_dir)).create()
        if not run.config_path.is_file():
            atomic_write_text(run.config_path, cfg.dump(config))
        # Later commands find the study; its own journal it finds anyway, wherever the run is.
        if not run.storage_path.is_file() and not is_own_journal(run, url):
            write_storage_note(run, url)
    done = run_worker(config, run, url, worker=worker, progress=progress)
    run_baselines(config, run, progress=progress)
    return run, done


def status_text(run_dir: str | Path) -> str:
    """Counts of trials by state and the current Pareto front, as text."""
    from .report.pareto import pareto_front, trials_frame
    from .report.text import STATE_WORDS

    run, config, study = open_run_study(run_dir)
    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    target = study.user_attrs.get(TARGET_ATTR, config.trials)
    gone = len(stale_trials(trials, heartbeat_folder(run_storage_url(run))))
    orphans = (f" ({gone} of them with their worker gone: the next search or worker requeues "
               f"{'it' if gone == 1 else 'them'})" if gone else "")
    lines = [
        f"study {config.name} ({run.path})",
        f"trials: {c['COMPLETE']} complete of {target}, {c['RUNNING']} running{orphans}, "
        f"{c['FAIL']} failed, {c['WAITING']} queued"
        + (f", {c['PRUNED']} pruned" if c["PRUNED"] else ""),
    ]
    metric = config.metric.name
    ref = study.user_attrs.get("reference")
    if ref:
        lines.append(f"reference: {metric} {ref['accuracy']:.4f}, FLOPs {ref['flops']:,}")
    frame = trials_frame(study, run.path)
    if config.baselines is not None:
        spec = config.baselines
        wanted = {(m, float(t)) for m in spec.methods for t in spec.targets}
        # Those the config asks for, made with its settings: what the next run keeps.
        asked = [r for r in run.baseline_results() if (r.get("method"), r.get("target")) in wanted]
        done = [r for r in asked if spec.is_current(r)]
        failed = [r for r in done if r.get("status", "complete") != "complete"]
        lines.append(f"baselines: {len(done)} of {len(wanted)} done"
                     + (f", {len(failed)} of them failed" if failed else "")
                     + (f"; {len(asked) - len(done)} made with other settings, made again by "
                        "the next search or 'ranksearch baselines'" if len(asked) > len(done)
                        else ""))
        for b in failed:
            lines.append(f"  failed baseline {b['method']} {b['target']:g}x: "
                         f"{b['status'].removeprefix('failed: ')}")
    front = pareto_front(frame)
    if not len(front) and c["COMPLETE"]:
        complete = frame[(frame["kind"] == "svd") & (frame["state"] == "COMPLETE")]
        why = ("all outside the study's constraints" if not complete["feasible"].any()
               else "none trained on the full budget with a finite result")
        lines.append(f"Pareto front: none yet ({c['COMPLETE']} complete trials, {why})")
    if len(front):
        lines.append(f"Pareto front (val {metric}, FLOPs, reduction):")
        for row in front.itertuples():
            lines.append(f"  trial {int(row.number):>4}  {row.accuracy:.4f}  {int(row.flops):>12,}"
                         f"  {row.flops_reduction:.2f}x")
    failed = [t for t in trials if t.state.name == "FAIL"]
    reruns = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    for t in failed[-5:]:
        rerun = reruns.get(t.number)
        after = (f" (rerun as trial {rerun.number}: {STATE_WORDS[rerun.state.name]})"
                 if rerun is not None else "")
        lines.append(f"  failed trial {t.number}: {t.user_attrs.get('fail_reason', 'unknown')}"
                     + after)
    return "\n".join(lines)


def write_report_for_run(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of the study in ``run_dir`` (``ranksearch report``); return ``out_dir``.

    ``out_dir`` defaults to ``reports/<study name>``. Model and dataset (for the quoted
    literature points) come from the run's config.
    """
    from .report import write_report

    run, config, study = open_run_study(run_dir)
    out = Path(out_dir) if out_dir is not None else Path("reports") / config.name
    write_report(study, run.path, out, model=config.model.name, dataset=config.data.name,
                 metric=config.metric.name)
    return out

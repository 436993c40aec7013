"""The Ray Tune backend: the Optuna backend's trial function under ``ray.tune.Tuner``.

Ray Tune places the trials on a Ray cluster (a private local one, or an existing one joined
with ``--address``), each with the CPUs and GPUs asked; Ray's ``OptunaSearch`` draws every
point from the run's own Optuna study, so the study reads the same whichever backend ran it:

- in the driver, the searcher asks the study for a trial and suggests its parameters through
  :func:`~ranksearch.search.space.suggest`; the Ray trial's config carries the Optuna trial id;
- in a Ray worker, the trainable opens the same storage and runs :class:`Objective` on that
  very Optuna trial: the same parameters, user attributes and failure handling as the Optuna
  backend; it reports the objective values, or that the trial failed;
- in the driver again, the searcher tells the study and logs the trial.

``--trials N`` means N complete trials in the study, exactly: a run asks for the missing
number, the searcher asks for no trial past N, and failed trials are replaced by further
rounds (until ``MAX_FAILURES_IN_A_ROW`` fail in a row). An interrupted run (Ctrl-C) leaves a
Ray experiment that the same command restores with ``Tuner.restore``: its unfinished trials
run again on their own Optuna trials, and nothing finished runs again.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .. import config as cfg
from .. import objectives
from ..runs import RunDir
from .backend import MAX_FAILURES_IN_A_ROW, Backend, TrialsKeepFailing, describe_trial, log
from .objective import Objective
from .ray_cluster import check_fits, check_reachable, default_gpus, ray_cluster
from .space import suggest
from .storage import absolute_url, heartbeat_folder, open_storage
from .study import (
    TARGET_ATTR,
    Heartbeat,
    counts,
    fail_stale_trials,
    load_study,
    make_sampler,
    requeue,
)

__all__ = ["RayBackend", "run_ray_search", "EXPERIMENT"]

EXPERIMENT = "tune"
"""Name of the Ray Tune experiment folder under ``RUN_DIR/ray``."""
NUMBER_KEY = "optuna_trial_number"
TRIAL_ID_KEY = "optuna_trial_id"
FAILED_KEY = "fail_reason"
"""Reported instead of objective values by a trial that failed."""

# The storage a restored searcher binds to (see ``_StudySearch.__setstate__``): set only while
# ``run_ray_search`` runs, so the URL lives in memory and never in Ray's pickled state.
_bound_storage: BaseStorage | None = None


class RayBackend(Backend):
    """Ray Tune on a private local cluster, or on an existing one at ``address``; see
    :func:`run_ray_search` for the arguments."""

    name = "ray"

    def __init__(self, *, concurrency: int = 1, address: str | None = None,
                 gpus_per_trial: float | None = None, cpus_per_trial: float = 1.0) -> None:
        self.options = {"concurrency": concurrency, "address": address,
                        "gpus_per_trial": gpus_per_trial, "cpus_per_trial": cpus_per_trial}

    def check(self) -> None:
        """The cluster answers at ``address``; without one, this host has what a trial asks
        (Tune would wait forever for more; a cluster may grow, so its size is not checked)."""
        if self.options["address"]:
            check_reachable(self.options["address"])
        else:
            check_fits(self.options["cpus_per_trial"], self.options["gpus_per_trial"] or 0.0)

    def run(self, config: cfg.StudyConfig, run: RunDir, storage_url: str, *,
            progress: bool = True) -> None:
        run_ray_search(config, run, storage_url, progress=progress, **self.options)


def run_ray_search(
    config: cfg.StudyConfig, run: RunDir, storage_url: str, *, concurrency: int = 1,
    address: str | None = None, progress: bool = True, gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
) -> None:
    """Run the study of ``config`` under Ray Tune until it holds its target of complete
    trials (the study's ``n_trials`` user attribute, set to ``config.trials`` if missing).

    The study must exist in ``storage_url`` (``ranksearch.app.run_search`` creates it and caches the
    reference first). ``address`` joins an existing Ray cluster; without it a private local
    one is started with every CPU of this host, and stopped at the end. Each trial reserves
    ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (fractions share a card; by default
    one GPU when the cluster has any and ``config.device`` is not ``cpu``); at most
    ``concurrency`` trials run at once. Ray's files go to ``RUN_DIR/ray/tune``.

    Raises :class:`KeyboardInterrupt` when interrupted: the same call resumes.
    """
    if config.space is None:
        raise ValueError("a search needs a config with a 'space' section")
    RayBackend(address=address, gpus_per_trial=gpus_per_trial,
               cpus_per_trial=cpus_per_trial).check()
    # Trainables run in Ray worker processes, maybe on other hosts, in another directory.
    run = RunDir(run.path.resolve())
    url = absolute_url(storage_url)
    storage = open_storage(url)
    study = load_study(storage, config.name)
    if TARGET_ATTR not in study.user_attrs:  # the searchers read the target from here
        study.set_user_attr(TARGET_ATTR, config.trials)
    space = _Space(config.space, Objective(config, run, progress=False).layer_groups())
    experiment = run.path / "ray" / EXPERIMENT
    with ray_cluster(address, progress), _bound(storage):
        gpus = default_gpus(config) if gpus_per_trial is None else gpus_per_trial
        trainable = tune.with_resources(
            _trainable(config, run.path, url, threads=max(1, int(cpus_per_trial))),
            {"cpu": cpus_per_trial, "gpu": gpus},
        )
        target = study.user_attrs[TARGET_ATTR]
        complete = counts(study.get_trials(deepcopy=False))["COMPLETE"]
        # Not past a target lowered since the interruption: the trials it left running are
        # failed and requeued below instead.
        if complete < target and _unfinished(experiment):
            log(f"resuming the interrupted Ray Tune experiment in {experiment}")
            # Errored Ray trials are failed Optuna trials already: new trials replace them.
            _fit(tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True,
                                    resume_errored=False))
        # Trials of a run killed before Ray saved its state: requeue their parameters.
        fail_stale_trials(study, study.get_trials(deepcopy=False), folder=heartbeat_folder(url))
        # One sampler for every round, so that its random draws go on rather than repeat; its
        # seed is offset by the trials already in the study, so a resumed search draws anew.
        sampler = make_sampler(config.sampler, trials_before=len(study.get_trials(deepcopy=False)))
        failures_in_a_row = 0
        while True:
            complete = counts(study.get_trials(deepcopy=False))["COMPLETE"]
            missing = study.user_attrs[TARGET_ATTR] - complete
            if missing <= 0:
                return
            searcher = _StudySearch(
                space=space, metric=objectives.names(config), mode=objectives.ray_modes(config),
                sampler=sampler,
                study_name=config.name, storage=storage,
            )
            searcher.failures_in_a_row = failures_in_a_row
            searcher.quality_name = config.metric.name
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=missing, max_concurrent_trials=concurrency,
                    # One worker process runs trial after trial: no new process, no imports,
                    # no dataset load per trial.
                    reuse_actors=True,
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(experiment.parent),
                                          verbose=1 if progress else 0),
            )
            _fit(tuner)
            failures_in_a_row = searcher.failures_in_a_row
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise TrialsKeepFailing(failures_in_a_row, searcher.last_fail_reason, run.path)


# --- the trial, in a Ray worker --------------------------------------------------------------
def _trainable(config: cfg.StudyConfig, run_path: Path, url: str, *, threads: int
               ) -> Callable[[dict[str, Any]], None]:
    """The Ray function trainable: runs :class:`Objective` on the Optuna trial that the
    searcher asked for, and reports its objective values."""
    metric_names = objectives.names(config)
    beats = heartbeat_folder(url)
    # Ray starts each trial in a folder of its own, but relative paths in the config (data.dir,
    # user code named 'file.py:function') name files from where the search was started.
    start_dir = os.getcwd()
    # One of each per worker process, reused by its trials. The storage stays open so that a
    # journal is read on from where the last trial left it instead of replayed from the start,
    # and an RDB storage keeps its connection pool.
    objective: Objective | None = None
    storage: BaseStorage | None = None

    def ranksearch_trial(ray_config: dict[str, Any]) -> None:
        import torch

        nonlocal objective, storage
        if os.path.isdir(start_dir):  # a host of a cluster may lack it: absolute paths work
            os.chdir(start_dir)
        if objective is None:
            objective = Objective(config, RunDir(run_path), progress=False)
        if storage is None:
            storage = open_storage(url)
        torch.set_num_threads(threads)
        # Every parameter is already set on the trial, so the sampler never samples.
        study = load_study(storage, config.name, sampler=optuna.samplers.RandomSampler())
        trial_id = ray_config[TRIAL_ID_KEY]
        state = storage.get_trial(trial_id).state
        if state != TrialState.RUNNING:
            # A restored Ray trial whose Optuna trial was finished before Ray saved its state.
            return _report_failure(metric_names, f"Optuna trial {ray_config[NUMBER_KEY]} is "
                                   f"{state.name} already; not run again")
        trial = optuna.Trial(study, trial_id)
        with Heartbeat(study, trial_id, beats):
            outcome = objective(trial)
        if outcome.values is None:
            # Reported, not raised: an error would make Ray replace this worker process, and
            # a new one costs seconds of start-up and imports.
            return _report_failure(metric_names, outcome.fail_reason)
        scalars = {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
        tune.report({**scalars, **dict(zip(metric_names, outcome.values, strict=True))})

    return ranksearch_trial


def _report_failure(metric_names: list[str], reason: str) -> None:
    # Tune insists on the objective keys in every result; the searcher never tells these NaNs.
    tune.report({**dict.fromkeys(metric_names, float("nan")), FAILED_KEY: reason})


# --- the searcher, in the driver -------------------------------------------------------------
class _Space:
    """The define-by-run space: suggests a point on the Optuna trial and returns constants
    that ``OptunaSearch`` merges into the Ray trial's config, so the trainable knows which
    Optuna trial it runs."""

    def __init__(self, space: cfg.SearchSpace, layer_groups: dict[str, str]) -> None:
        self.space = space
        self.layer_groups = layer_groups

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        suggest(trial, self.space, self.layer_groups)
        return {NUMBER_KEY: trial.number, TRIAL_ID_KEY: trial._trial_id}


class _StudySearch(OptunaSearch):
    """``OptunaSearch`` on the run's study that asks for no trial past the study's target,
    logs every finished trial, and never pickles its storage.

    Ray pickles its searcher into the experiment folder (``tuner.pkl`` and the searcher
    checkpoint); a PostgreSQL or Redis storage would carry its URL, password included. This
    searcher pickles its Optuna trials as ids, and a restored copy binds to the storage of
    the running :func:`run_ray_search`.
    """

    failures_in_a_row = 0
    last_fail_reason: str | None = None
    quality_name = "accuracy"
    """How the logged lines name the study's metric."""

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            return Searcher.FINISHED
        if trial_id not in self._ot_trials:
            # Running anywhere: this searcher's trials (told only once they end) and those of
            # any other process on the study (a worker, another driver).
            busy = self._ot_study.get_trials(deepcopy=False,
                                             states=(TrialState.COMPLETE, TrialState.RUNNING))
            if len(busy) >= self._ot_study.user_attrs[TARGET_ATTR]:
                return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = self._ot_trials[trial_id]
        # A crash (the process killed, out of memory) is no fault of the trial's: its
        # parameters run once more, unless this was the second time.
        requeued = False
        if result is not None and FAILED_KEY in result:
            result, error = None, True  # the Objective recorded why
        elif error:
            requeued = "retry_of" not in self._storage.get_trial(ot_trial._trial_id).user_attrs
            with contextlib.suppress(UpdateFinishedTrialError):  # then the tell fails alike
                ot_trial.set_user_attr(
                    "fail_reason", "the Ray trial crashed; see its error.txt under RUN_DIR/ray"
                    + ("; parameters requeued" if requeued else ""))
        super().on_trial_complete(trial_id, result=result, error=error)
        # The worker wrote the metrics or the reason through its own storage handle.
        frozen = self._storage.get_trial(ot_trial._trial_id)
        if frozen.state == TrialState.COMPLETE:
            self.failures_in_a_row = 0
            log(describe_trial(frozen.number, frozen.user_attrs["metrics"], self.quality_name))
        elif frozen.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_fail_reason = frozen.user_attrs.get("fail_reason")
            if requeued:
                requeue(self._ot_study, frozen)
            log(f"trial {frozen.number} failed: {self.last_fail_reason}")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_storage"], state["_ot_study"]
        state["_ot_trials"] = {ray_id: t._trial_id for ray_id, t in self._ot_trials.items()
                               if ray_id not in self._completed_trials}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if _bound_storage is None:
            raise RuntimeError("a ranksearch Ray Tune experiment resumes only through "
                               "'ranksearch search' (the storage is not saved with it)")
        trial_ids = state.pop("_ot_trials")
        self.__dict__.update(state)
        self._storage = _bound_storage
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        self._ot_trials = {ray_id: optuna.Trial(self._ot_study, tid)
                           for ray_id, tid in trial_ids.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))


@contextlib.contextmanager
def _bound(storage: BaseStorage) -> Iterator[None]:
    global _bound_storage
    _bound_storage = storage
    try:
        yield
    finally:
        _bound_storage = None


def _trial_name(trial: Trial) -> str:
    return f"trial-{trial.config[NUMBER_KEY]}"


# --- the experiment folder and signals ---------------------------------------------------
def _unfinished(experiment: Path) -> bool:
    """Whether the Ray experiment saved in ``experiment`` has trials that did not finish (it
    was interrupted); a finished experiment holds only terminated and errored trials."""
    if not tune.Tuner.can_restore(str(experiment)):
        return False
    try:
        trials = tune.ExperimentAnalysis(str(experiment)).trials
    except ValueError:  # created, but killed before its first state was saved
        return False
    return any(t.status not in (Trial.TERMINATED, Trial.ERROR) for t in trials)


def _fit(tuner: tune.Tuner) -> None:
    """Run ``tuner``. The first Ctrl-C stops it gracefully: Tune saves its state, for the
    next command to restore, and :class:`KeyboardInterrupt` is raised once it has; a second
    Ctrl-C raises at once."""
    interrupted = threading.Event()
    # Only the main thread may set signal handlers (and only it receives Ctrl-C).
    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)} \
        if main else {}

    def on_sigint(signum: int, frame: object) -> None:
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (
            saved[signal.SIGUSR1], signal.SIG_DFL, signal.SIG_IGN)
        if interrupted.is_set() or not tune_listens:
            raise KeyboardInterrupt
        interrupted.set()
        # Tune stops gracefully on SIGUSR1 as on SIGINT. Catching SIGINT here instead tells
        # an interrupted run from one that ended between trials.
        os.kill(os.getpid(), signal.SIGUSR1)

    if main:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        # The classic console output: a status table (verbose 1) or nothing (verbose 0); the
        # newer one prints boxes for every trial, and a header even when silent.
        with _environ(RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_SIGINT_HANDLER="1"):
            tuner.fit()
    finally:
        # Tune leaves its own handlers installed after it returns.
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)
    if interrupted.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables of this process for the duration of the block."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

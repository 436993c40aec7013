"""The Optuna study behind a run: creation, loading, samplers, counts and liveness.

Both backends (Optuna workers and Ray Tune) read and write the same study, so ``status``,
``report`` and ``export`` never care which one ran it. Where it is stored: :mod:`.storage`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import IO, Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from .. import config as cfg
from .. import objectives
from ..runs import RunDir
from .storage import StorageError, open_storage, require_study, run_storage_url

__all__ = [
    "create_study", "load_study", "study_config", "open_run_study", "make_sampler",
    "sampler_seed", "counts", "Heartbeat", "stale_trials", "fail_stale_trials", "requeue",
    "HEARTBEAT_S", "GRACE_S", "TARGET_ATTR",
]

GRACE_S = float(os.environ.get("RANKSEARCH_HEARTBEAT_GRACE", "60"))
"""Seconds without a heartbeat after which a running trial counts as dead (tests shorten it)."""
HEARTBEAT_S = GRACE_S / 6
HEARTBEAT_ATTR = "ranksearch:heartbeat"
TARGET_ATTR = "n_trials"
"""Study user attribute: how many complete trials the study is to reach (``--trials``)."""


def sampler_seed(seed: int, worker: int, trials_before: int) -> int:
    """The seed of worker ``worker`` starting on a study of ``trials_before`` trials.

    The configured seed itself for the first worker of a new study, and a distinct stream for
    every other (worker, start) pair: adding ``worker + trials_before`` to the seed instead
    gave worker 0 starting after one trial and worker 1 starting first the same seed, and
    both suggested the same points.
    """
    if worker == 0 and trials_before == 0:
        return seed
    return int(np.random.SeedSequence([seed, worker, trials_before]).generate_state(1)[0])


def make_sampler(spec: cfg.SamplerSpec, worker: int = 0,
                 trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler for worker ``worker`` joining a study of ``trials_before``
    trials. Each worker, and each restart of one, draws its own stream (see
    :func:`sampler_seed`), or they would suggest alike. TPE, NSGA-II and GP read the trials'
    constraints themselves (``Trial.set_constraint``); random sampling ignores them."""
    seed = None if spec.seed is None else sampler_seed(spec.seed, worker, trials_before)
    if spec.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True,
            n_startup_trials=spec.n_startup_trials or 10,
        )
    if spec.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population_size or 20)
    if spec.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.n_startup_trials or 10)
    return optuna.samplers.RandomSampler(seed=seed)


def create_study(config: cfg.StudyConfig, storage: BaseStorage) -> optuna.Study:
    """Create the study named ``config.name`` or load it; the config travels in its user
    attributes so that a worker on another host needs only the storage URL."""
    study = optuna.create_study(
        study_name=config.name, storage=storage, directions=objectives.directions(config),
        load_if_exists=True,
    )
    existing = study.user_attrs.get("config")
    text = cfg.dump(config.model_copy(update={"trials": 1}))
    if existing is not None and existing != text:
        previous = cfg.loads(existing, "the study's config")
        changed = _first_difference(_search_settings(previous), _search_settings(config))
        if changed:
            raise StorageError(
                f"study {config.name!r} already exists with different settings ({changed}); "
                "use another name or run directory"
            )
    study.set_user_attr("config", text)
    return study


def _search_settings(config: cfg.StudyConfig) -> dict[str, Any]:
    """What must match for a study to be resumed: everything but the trial count, the storage
    and the baselines (those may grow between runs)."""
    return config.model_dump(exclude={"trials", "storage", "baselines"})


def _first_difference(before: Any, now: Any, where: str = "") -> str | None:
    """The first setting that differs, as ``dotted.name: old then, new now``; None if none."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now), key=str):
            found = _first_difference(before.get(key), now.get(key),
                                      f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if before == now else f"{where}: {before!r} then, {now!r} now"


def load_study(storage: BaseStorage, name: str | None = None,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Load an existing study; with no name, the only study in the storage."""
    if name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise StorageError(f"expected one study in the storage, found {found}")
        name = names[0]
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        raise StorageError(f"no study named {name!r} in the storage") from None


def study_config(study: optuna.Study) -> cfg.StudyConfig:
    """The config a study was created with (:func:`create_study` keeps it in the study)."""
    text = study.user_attrs.get("config")
    if text is None:
        raise StorageError(f"study {study.study_name!r} was not created by ranksearch")
    return cfg.loads(text, "the study's config")


def counts(trials: list[FrozenTrial]) -> Counter:
    """Trials by state name (COMPLETE, RUNNING, FAIL, WAITING, PRUNED)."""
    return Counter(t.state.name for t in trials)


def open_run_study(run_dir: str | Path) -> tuple[RunDir, cfg.StudyConfig, optuna.Study]:
    """The run directory, its config and its study (for status, report and export)."""
    run = RunDir(run_dir).require_existing()
    config = cfg.load(run.config_path)
    url = run_storage_url(run)
    require_study(run, url)
    return run, config, load_study(open_storage(url), config.name)


class Heartbeat:
    """A thread that stamps a running trial every ``HEARTBEAT_S`` seconds.

    A trial whose stamp is older than ``GRACE_S`` belongs to a dead worker: any live worker
    fails it and requeues its parameters (see :func:`fail_stale_trials`). Optuna's own
    heartbeat exists only for RDB storages; this one works on every storage. With ``folder``
    (see :func:`heartbeat_folder`) the stamp is a file's modification time, else a user
    attribute of the trial. The file also names this host and stays locked (``flock``) while
    the trial runs: a worker on the same host that finds the lock free knows the trial's worker
    died, without waiting out the grace period.
    """

    def __init__(self, study: optuna.Study, trial_id: int, folder: Path | None = None) -> None:
        self._study = study
        self._trial_id = trial_id
        self._file = None if folder is None else folder / str(trial_id)
        self._lock: IO[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _stamp(self) -> None:
        if self._file is None:
            self._study._storage.set_trial_user_attr(self._trial_id, HEARTBEAT_ATTR, _now())
        else:
            self._file.touch()  # sets the modification time of an existing file too

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._stamp()
            except Exception:
                return  # the trial was finished or failed by another worker

    def __enter__(self) -> Heartbeat:
        if self._file is not None:
            self._file.parent.mkdir(exist_ok=True)
            self._lock = self._file.open("a+")
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # held until this trial ends, or we die
            self._lock.truncate(0)
            self._lock.write(socket.gethostname())
            self._lock.flush()
        self._stamp()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._lock is not None:
            self._lock.close()  # releases the flock


def _died_here(beat_file: Path) -> bool:
    """Whether the trial of ``beat_file`` ran on this host and its worker is gone: the file
    names this host and its lock is free (locks are only trusted on the host that took them)."""
    try:
        with beat_file.open("r+") as handle:
            if handle.read() != socket.gethostname():
                return False
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # alive
            return True  # closing the handle releases the lock at once
    except OSError:
        return False


def _now() -> float:
    return datetime.datetime.now(datetime.timezone.utc).timestamp()


def _last_beat(trial: FrozenTrial, folder: Path | None) -> float | None:
    if folder is not None:
        with contextlib.suppress(FileNotFoundError):
            return (folder / str(trial._trial_id)).stat().st_mtime
    last = trial.user_attrs.get(HEARTBEAT_ATTR)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    return last


def stale_trials(trials: list[FrozenTrial], folder: Path | None = None) -> list[FrozenTrial]:
    """The RUNNING trials whose worker is gone: their heartbeat (in ``folder``, else the
    trial's user attribute) is older than ``GRACE_S``, or its lock on this host is free."""
    now = _now()
    stale = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        last = _last_beat(t, folder)
        if (folder is not None and _died_here(folder / str(t._trial_id))) or (
                last is not None and now - last >= GRACE_S):
            stale.append(t)
    return stale


def fail_stale_trials(study: optuna.Study, trials: list[FrozenTrial],
                      folder: Path | None = None) -> int:
    """Fail the :func:`stale_trials` and requeue their parameters. Returns how many were
    failed."""
    failed = 0
    for t in stale_trials(trials, folder):
        try:
            # The reason goes first: a finished trial takes no more attributes.
            study._storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "worker stopped (no heartbeat); parameters requeued")
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except Exception:
            continue  # another worker got there first, or the trial just finished
        requeue(study, t)
        failed += 1
    return failed


#: What a queued trial carries from where it came from (a shared SVD training, a promoted
#: sweep candidate), and so its retry too.
_ORIGIN_ATTRS = ("reuses_training_of", "promoted_from", "candidate", "proxy_accuracy",
                 "proxy_flops")


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> None:
    """Queue the parameters of ``trial`` (failed by no fault of its own: its worker died or
    was stopped, or it was one too many) again, with the attributes that say where it came
    from and ``retry_of`` its number."""
    origin = {k: trial.user_attrs[k] for k in _ORIGIN_ATTRS if k in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={**origin, "retry_of": trial.number},
                        skip_if_exists=False)


"""The Optuna study behind a run: storage, creation, samplers, counts and liveness.

Both backends (Optuna workers and Ray Tune) read and write the same study, so ``status``,
``report`` and ``export`` never care which one ran it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from .. import config as cfg
from ..errors import UserError
from ..runs import RunDir, atomic_write_text

__all__ = [
    "StorageError", "open_storage", "storage_url", "create_study", "load_study", "make_sampler",
    "counts", "Heartbeat", "heartbeat_folder", "fail_stale_trials", "HEARTBEAT_S", "GRACE_S",
    "TARGET_ATTR", "STORAGE_ENV",
]

STORAGE_ENV = "RANKSEARCH_STORAGE"
"""Environment variable through which a launcher hands a storage URL to its worker processes,
so that a password never appears on a command line or in a file."""
GRACE_S = float(os.environ.get("RANKSEARCH_HEARTBEAT_GRACE", "60"))
"""Seconds without a heartbeat after which a running trial counts as dead (tests shorten it)."""
HEARTBEAT_S = GRACE_S / 6
HEARTBEAT_ATTR = "ranksearch:heartbeat"
TARGET_ATTR = "n_trials"
"""Study user attribute: how many complete trials the study is to reach (``--trials``)."""


class StorageError(UserError):
    """A storage that cannot be opened; the message is one line with the password masked."""


def storage_url(run: RunDir, url: str | None) -> str:
    """The storage a run uses: ``url`` if given, else the journal file in the run directory."""
    return url if url else str(run.journal_path)


def open_storage(url: str) -> BaseStorage:
    """Open an Optuna storage from a URL or a journal file path.

    ``postgresql://``, ``mysql://``, ``sqlite:///`` open an RDB storage; ``redis://`` a journal
    on Redis; anything else is a journal file path (safe for several processes on one host
    and for hosts sharing a file system with working locks).
    """
    shown = cfg.mask_url(url)
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    try:
        if scheme in ("postgresql", "mysql", "sqlite"):
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        if scheme == "redis":
            from optuna.storages.journal import JournalRedisBackend

            return JournalStorage(JournalRedisBackend(url))
        if scheme:
            raise StorageError(
                f"{shown}: unknown storage; expected postgresql://, mysql://, sqlite:///, "
                "redis:// or a journal file path"
            )
        path = _journal_path(url)
        if not path.parent.is_dir():
            raise StorageError(f"{shown}: the folder of the journal file does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    except StorageError:
        raise
    except ImportError as err:
        # Optuna reports any failure to connect as an ImportError; the cause says what it was.
        cause = err.__cause__ or err.__context__ or err
        missing = getattr(cause, "name", None) or err.name
        if missing:
            raise StorageError(f"{shown}: the database driver {missing!r} is missing; install "
                               f"it with pip (e.g. pip install 'ranksearch[postgres]')") from None
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise StorageError(f"{shown}: cannot open the storage ({cfg.mask_url(reason)})") \
            from None
    except Exception as err:  # SQLAlchemy and Redis raise many types; the user needs one line
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StorageError(f"{shown}: cannot open the storage ({cfg.mask_url(reason)})") \
            from None


def _journal_path(url: str) -> Path:
    path = Path(url)
    return path / "study.journal" if path.is_dir() else path


def heartbeat_folder(url: str) -> Path | None:
    """Where the heartbeats of a study on a journal file go: one file per running trial,
    beside the journal, whose modification time is the last beat. A beat appended to the
    journal would be replayed by every later reader (60 lines per 10-minute trial, five times
    the trials' own lines), whereas an RDB storage updates one row in place. None for storages
    other than a journal file."""
    if "://" in url:
        return None
    return _journal_path(url).parent / "heartbeats"


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


def make_sampler(spec: cfg.SamplerSpec, constraints: bool, worker: int = 0,
                 trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler for worker ``worker`` joining a study of ``trials_before``
    trials. Each worker, and each restart of one, draws its own stream (see
    :func:`sampler_seed`), or they would suggest alike."""
    seed = None if spec.seed is None else sampler_seed(spec.seed, worker, trials_before)
    constraints_func = _constraints if constraints else None
    if spec.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True,
            n_startup_trials=spec.n_startup_trials or 10, constraints_func=constraints_func,
        )
    if spec.name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=spec.population_size or 20,
            constraints_func=constraints_func,
        )
    if spec.name == "gp":
        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=spec.n_startup_trials or 10,
            constraints_func=constraints_func,
        )
    return optuna.samplers.RandomSampler(seed=seed)


def _constraints(trial: FrozenTrial) -> list[float]:
    # Optuna treats values <= 0 as satisfied; a failed trial has none and counts as violating.
    return trial.user_attrs.get("constraints", [1.0])


def directions(config: cfg.StudyConfig) -> list[str]:
    return ["maximize", "minimize"] + (["minimize"] if "latency" in config.objectives else [])


def create_study(config: cfg.StudyConfig, storage: BaseStorage, sampler=None) -> optuna.Study:
    """Create the study named ``config.name`` or load it; the config travels in its user
    attributes so that a worker on another host needs only the storage URL."""
    study = optuna.create_study(
        study_name=config.name, storage=storage, directions=directions(config),
        sampler=sampler, load_if_exists=True,
    )
    existing = study.user_attrs.get("config")
    text = cfg.dump(config.model_copy(update={"trials": 1}))
    if existing is not None and existing != text:
        previous = cfg.loads(existing, "the study's config")
        if _search_settings(previous) != _search_settings(config):
            raise StorageError(
                f"study {config.name!r} already exists with different settings; use another "
                "name or run directory"
            )
    study.set_user_attr("config", text)
    return study


def _search_settings(config: cfg.StudyConfig) -> dict[str, Any]:
    """What must match for a study to be resumed: everything but the trial count, the storage
    and the baselines (those may grow between runs)."""
    return config.model_dump(exclude={"trials", "storage", "baselines"})


def load_study(storage: BaseStorage, name: str | None = None, sampler=None) -> optuna.Study:
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
    text = study.user_attrs.get("config")
    if text is None:
        raise StorageError(f"study {study.study_name!r} was not created by ranksearch")
    return cfg.loads(text, "the study's config")


def counts(trials: list[FrozenTrial]) -> Counter:
    """Trials by state name (COMPLETE, RUNNING, FAIL, WAITING, PRUNED)."""
    return Counter(t.state.name for t in trials)


def write_storage_note(run: RunDir, url: str) -> None:
    """Record which storage a run uses, password masked (a worker is given the real URL)."""
    atomic_write_text(run.storage_path, cfg.mask_url(url) + "\n")


class Heartbeat:
    """A thread that stamps a running trial every ``HEARTBEAT_S`` seconds.

    A trial whose stamp is older than ``GRACE_S`` belongs to a dead worker: any live worker
    fails it and requeues its parameters (see :func:`fail_stale_trials`). Optuna's own
    heartbeat exists only for RDB storages; this one works on every storage. With ``folder``
    (see :func:`heartbeat_folder`) the stamp is a file's modification time, else a user
    attribute of the trial.
    """

    def __init__(self, study: optuna.Study, trial_id: int, folder: Path | None = None) -> None:
        self._study = study
        self._trial_id = trial_id
        self._file = None if folder is None else folder / str(trial_id)
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
        self._stamp()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def fail_stale_trials(study: optuna.Study, trials: list[FrozenTrial],
                      grace_s: float = GRACE_S, folder: Path | None = None) -> int:
    """Fail RUNNING trials whose heartbeat (in ``folder``, else the trial's user attribute)
    stopped, and requeue their parameters. Returns how many were failed."""
    now = _now()
    failed = 0
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        last = _last_beat(t, folder)
        if last is None or now - last < grace_s:
            continue
        try:
            # The reason goes first: a finished trial takes no more attributes.
            study._storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "worker stopped (no heartbeat); parameters requeued")
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except Exception:
            continue  # another worker got there first, or the trial just finished
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number},
                            skip_if_exists=False)
        failed += 1
    return failed


def pid_tag() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"

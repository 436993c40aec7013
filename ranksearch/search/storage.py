"""Where a study lives: an Optuna storage, named by a URL or a journal file path.

A run keeps its study in ``RUN_DIR/study.journal`` unless ``--storage`` names another one
(``postgresql://``, ``mysql://``, ``sqlite:///``, ``redis://``, or a journal file elsewhere).
:func:`storage_scheme` is the one place that tells a URL from a journal file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from .. import config as cfg
from ..errors import UserError
from ..runs import RunDir, RunDirError, atomic_write_text

__all__ = [
    "STORAGE_ENV", "StorageError", "storage_scheme", "is_journal_file", "is_own_journal",
    "storage_url", "run_storage_url", "open_storage", "absolute_url", "heartbeat_folder",
    "write_storage_note", "require_study",
]

STORAGE_ENV = "RANKSEARCH_STORAGE"
"""Environment variable through which a launcher hands a storage URL to its worker processes,
so that a password never appears on a command line or in a file."""

_RDB_SCHEMES = ("postgresql", "mysql", "sqlite")
_DRIVER_HINTS = {
    "postgresql": "pip install 'ranksearch[postgres]'",
    "mysql": "pip install 'ranksearch[mysql]' and write the URL as mysql+pymysql://",
    "redis": "pip install 'ranksearch[redis]'",
}


class StorageError(UserError):
    """A storage that cannot be opened; the message is one line with the password masked."""


def storage_scheme(url: str) -> str:
    """The scheme of a storage URL without its driver (``postgresql`` for
    ``postgresql+psycopg://…``), or ``""`` for a journal file path."""
    return url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""


def is_journal_file(url: str) -> bool:
    """Whether ``url`` names a journal file rather than a storage URL."""
    return storage_scheme(url) == ""


def storage_url(run: RunDir, url: str | None) -> str:
    """The storage a search of ``run`` uses: the one its study already lives in (the
    recorded one, as :func:`run_storage_url` reads it, or the run's journal file); for a new
    study ``url`` if given (a relative SQLite or journal path made absolute, so that the run
    opens it from any directory), else the run's journal file.

    Raises:
        StorageError: ``url`` names another storage than the one the run's study lives in
            (the search would start a second study beside it).
    """
    own = str(run.journal_path)
    given = absolute_url(url) if url else None
    if given and is_own_journal(run, given):
        given = own  # named as such, so the run can be moved
    if run.storage_path.is_file():
        where = run.storage_path.read_text().strip()  # password masked
        given = given or run_storage_url(run)  # $RANKSEARCH_STORAGE too: checked as --storage
    elif run.journal_path.is_file():
        where = own
    else:
        return given or own
    if given is None:
        return own
    if cfg.mask_url(given) != where:
        raise StorageError(
            f"{run.path}: its study lives in {where}, not {cfg.mask_url(given)}; resume it "
            f"without --storage (and without ${STORAGE_ENV} naming another), or start another "
            "run directory")
    return given


def is_own_journal(run: RunDir, url: str) -> bool:
    """Whether ``url`` names the run's own journal file, however the path is written."""
    return absolute_url(url) == absolute_url(str(run.journal_path))


def run_storage_url(run: RunDir) -> str:
    """The real storage URL of an existing run: ``$RANKSEARCH_STORAGE``, else the recorded one
    (which must not need a password, since passwords are never written down), else the run's
    journal file."""
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


def require_study(run: RunDir, url: str) -> None:
    """Fail with one line when ``url`` is a journal file that does not exist yet."""
    if is_journal_file(url) and not Path(url).is_file():
        raise RunDirError(f"{run.path}: no study has been started here yet")


def write_storage_note(run: RunDir, url: str) -> None:
    """Record which storage a run uses, password masked (a worker is given the real URL)."""
    atomic_write_text(run.storage_path, cfg.mask_url(url) + "\n")


def open_storage(url: str) -> BaseStorage:
    """Open an Optuna storage from a URL or a journal file path.

    ``postgresql://``, ``mysql://``, ``sqlite:///`` open an RDB storage; ``redis://`` a journal
    on Redis; anything else is a journal file path (safe for several processes on one host
    and for hosts sharing a file system with working locks).
    """
    shown = cfg.mask_url(url)
    scheme = storage_scheme(url)
    try:
        if scheme in _RDB_SCHEMES:
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
        _drop_cut_record(path)
        return JournalStorage(JournalFileBackend(str(path)))
    except StorageError:
        raise
    except ImportError as err:
        # Optuna reports any failure to connect as an ImportError; the cause says what it was.
        cause = err.__cause__ or err.__context__ or err
        missing = getattr(cause, "name", None) or err.name
        if missing:
            raise StorageError(f"{shown}: the database driver {missing!r} is missing; "
                               f"{_DRIVER_HINTS.get(scheme, 'install it with pip')}") from None
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise StorageError(f"{shown}: cannot open the storage ({cfg.mask_url(reason)})") \
            from None
    except Exception as err:  # SQLAlchemy and Redis raise many types; the user needs one line
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StorageError(f"{shown}: cannot open the storage ({cfg.mask_url(reason)})") \
            from None


def _drop_cut_record(path: Path) -> None:
    """Drop the journal's last record if a write cut it short (a full disk, a lost machine).

    Optuna reads past such a line, but its next append would glue a record to it, and from
    then on no command could read the study. The cut is dropped holding the journal's own
    lock (writers append whole lines under it); where the lock cannot be taken (a read-only
    run) the journal is left as it is, still readable.
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
        try:
            with path.open("rb+") as f:
                data = f.read()
                if data.endswith(b"\n"):  # a writer finished the line meanwhile
                    return
                kept = data.rfind(b"\n") + 1
                f.truncate(kept)
        finally:
            lock.release()
    except (OSError, RuntimeError):  # RuntimeError: Optuna's lock was taken from us meanwhile
        return
    warnings.warn(f"{path}: dropped its last record, cut short by an interrupted write "
                  f"({len(data) - kept} bytes)", stacklevel=3)


def _journal_path(url: str) -> Path:
    path = Path(url)
    return path / "study.journal" if path.is_dir() else path


def absolute_url(url: str) -> str:
    """The storage URL with a relative journal or SQLite path made absolute, for processes
    that run in another directory (Ray workers)."""
    scheme = storage_scheme(url)
    if not scheme:
        return str(Path(url).resolve())
    prefix, rest = url.split("://", 1)
    if scheme == "sqlite" and rest.startswith("/") and not rest.startswith("//") \
            and rest not in ("/", "/:memory:"):
        return f"{prefix}:///{Path(rest[1:]).resolve()}"
    return url


def heartbeat_folder(url: str) -> Path | None:
    """Where the heartbeats of a study on a journal file go: one file per running trial,
    beside the journal, whose modification time is the last beat. A beat appended to the
    journal would be replayed by every later reader (60 lines per 10-minute trial, five times
    the trials' own lines), whereas an RDB storage updates one row in place. None for storages
    other than a journal file."""
    if not is_journal_file(url):
        return None
    return _journal_path(url).parent / "heartbeats"

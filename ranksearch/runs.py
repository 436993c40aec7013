"""The run directory: where a study keeps its config, storage, caches and results.

Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the old file or the new one, never half of one. Cached models
live in *entries* (folders) with a ``manifest.json`` of file sizes and SHA-256 digests, written
last: an entry without a manifest, or whose files do not match it, is discarded and recomputed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import torch


__all__ = ["RunDir", "RunDirError", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "write_json", "read_json", "DamagedFile", "save_state", "load_state", "CacheEntry"]

MANIFEST = "manifest.json"


def _file_mode() -> int:
    # mkstemp creates files readable by their owner only; give them the mode an ordinary
    # open() would (0o666 less the umask), so reports and exports can be shared.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
FILE_MODE = _file_mode()


class RunDirError(UserError):
    """A run directory that cannot be used; the message is one line meant for the user."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The one way files are written here: yield a temporary name in ``path``'s folder to
    write the file to, and rename it onto ``path`` when the block ends (atomic: readers see
    the old file or the new one), or remove it when the block raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


class DamagedFile(RunDirError, ValueError):
    """A file ranksearch wrote that no longer reads (truncated, edited, half-copied)."""


def read_json(path: Path) -> Any:
    """The JSON file at ``path``; :class:`DamagedFile`, one line naming it, where it does not
    parse (ranksearch writes atomically, so only something else cuts one short)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFile(f"{path}: damaged, not JSON ({err})") from None


def save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors, atomically (no pickle)."""
    import torch
    from safetensors.torch import save_file

    # Copies: safetensors refuses tensors that share memory, which a module registered
    # under two names gives (its parameters appear under both).
    tensors = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
               for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_state(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors state dict (nothing is unpickled)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CacheEntry:
    """A folder of files computed once and reused, verified by its manifest before each use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    def is_valid(self) -> bool:
        """True when the manifest exists and every file it lists has its size and digest."""
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            return False
        try:
            manifest = read_json(manifest_path)
            for name, meta in manifest["files"].items():
                f = self.path / name
                if not f.is_file() or f.stat().st_size != meta["size"]:
                    return False
                if _digest(f) != meta["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def seal(self) -> None:
        """Write the manifest over every file now in the entry; call after the last write."""
        files = {
            f.name: {"size": f.stat().st_size, "sha256": _digest(f)}
            for f in sorted(self.path.iterdir())
            if f.is_file() and f.name != MANIFEST and not f.name.startswith(".")
        }
        write_json(self.path / MANIFEST, {"files": files})

    @contextlib.contextmanager
    def lock(self, blocking: bool = True) -> Iterator[bool]:
        """Hold an exclusive lock on this entry, so that concurrent workers compute it once:
        the first computes while the others wait, then find it valid. With
        ``blocking=False`` it yields False at once when another process holds the lock."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def prepare(self) -> CacheEntry:
        """Empty the entry for a fresh computation."""
        self.discard()
        self.path.mkdir(parents=True, exist_ok=True)
        return self


class RunDir:
    """The layout of ``runs/NAME/`` (see ``docs/internals.md``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # --- layout -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def journal_path(self) -> Path:
        return self.path / "study.journal"

    @property
    def storage_path(self) -> Path:
        return self.path / "storage.txt"

    @property
    def latency_path(self) -> Path:
        """Every model's latency, timed one at a time after the search (``ranksearch.latency``)."""
        return self.path / "latency.json"

    def cache(self, kind: str, key: str) -> CacheEntry:
        return CacheEntry(self.path / "cache" / kind / key)

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / str(number)

    def baseline_dir(self, method: str, target: float) -> Path:
        return self.path / "baselines" / f"{method}-{target:g}x"

    def baseline_results(self) -> list[dict[str, Any]]:
        """Every finished baseline's metrics, in name order."""
        results = []
        for f in sorted((self.path / "baselines").glob("*/metrics.json")):
            try:
                results.append(read_json(f))
            except (OSError, ValueError):
                continue  # a half-written result cannot exist (atomic writes); skip foreign files
        return results

    # --- checks -------------------------------------------------------------------------
    def create(self) -> RunDir:
        """Create the directory, failing with one line when it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise RunDirError(
                f"{self.path}: cannot write the run directory ({err.strerror})") from None
        return self

    def require_existing(self) -> RunDir:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory")
        if not self.config_path.is_file():
            restore = (" (its study is there: 'ranksearch search SPACE.yaml --run-dir "
                       f"{self.path}' with the study's space writes it again)"
                       if self.journal_path.is_file() or self.storage_path.is_file() else "")
            raise RunDirError(f"{self.path}: not a ranksearch run directory (no config.yaml)"
                              + restore)
        return self

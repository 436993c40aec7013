"""The user's own inputs to the reference: trained weights from a file, the files of their
training loop and metric (whose content keys the caches), and errors raised by that code,
each one line."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch

from . import config as cfg
from .errors import UserError
from .imports import split_spec
from .runs import load_state
from .train import Diverged

__all__ = ["UserCodeFailed", "user_weights", "user_code_errors", "file_digest", "source_file"]


class UserCodeFailed(UserError):
    """The user's training loop or metric raised while the reference was trained or
    measured; the message is one line naming that code."""


def user_weights(path: str, device: torch.device) -> dict[str, torch.Tensor]:
    """A user's trained dense weights, read without unpickling arbitrary objects."""
    file = Path(path)
    if not file.is_file():
        raise cfg.ConfigError(f"model.weights: no such file {path}")
    if file.suffix == ".safetensors":
        return load_state(file, device)
    state = torch.load(file, map_location=device, weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


@contextlib.contextmanager
def user_code_errors(config: cfg.StudyConfig, doing: str) -> Iterator[None]:
    """An error raised while the user's training loop or metric runs on the reference is one
    line naming that code (in a trial, the trial fails with it and the search goes on)."""
    try:
        yield
    except (UserError, Diverged):
        raise
    except Exception as err:
        user = [f"{what} {spec!r}" for what, spec in (("training loop", config.train_loop),
                                                      ("metric", config.metric.evaluate)) if spec]
        if not user:
            raise  # ranksearch's own code: the traceback is the report
        raise UserCodeFailed(f"reference: {doing} with the {' and the '.join(user)} failed: "
                             f"{type(err).__name__}: {err}") from None


def file_digest(path: str | Path | None) -> str | None:
    """The content of a user's file (weights, code), so that a new one at the same path
    does not pass for the old; None for no file.

    Read once per process while the file's size and modification time stay the same: every
    trial keys its caches by it, and a weights file may be large.
    """
    if not path or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return _content_digest(Path(path).resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _content_digest(path: Path, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_file(spec: str | None) -> Path | None:
    """The file a ``module:function`` or ``file.py:function`` is defined in (its content
    keys the caches; modules it imports in turn are not followed)."""
    if not spec:
        return None
    target, _ = split_spec(spec)
    if isinstance(target, Path):
        return target
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):  # reported when the code is resolved
        return None
    return Path(found.origin) if found is not None and found.origin else None

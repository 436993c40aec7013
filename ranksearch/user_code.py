"""The user's own inputs to the reference: trained weights from a file, and errors raised by
their training loop or metric, each one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from . import config as cfg
from .errors import UserError
from .runs import load_state
from .train import Diverged

__all__ = ["UserCodeFailed", "user_weights", "user_code_errors"]


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

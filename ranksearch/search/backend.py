"""What a search backend is, and the helpers both backends share.

A backend runs the trials of a study that already exists in a storage (the application layer,
:mod:`ranksearch.app`, creates it and caches the reference first) until the study holds its
target of complete trials. Both backends run the same trial function
(:class:`~ranksearch.search.objective.Objective`) on the same Optuna study, so what they leave
behind reads the same.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import StudyConfig
    from ..runs import RunDir

__all__ = ["Backend", "TrialsKeepFailing", "MAX_FAILURES_IN_A_ROW", "log", "describe_trial"]

#: After this many failed trials in a row a backend stops: whatever fails them (a full disk,
#: a broken data factory) would fail the rest too.
MAX_FAILURES_IN_A_ROW = 10


class TrialsKeepFailing(UserError):
    """The last :data:`MAX_FAILURES_IN_A_ROW` trials failed, so no more are tried."""

    def __init__(self, failures: int, last_reason: str | None, run_path: object) -> None:
        super().__init__(f"the last {failures} trials failed, so no more are tried (last "
                         f"reason: {last_reason}); see 'ranksearch status {run_path}'")


class Backend(ABC):
    """Runs a study's trials somewhere: worker processes on this host, or a Ray cluster."""

    name: ClassVar[str]
    """The ``--backend`` value that selects it."""

    def check(self) -> None:  # noqa: B027 (a hook: most backends have nothing to check)
        """Fail in seconds, with a one-line :class:`~ranksearch.errors.UserError`, when the
        backend's options cannot work here; called before anything is trained."""

    @abstractmethod
    def run(self, config: StudyConfig, run: RunDir, storage_url: str, *,
            progress: bool = True) -> None:
        """Run trials of the study ``config.name`` in ``storage_url`` until it holds its
        target of complete trials (the study's ``n_trials`` user attribute). Raises
        :class:`KeyboardInterrupt` when interrupted: the same call resumes."""


def log(message: str) -> None:
    """One line of progress on stderr (the backends' per-trial lines)."""
    print(message, file=sys.stderr, flush=True)


def describe_trial(number: int, metrics: Mapping[str, Any], metric: str = "accuracy") -> str:
    """The line logged for a complete trial; ``metric`` names its quality (the study's
    ``metric.name``)."""
    return (f"trial {number}: {metric} {metrics['accuracy']:.4f}  "
            f"FLOPs {metrics['flops'] / 1e6:.2f}M ({metrics['flops_reduction']:.2f}x)  "
            f"{metrics['wall_time_s']:.1f}s"
            + ("  [reused SVD training]" if metrics.get("svd_cached") else ""))

"""Ctrl-C and SIGTERM held over a few lines of code that must not be cut in two.

A worker's trial exists in storage from inside ``study.ask()`` on, but the worker holds it,
and can give it back when interrupted, only once ``ask`` has returned. :func:`interrupts_held`
covers that gap: a signal that arrives inside it reaches its handler as the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["interrupts_held"]

#: The signals held: Ctrl-C, and SIGTERM (a scheduler's stop, a dying launcher's death signal),
#: which the command line turns into Ctrl-C.
SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: A second signal this long after the one held is delivered at once: the user insists, and
#: the block may be waiting on a storage that does not answer. One sooner is the same stop
#: sent twice (a scheduler signals every process of a job, and the launcher passes its own
#: on to its workers), and is held with the first.
INSIST_S = 1.0

Handler = Callable[[int, FrameType | None], Any] | int


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold :data:`SIGNALS` until the block ends, then deliver the first one that arrived to
    the handler it would have reached (also where the block raised).

    Outside the main thread, where no signal handler runs, nothing is held. A signal whose
    handler was installed outside Python (``signal.getsignal`` gives None) is left alone:
    Python could not put that handler back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, float]] = []  # signal, time of arrival
    previous: dict[int, Handler] = {sig: handler for sig in SIGNALS
                                    if (handler := signal.getsignal(sig)) is not None}

    def hold(signum: int, frame: FrameType | None) -> None:
        if held and time.monotonic() - held[0][1] >= INSIST_S:
            held.clear()  # delivered now, not again as the block ends
            _deliver(signum, previous[signum], frame)
            return
        held.append((signum, time.monotonic()))

    try:
        for sig in previous:
            signal.signal(sig, hold)
        yield
    finally:
        _restore(previous)
        if held:
            signal.raise_signal(held[0][0])  # handled before it returns, in this thread


def _deliver(signum: int, handler: Handler, frame: FrameType | None) -> None:
    """Do what ``signum`` would have done under ``handler``."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _restore(handlers: dict[int, Handler]) -> None:
    """Put every one of ``handlers`` back. ``signal.signal`` first runs the handlers of the
    signals that have arrived, and one already put back may raise (KeyboardInterrupt): the
    others are put back all the same, and the first such error is raised after them."""
    error: BaseException | None = None
    for sig, handler in handlers.items():
        for _attempt in range(3):  # a handler that ran has cleared its signal: one retry does
            try:
                signal.signal(sig, handler)
                break
            except BaseException as err:  # noqa: BLE001 - raised once all are back
                error = error or err
    if error is not None:
        raise error

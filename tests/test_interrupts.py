"""Ctrl-C and SIGTERM held while a worker asks for a trial (ranksearch.search.interrupts).

The signals are sent with ``os.kill`` to this process, whose handlers run before ``os.kill``
returns; the worker that uses the hold is tested in test_reliability.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from ranksearch.search import interrupts


@pytest.fixture(autouse=True)
def sigint_interrupts():
    """SIGINT raising KeyboardInterrupt, Python's default, also where this test run inherited
    it ignored (a background job of a shell without job control, ``nohup``)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def sigterm_interrupts():
    """SIGTERM raising KeyboardInterrupt, as the command line sets it (pytest leaves the
    default, which would end the test run)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_is_held_until_the_block_ends(sigterm_interrupts):
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.interrupts_held():
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("past the signal")
    assert reached == ["past the signal"]
    assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_same_stop_sent_twice_at_once_is_held_as_one(sigterm_interrupts):
    """A scheduler signals every process of a job, and the launcher passes its own stop on to
    its workers: SIGTERM and SIGINT a moment apart are one stop, held to the block's end."""
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.interrupts_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("past both")
    assert reached == ["past both"]


def test_a_second_interrupt_a_while_later_stops_at_once():
    """What holds Ctrl-C while a trial is asked may wait on a storage that does not answer:
    pressing it again, once the first has had its time, stops there."""
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("held")
        time.sleep(interrupts.INSIST_S + 0.1)
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("past the second")
    assert reached == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_held_while_the_block_raises_is_still_delivered():
    """An error inside the block (a storage that failed) does not swallow the Ctrl-C
    pressed before it: the user gets the interruption they asked for."""
    with pytest.raises(KeyboardInterrupt) as info, interrupts.interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("database is locked")
    assert isinstance(info.value.__context__, RuntimeError)


def test_every_handler_is_put_back_when_one_raises_on_the_way(monkeypatch,
                                                               sigterm_interrupts):
    """``signal.signal`` first runs the handlers of signals that arrived: a Ctrl-C arriving
    once SIGINT's handler is back raises from the call that puts SIGTERM's back, which must
    happen all the same."""
    set_signal, calls = signal.signal, []

    def signal_interrupted_once(sig, handler):
        calls.append(sig)
        if len(calls) == 4:  # install SIGINT, SIGTERM; restore SIGINT; then SIGTERM:
            raise KeyboardInterrupt  # the Ctrl-C that came after SIGINT's handler was back
        return set_signal(sig, handler)

    monkeypatch.setattr(signal, "signal", signal_interrupted_once)
    with pytest.raises(KeyboardInterrupt), interrupts.interrupts_held():
        pass
    assert calls == [signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM,
                     signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler


def test_a_signal_handled_outside_python_is_left_alone(monkeypatch):
    """A handler Python did not install (``getsignal`` gives None) could not be put back:
    only the signals Python handles are held, and their handlers restored."""
    getsignal, set_signal, installed = signal.getsignal, signal.signal, []
    monkeypatch.setattr(signal, "getsignal",
                        lambda sig: None if sig == signal.SIGTERM else getsignal(sig))
    monkeypatch.setattr(signal, "signal",
                        lambda sig, handler: installed.append(sig) or set_signal(sig, handler))
    before = getsignal(signal.SIGINT)
    with interrupts.interrupts_held():
        assert getsignal(signal.SIGINT) is not before
    assert installed == [signal.SIGINT, signal.SIGINT]
    assert getsignal(signal.SIGINT) is before

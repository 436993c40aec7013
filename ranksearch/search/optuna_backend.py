"""The Optuna backend: worker processes that pull trials from one shared study.

``--trials N`` means N complete trials in the study, exactly, however many workers run and
however often they are killed: each worker asks for a trial only while complete plus running
trials fall short of N, under a lock shared by the workers of one host; a trial asked past N
by a worker on another host (a race the lock cannot see) is given back, not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .. import config as cfg
from ..errors import EXIT_USER_ERROR, UserError
from ..runs import RunDir
from .backend import MAX_FAILURES_IN_A_ROW, Backend, TrialsKeepFailing, describe_trial, log
from .interrupts import interrupts_held
from .objective import Objective
from .storage import STORAGE_ENV, heartbeat_folder, open_storage
from .study import (
    TARGET_ATTR,
    Heartbeat,
    counts,
    fail_stale_trials,
    load_study,
    make_sampler,
    requeue,
)

__all__ = ["OptunaBackend", "run_worker", "launch_workers"]

POLL_S = 2.0
MAX_RESTARTS = 5


class OptunaBackend(Backend):
    """``workers`` worker processes on this host, each pulling trials from the study."""

    name = "optuna"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def run(self, config: cfg.StudyConfig, run: RunDir, storage_url: str, *,
            progress: bool = True) -> None:
        launch_workers(config, run, storage_url, self.workers, progress=progress)


@contextlib.contextmanager
def _ask_lock(run: RunDir) -> Iterator[None]:
    run.path.mkdir(parents=True, exist_ok=True)
    with (run.path / ".ask.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _next_trial(study: optuna.Study, beats: Path | None) -> optuna.Trial | None | bool:
    """Ask for a trial if the study still needs one: the trial, None (wait: others' running
    trials may finish it), or False (the study is done). Called under the host's ask lock."""
    target = study.user_attrs.get(TARGET_ATTR, 0)
    trials = study.get_trials(deepcopy=False)
    if fail_stale_trials(study, trials, folder=beats):
        trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    if c["COMPLETE"] >= target:
        return False
    if c["COMPLETE"] + c["RUNNING"] >= target:
        return None
    trial = study.ask()
    # Another host may have asked at the same moment: the trials numbered before ours win.
    ahead = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                     TrialState.RUNNING))
                if t.number < trial.number)
    if ahead >= target:
        _give_back(study, trial, "surplus: the study already had its trials")
        return None
    return trial


def _give_back(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Fail a trial that will not run and requeue its parameters, so no point is lost."""
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)
    if trial.params:  # where it came from goes with it: a promoted candidate stays one
        requeue(study, trial)


def run_worker(
    config: cfg.StudyConfig, run: RunDir, storage_url: str, *, worker: int = 0,
    progress: bool = True,
) -> int:
    """Run trials until the study holds its target of complete trials. Returns how many this
    worker completed."""
    study = load_study(open_storage(storage_url), config.name)
    # The seed depends on the trials already there too, or a resumed worker would replay the
    # same startup points as its previous run.
    study.sampler = make_sampler(config.sampler, worker,
                                 trials_before=len(study.get_trials(deepcopy=False)))
    objective = Objective(config, run, progress=progress)
    beats = heartbeat_folder(storage_url)
    done = failures_in_a_row = 0
    while True:
        trial = None
        try:
            # The wait for the lock stays interruptible; from the first storage read on, a
            # trial asked reaches the code below that gives it back.
            with _ask_lock(run), interrupts_held():
                trial = _next_trial(study, beats)
            if trial is False:
                return done
            if trial is None:
                time.sleep(POLL_S)
                continue
            # Told inside the heartbeat: until then the trial must look alive to the others.
            with Heartbeat(study, trial._trial_id, beats):
                outcome = objective(trial)
                study.tell(trial, outcome.values,
                           state=TrialState.FAIL if outcome.values is None else None)
        except KeyboardInterrupt:
            # Unless it was interrupted after being told (its result is recorded then).
            if isinstance(trial, optuna.Trial):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    _give_back(study, trial, "interrupted; parameters requeued")
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            # This process stopped (suspended, paused) past the heartbeat grace period: the
            # others failed its trial and requeued the parameters. The result is theirs to redo.
            log(f"trial {trial.number}: failed by another worker while this one was stopped; "
                "its result is dropped")
            continue
        if outcome.values is None:
            failures_in_a_row += 1
            log(f"trial {trial.number} failed: {outcome.fail_reason}")
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise TrialsKeepFailing(failures_in_a_row, outcome.fail_reason, run.path)
            continue
        failures_in_a_row = 0
        done += 1
        log(describe_trial(trial.number, outcome.metrics, config.metric.name))


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux for SIGTERM when the launcher dies, even by
    SIGKILL, so that no orphaned worker outlives the command that started it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def launch_workers(
    config: cfg.StudyConfig, run: RunDir, storage_url: str, workers: int, *, progress: bool
) -> None:
    """Run ``workers`` workers on this host.

    One worker runs in this process. Several run as supervised child processes, so that one
    that dies (a crash in native code, the out-of-memory killer) is restarted while the
    others go on; its running trial is failed and requeued by the heartbeat check. Children
    get the storage URL through the environment, never the command line, an equal share of
    the CPU threads, and this process's script folder on their import path; each also takes
    its share of the baselines once the trials are done.
    Ctrl-C or an error here stops every child.
    """
    if workers == 1:
        run_worker(config, run, storage_url, worker=0, progress=progress)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    # The children import the user's functions by the names this process gave them: a module
    # beside the script that started the search (sys.path[0] here) must be importable there.
    paths = [p for p in (sys.path[0], os.environ.get("PYTHONPATH")) if p]
    env = {**os.environ, STORAGE_ENV: storage_url, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(paths)}

    def start(index: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ranksearch", "worker", str(run.path),
             "--worker-index", str(index), "--quiet"],
            env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )

    children = {i: start(i) for i in range(workers)}
    restarts = 0
    try:
        while children:
            for index, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                del children[index]
                if code == EXIT_USER_ERROR:  # it printed why; a restart would stop the same way
                    raise UserError(f"worker {index} stopped on the error above")
                if code != 0 and restarts < MAX_RESTARTS:
                    restarts += 1
                    log(f"worker {index} exited with code {code}; restarting it "
                        f"({restarts} of at most {MAX_RESTARTS} restarts)")
                    children[index] = start(index)
                elif code != 0:
                    raise UserError(f"worker {index} exited with code {code} after "
                                    f"{MAX_RESTARTS} restarts; see the messages above")
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT)
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()

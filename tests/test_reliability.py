"""Crash safety: kills at any moment, failing trials, no stray processes, atomic files.

The long soak (five kill -9 in a row at random moments) is benchmarks/reliability/kill_soak.py;
this file runs a shortened version of it on every CI run.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from safetensors.torch import load_file

from ranksearch import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
GRACE = "4"


def _env() -> dict[str, str]:
    return {**os.environ, "RANKSEARCH_HEARTBEAT_GRACE": GRACE}


def _study(run: Path, name: str = "tiny") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _search(space: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ranksearch", "search", str(space), "--run-dir", str(run),
         "--quiet", *extra], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)


def _workers_of(run: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ranksearch worker {run}"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _wait_gone(run: Path, timeout: float = 30) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and _workers_of(run):
        time.sleep(0.2)
    return _workers_of(run)


def _check_run_dir(run: Path) -> None:
    """No truncated file: every JSON parses, every safetensors loads, no temporary left."""
    for f in run.rglob("*"):
        if not f.is_file():
            continue
        assert not f.name.endswith(".tmp"), f
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".safetensors":
            load_file(str(f))


def _assert_exact(run: Path, target: int) -> optuna.Study:
    study = _study(run)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == target
    numbers = [t.number for t in complete]
    assert len(set(numbers)) == len(numbers)
    return study


@pytest.mark.slow
def test_kill_9_then_rerun(tiny_space, tmp_path):
    """kill -9 the launcher of 2 workers twice mid-study; rerunning finishes it exactly."""
    space = tiny_space(trials=6)
    run = tmp_path / "run"
    rng = random.Random(0)
    for _ in range(2):
        proc = _search(space, run, "--workers", "2")
        # Kill once trials are running (the reference is trained first).
        deadline = time.time() + 300
        while time.time() < deadline and not (run / "trials").is_dir():
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_gone(run) == [], "a worker outlived its killed launcher"
    proc = _search(space, run, "--workers", "2")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    study = _assert_exact(run, 6)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    # Trials cut off by the kills are failed with a reason and their parameters requeued.
    for t in failed:
        assert "fail_reason" in t.user_attrs
    _check_run_dir(run)


@pytest.mark.slow
def test_ctrl_c_leaves_no_process_and_gives_trials_back(tiny_space, tmp_path):
    space = tiny_space(trials=20)
    run = tmp_path / "run"
    proc = _search(space, run, "--workers", "2")
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "trials").is_dir():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"exit {proc.returncode}; stderr: {err[-2000:]}"
    assert "rerun the same command" in err
    assert _wait_gone(run) == []
    running = _study(run).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert running == []
    _check_run_dir(run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_as_a_trial_is_asked_gives_it_back(tiny_space, tmp_path, monkeypatch,
                                                         capsys, signum):
    """Ctrl-C or SIGTERM landing inside ``study.ask()``, once the trial exists in storage
    but before the worker holds it, still fails and requeues that trial."""
    run = tmp_path / "run"
    ask = optuna.Study.ask
    pressed = []

    def ask_then_interrupt(self, *args, **kwargs):
        trial = ask(self, *args, **kwargs)
        if trial.number == 1 and not pressed:
            pressed.append(trial.number)
            os.kill(os.getpid(), signum)  # before ask has returned
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["search", str(tiny_space(trials=3)), "--run-dir", str(run), "--quiet"])
    assert exit_info.value.code == 130
    assert "rerun the same command" in capsys.readouterr().err
    assert pressed == [1]
    study = _study(run)
    assert [t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            ] == [0]
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [(t.number, t.user_attrs["fail_reason"]) for t in failed] == [
        (1, "interrupted; parameters requeued")]
    assert study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) == []


@pytest.mark.slow
def test_ctrl_c_stops_a_worker_waiting_for_the_ask_lock(tiny_space, tmp_path):
    """A worker waits for the host's ask lock (another worker holds it: a stopped process);
    Ctrl-C stops it there, at once, with nothing asked."""
    run = tmp_path / "run"
    run.mkdir()
    with (run / ".ask.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = _search(tiny_space(trials=2), run)
        try:
            waiting = _wait_for_lock(proc.pid)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()  # a search that ignored Ctrl-C is not left running
    assert waiting, "the search never waited for the lock"
    assert proc.returncode == 130, err[-2000:]
    assert _study(run).get_trials() == []


def _wait_for_lock(pid: int, timeout: float = 300) -> bool:
    """Whether process ``pid`` came to wait for a file lock (a ``->`` line of
    ``/proc/locks``) within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "->" and fields[5] == str(pid):
                return True
        time.sleep(0.1)
    return False


def test_failing_trials_are_recorded_and_the_search_goes_on(tiny_space, tmp_path, capsys):
    # Half the space diverges (an absurd L1 weight makes the loss infinite).
    space = tiny_space(trials=3, sampler={"name": "random", "seed": 1},
                       space={"decay": "l1", "lambda_s": [1e-3, 1e38],
                              "energy": [0.05, 0.2]})
    run = tmp_path / "run"
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    study = _assert_exact(run, 3)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed, "the random sampler drew no diverging point; change the seed"
    assert all("diverged" in t.user_attrs["fail_reason"] for t in failed)
    assert "failed: diverged" in capsys.readouterr().err
    cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    trials = pd.read_csv(tmp_path / "report" / "trials.csv")
    front = pd.read_csv(tmp_path / "report" / "pareto.csv")
    listed = trials[(trials["kind"] == "svd") & (trials["state"] == "FAIL")]
    assert sorted(listed["number"]) == sorted(t.number for t in failed)
    assert set(front["state"]) == {"COMPLETE"}


def test_journal_heartbeats_are_files_and_stale_trials_are_requeued(tmp_path):
    """On a journal the beats are file times, not journal lines; a trial whose beat is older
    than the grace period is failed with a reason and its parameters requeued."""
    from ranksearch.search.storage import heartbeat_folder, open_storage
    from ranksearch.search.study import GRACE_S, Heartbeat, fail_stale_trials

    url = str(tmp_path / "study.journal")
    study = optuna.create_study(storage=open_storage(url), directions=["maximize"])
    folder = heartbeat_folder(url)
    assert folder == tmp_path / "heartbeats" and heartbeat_folder("sqlite:///x.db") is None
    alive, dead, elsewhere, gone_here = (study.ask() for _ in range(4))
    for trial in (alive, dead, elsewhere, gone_here):
        trial.suggest_float("x", 0, 1)
        with Heartbeat(study, trial._trial_id, folder):
            pass
    old = time.time() - GRACE_S - 1
    os.utime(folder / str(dead._trial_id), (old, old))
    # A fresh beat from another host: its lock means nothing here, so it is alive.
    (folder / str(elsewhere._trial_id)).write_text("another-host")

    with Heartbeat(study, alive._trial_id, folder):  # running now, its lock held
        # gone_here beat a moment ago but its lock on this host is free: its worker died.
        assert fail_stale_trials(study, study.get_trials(), folder=folder) == 2
    states = {t.number: t for t in study.get_trials()}
    for trial in (alive, elsewhere):
        assert states[trial.number].state == optuna.trial.TrialState.RUNNING
    for trial in (dead, gone_here):
        assert states[trial.number].state == optuna.trial.TrialState.FAIL
        assert "no heartbeat" in states[trial.number].user_attrs["fail_reason"]
    requeued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in requeued] == [dead.params, gone_here.params]
    assert b"ranksearch:heartbeat" not in (tmp_path / "study.journal").read_bytes()


def test_a_journal_record_cut_short_is_dropped_and_the_search_goes_on(tiny_space, tmp_path,
                                                                      monkeypatch):
    """A write cut short (a full disk, a lost machine) leaves a last line without its newline;
    the next search would append to it and make the study unreadable for good."""
    from ranksearch import cli
    from ranksearch.app import status_text

    # The cut record may be a trial's end: that trial then looks running until its heartbeat
    # is this old.
    monkeypatch.setattr("ranksearch.search.study.GRACE_S", 1.0)

    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=2)), "--run-dir", str(run), "--quiet"])
    journal = run / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    with pytest.warns(UserWarning, match="dropped its last record"):
        cli.main(["search", str(tiny_space(trials=3)), "--run-dir", str(run), "--quiet"])
    assert journal.read_bytes().endswith(b"\n")
    assert "3 complete of 3" in status_text(run)


def test_trials_that_keep_failing_stop_the_search_in_one_line(tiny_space, tmp_path,
                                                               monkeypatch, capsys):
    """Whatever fails every trial (a full disk, a broken setup) would fail the rest too: the
    worker stops after MAX_FAILURES_IN_A_ROW instead of asking for trials forever."""
    from ranksearch import cli
    from ranksearch.search.backend import MAX_FAILURES_IN_A_ROW

    def no_space_left(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ranksearch.search.objective.run_trial", no_space_left)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["search", str(tiny_space(trials=50)), "--run-dir", str(tmp_path / "run"),
                  "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1].startswith(f"ranksearch: error: the last {MAX_FAILURES_IN_A_ROW} trials "
                              "failed, so no more are tried")
    assert "No space left on device" in err[-1]


def test_a_worker_whose_trial_was_failed_while_it_was_stopped_goes_on(tiny_space, tmp_path,
                                                                      monkeypatch, capsys):
    """A worker suspended past the heartbeat grace period finds its trial failed (and its
    parameters requeued) by the others: it drops that result and runs the next trial."""
    from ranksearch import cli, pipeline
    from ranksearch.search.storage import open_storage
    from ranksearch.search.study import load_study

    run = tmp_path / "run"
    calls = []

    def failed_meanwhile(config, params, run_dir, trial_dir, **kwargs):
        calls.append(trial_dir.name)
        if len(calls) == 1:  # what the launcher does to a trial whose heartbeat stopped
            study = load_study(open_storage(str(run / "study.journal")))
            study.tell(int(trial_dir.name), state=optuna.trial.TrialState.FAIL)
        return pipeline.run_trial(config, params, run_dir, trial_dir, **kwargs)

    monkeypatch.setattr("ranksearch.search.objective.run_trial", failed_meanwhile)
    cli.main(["search", str(tiny_space(trials=2)), "--run-dir", str(run), "--quiet"])
    assert "failed by another worker while this one was stopped" in capsys.readouterr().err
    study = load_study(open_storage(str(run / "study.journal")))
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 2 and states[0] == "FAIL"


@pytest.mark.slow
def test_a_rerun_after_kill_9_requeues_at_once_on_the_same_host(tiny_space, tmp_path):
    """A worker killed on this host leaves its trial's heartbeat lock free: the rerun fails
    and requeues that trial at once instead of waiting out the grace period, and runs it."""
    slow = {"svd": {"max_batches": 12, "epochs": 3}}  # a trial long enough to be killed in
    space = tiny_space(trials=2, schedule=slow)
    run = tmp_path / "run"
    env = {**os.environ, "RANKSEARCH_HEARTBEAT_GRACE": "600"}
    command = [sys.executable, "-m", "ranksearch", "search", str(space), "--run-dir", str(run),
               "--quiet"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run / "heartbeats").glob("*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from ranksearch.app import status_text

    assert "1 running (1 of them with their worker gone" in status_text(run)
    start = time.time()
    subprocess.run(command, env=env, check=True, timeout=300, capture_output=True)
    assert time.time() - start < 120  # not the 600 s grace
    study = _assert_exact(run, 2)
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and "no heartbeat" in killed[0].user_attrs["fail_reason"]
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert [t.state for t in retried] == [optuna.trial.TrialState.COMPLETE]


def test_a_suggestion_that_raises_fails_its_trial_and_the_search_goes_on(tiny_space, tmp_path,
                                                                         monkeypatch):
    """The space is checked when it loads; should a drawn value still be refused, that trial
    fails with the reason instead of the whole search ending in a traceback."""
    from ranksearch.search import objective
    from ranksearch.search.study import open_run_study

    def suggest(trial, *args):
        if trial.number == 0:
            raise ValueError("a value no trial may take")
        return real_suggest(trial, *args)

    real_suggest = objective.suggest
    monkeypatch.setattr(objective, "suggest", suggest)
    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=2)), "--run-dir", str(run), "--quiet"])
    trials = open_run_study(run)[2].trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "a value no trial may take" in trials[0].user_attrs["fail_reason"]


def test_a_promoted_trial_given_back_on_ctrl_c_stays_promoted():
    """Ctrl-C (or a surplus trial) requeues the parameters with where they came from, as a
    kill -9 does: a promoted candidate's rerun must still replace its low-fidelity point."""
    from ranksearch.search.optuna_backend import _give_back

    study = optuna.create_study()
    origin = {"reuses_training_of": 0, "promoted_from": 0, "candidate": "86812be9",
              "proxy_accuracy": 0.59, "proxy_flops": 3468544}
    study.enqueue_trial({"x": 0.5}, user_attrs=origin)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    _give_back(study, trial, "interrupted; parameters requeued")
    given_back, queued = study.get_trials(deepcopy=False)
    assert given_back.state == optuna.trial.TrialState.FAIL
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.user_attrs == {**origin, "retry_of": 0}
    assert queued.system_attrs["fixed_params"] == {"x": 0.5}


def test_status_says_what_became_of_a_failed_trials_rerun(tiny_space, tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from ranksearch.app import status_text
    from ranksearch.search.study import open_run_study

    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=1)), "--run-dir", str(run), "--quiet"])
    study = open_run_study(run)[2]
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5},
                                 distributions={"x": FloatDistribution(0, 1)},
                                 user_attrs={"fail_reason": "interrupted; parameters requeued"}))
    study.enqueue_trial({"x": 0.5}, user_attrs={"retry_of": 1})
    assert ("failed trial 1: interrupted; parameters requeued (rerun as trial 2: queued)"
            in status_text(run))

"""The Ray Tune backend end to end on the digits quickstart space, trimmed to seconds per trial.

Every test marks the Ray processes it causes (an environment variable that they inherit) and
checks that none is left once it ends; a leftover is killed by its id and fails the test.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import cloudpickle

from ranksearch import cli
from ranksearch import config as cfg
from ranksearch.search import ray_backend
from ranksearch.search.study import create_study, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

pytestmark = pytest.mark.slow  # Ray: a local cluster per test

QUICKSTART = Path(__file__).parent.parent / "search_spaces" / "digits_quickstart.yaml"
MARK = "RANKSEARCH_TEST_RAY_MARK"


def _space(tmp_path: Path, trials: int = 4) -> Path:
    """The quickstart space with one-epoch, few-batch schedules and no baselines."""
    space = yaml.safe_load(QUICKSTART.read_text())
    for phase, batches in (("reference", 4), ("svd", 2), ("finetune", 2)):
        space["schedule"][phase].update(epochs=1, max_batches=batches)
    space["trials"] = trials
    space.pop("baselines")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _study(run: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(run / "study.journal")))
    return optuna.load_study(study_name="quickstart", storage=storage)


def _complete(study: optuna.Study) -> list[int]:
    return sorted(t.number for t in study.trials if t.state == TrialState.COMPLETE)


def _states(study: optuna.Study) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


# --- processes ---------------------------------------------------------------------------
def _marked(mark: str) -> dict[int, str]:
    """Processes (pid: command line) whose environment carries ``mark``."""
    found = {}
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ") \
                    .decode(errors="replace")[:80]
        except OSError:
            continue  # gone, or not ours to read
    return found


def _wait_gone(mark: str, timeout: float, only: str = "") -> dict[int, str]:
    """Wait until no marked process (whose command line contains ``only``) is left; return
    those still there at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: cmd for pid, cmd in _marked(mark).items() if only in cmd}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _kill(pids: dict[int, str]) -> None:
    if not pids:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@pytest.fixture
def ray_mark(monkeypatch) -> Iterator[str]:
    """Mark every process started from here on; after the test, none may be left."""
    mark = secrets.token_hex(8)
    monkeypatch.setenv(MARK, mark)
    yield mark
    left = _wait_gone(mark, timeout=20)
    _kill(left)
    assert not left, f"Ray processes left behind: {left}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tests -------------------------------------------------------------------------------
def test_four_trial_study_on_a_local_cluster(tmp_path, ray_mark):
    run = tmp_path / "run"
    cli.main(["search", str(_space(tmp_path)), "--backend", "ray", "--run-dir", str(run),
              "--quiet"])
    study = _study(run)
    assert _states(study) == {"COMPLETE": 4}
    assert study.user_attrs["n_trials"] == 4
    for t in study.trials:
        accuracy, flops = t.values
        metrics = t.user_attrs["metrics"]
        assert 0 <= accuracy <= 1 and flops > 0
        assert metrics["accuracy"] == accuracy and metrics["flops"] == flops
        assert {"ranks", "framework_time_s", "train_time_s", "wall_time_s"} <= set(metrics)
        assert {"scheme", "decay"} <= set(t.params)
        assert (run / "trials" / str(t.number) / "model.safetensors").is_file()
        assert (run / "ray" / "tune" / f"trial-{t.number}").is_dir()
    # energy_trials_per_model: 2 — every second trial reuses an SVD-trained model.
    assert sum(t.user_attrs["metrics"]["svd_cached"] for t in study.trials) == 2
    # The workers loaded the reference that run_search cached: one entry, no retraining.
    entries = [p for p in (run / "cache" / "reference").iterdir() if p.is_dir()]
    assert len(entries) == 1


def test_joins_a_running_cluster(tmp_path, ray_mark, monkeypatch):
    # A cluster with a token of its own. The driver runs as a process of its own, as a user's
    # does: Ray reads the authentication settings once per process, at import, and must
    # be told (RAY_AUTH_MODE) to present the token to an explicit address.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = _free_port()
    subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
        check=True, timeout=120, capture_output=True,
    )
    run = tmp_path / "run"
    try:
        driver = subprocess.run(
            [sys.executable, "-m", "ranksearch", "search", str(_space(tmp_path, trials=2)),
             "--backend", "ray", "--run-dir", str(run), "--address", f"127.0.0.1:{port}",
             "--quiet"],
            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
        )
        assert driver.returncode == 0, driver.stderr
        study = _study(run)
        assert _complete(study) == [0, 1]
        assert {"FAIL", "RUNNING"}.isdisjoint(_states(study))
        # The driver disconnected, and the trial workers it had on the cluster are gone.
        assert not _wait_gone(ray_mark, timeout=20, only="ImplicitFunc")
    finally:
        _kill(_marked(ray_mark))  # the cluster: every process of it carries the mark


def test_interrupted_search_resumes_and_grows(tmp_path, ray_mark, monkeypatch, capsys):
    run = tmp_path / "run"
    command = ["search", str(_space(tmp_path, trials=2)), "--backend", "ray", "--run-dir",
               str(run), "--quiet"]
    suggest = ray_backend._StudySearch.suggest
    pressed = []

    def suggest_then_interrupt(self, trial_id):
        point = suggest(self, trial_id)
        if isinstance(point, dict) and point[ray_backend.NUMBER_KEY] == 1 and not pressed:
            pressed.append(trial_id)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the second trial starts
        return point

    monkeypatch.setattr(ray_backend._StudySearch, "suggest", suggest_then_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command)
    assert exit_info.value.code == 130
    assert "interrupted; rerun the same command" in capsys.readouterr().err
    study = _study(run)
    assert _complete(study) == [0]
    assert [t.number for t in study.trials if t.state == TrialState.RUNNING] == [1]
    files = sorted((run / "trials" / "0").iterdir())
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert not _wait_gone(ray_mark, timeout=20)

    # The same command, asking one trial more: Ray restores the interrupted experiment, whose
    # trial 1 finishes on its own Optuna trial; then exactly one new trial runs.
    monkeypatch.setattr(ray_backend._StudySearch, "suggest", suggest)
    cli.main([*command, "--trials", "3"])
    assert "resuming the interrupted Ray Tune experiment" in capsys.readouterr().err
    study = _study(run)
    assert _complete(study) == [0, 1, 2]
    assert {"FAIL", "RUNNING"}.isdisjoint(_states(study))
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert sorted(p.name for p in (run / "trials").iterdir()) == ["0", "1", "2"]


def test_a_lowered_target_on_resume_trains_nothing_more(tmp_path, ray_mark, monkeypatch,
                                                        capsys):
    run = tmp_path / "run"
    command = ["search", str(_space(tmp_path, trials=2)), "--backend", "ray", "--run-dir",
               str(run), "--quiet"]
    suggest = ray_backend._StudySearch.suggest

    def suggest_then_interrupt(self, trial_id):
        point = suggest(self, trial_id)
        if isinstance(point, dict) and point[ray_backend.NUMBER_KEY] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return point

    monkeypatch.setattr(ray_backend._StudySearch, "suggest", suggest_then_interrupt)
    with pytest.raises(SystemExit):
        cli.main(command)
    monkeypatch.setattr(ray_backend._StudySearch, "suggest", suggest)
    cli.main([*command, "--trials", "1"])
    assert "resuming" not in capsys.readouterr().err
    study = _study(run)
    assert _complete(study) == [0]
    assert "RUNNING" not in _states(study)  # the interrupted trial: failed and requeued


def _searcher(tmp_path: Path, target: int) -> tuple[ray_backend._StudySearch, optuna.Study]:
    config = cfg.load(_space(tmp_path))
    storage = optuna.storages.InMemoryStorage()
    study = create_study(config, storage)
    study.set_user_attr("n_trials", target)
    searcher = ray_backend._StudySearch(
        space=ray_backend._Space(config.space, {}), metric=["accuracy", "flops"],
        mode=["max", "min"], sampler=make_sampler(config.sampler),
        study_name=config.name, storage=storage,
    )
    return searcher, study


def test_the_searcher_counts_trials_other_processes_run(tmp_path):
    """A worker joined the study and runs a trial: with a target of 2, Ray starts one."""
    searcher, study = _searcher(tmp_path, target=2)
    study.ask()  # the other process's trial, RUNNING
    assert isinstance(searcher.suggest("ray-1"), dict)
    assert searcher.suggest("ray-2") == ray_backend.Searcher.FINISHED


def test_a_crashed_ray_trial_is_requeued_once(tmp_path):
    searcher, study = _searcher(tmp_path, target=4)
    searcher.suggest("ray-1")
    searcher.on_trial_complete("ray-1", None, error=True)  # its process was killed
    crashed, retry = study.trials
    assert crashed.state == TrialState.FAIL
    assert crashed.user_attrs["fail_reason"].endswith("; parameters requeued")
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    again = searcher.suggest("ray-2")  # the queued parameters come first
    assert again[ray_backend.NUMBER_KEY] == 1
    assert study.trials[1].params == crashed.params
    searcher.on_trial_complete("ray-2", None, error=True)  # crashed again: not a third time
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


@pytest.mark.parametrize("options, message", [
    (["--address", "127.0.0.1"], "--address: expected HOST:PORT"),
    (["--cpus-per-trial", "512"], "--cpus-per-trial: 512 asked; this host has"),
    (["--gpus-per-trial", "64"], "--gpus-per-trial: 64 asked; this host has"),
])
def test_ray_options_that_cannot_work_fail_before_any_training(tmp_path, capsys, options,
                                                                message):
    from tests.conftest import cli_error

    run = tmp_path / "run"
    err = cli_error(["search", str(_space(tmp_path)), "--backend", "ray", "--run-dir", str(run),
                     *options], capsys)
    assert message in err.splitlines()[-1]
    assert not (run / "cache").exists() and not (run / "study.journal").exists()


def test_address_auto_naming_a_cluster_that_is_gone_fails_in_seconds(tmp_path, capsys,
                                                                     monkeypatch):
    """``auto`` stands for RAY_ADDRESS, else the cluster last started on this host, whose
    file Ray leaves behind: ray.init would retry that address for minutes."""
    from tests.conftest import cli_error

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    run = tmp_path / "run"
    started = time.monotonic()
    err = cli_error(["search", str(_space(tmp_path)), "--backend", "ray", "--run-dir", str(run),
                     "--address", "auto"], capsys)
    assert time.monotonic() - started < 30
    # Ray names this host by its address on the network, not 127.0.0.1.
    assert re.search(rf"--address: no Ray cluster answers at auto \(\S+:{port}\)",
                     err.splitlines()[-1])
    assert not (run / "cache").exists()


def test_searcher_state_never_holds_the_storage(tmp_path):
    """Ray pickles its searcher into the run directory; a storage URL may hold a password."""
    config = cfg.load(_space(tmp_path))
    secret = tmp_path / "s3cr3t-password.journal"
    storage = JournalStorage(JournalFileBackend(str(secret)))
    create_study(config, storage).set_user_attr("n_trials", 4)
    searcher = ray_backend._StudySearch(
        space=ray_backend._Space(config.space, {}), metric=["accuracy", "flops"],
        mode=["max", "min"], sampler=make_sampler(config.sampler),
        study_name=config.name, storage=storage,
    )
    suggested = searcher.suggest("ray-trial-1")
    blob = cloudpickle.dumps(searcher)
    searcher.save(str(tmp_path / "searcher.pkl"))
    for data in (blob, (tmp_path / "searcher.pkl").read_bytes()):
        assert b"s3cr3t" not in data

    with pytest.raises(RuntimeError, match="resumes only through"):
        cloudpickle.loads(blob)
    with ray_backend._bound(storage):
        restored = cloudpickle.loads(blob)
    trial = restored._ot_trials["ray-trial-1"]
    assert trial.number == suggested[ray_backend.NUMBER_KEY] == 0
    trial.set_user_attr("metrics", {"accuracy": 0.5, "flops": 1e6, "flops_reduction": 2.0,
                                    "wall_time_s": 1.0})
    restored.on_trial_complete("ray-trial-1", {"accuracy": 0.5, "flops": 1e6})
    assert optuna.load_study(study_name=config.name, storage=storage).trials[0].values == \
        [0.5, 1e6]

"""Malformed input costs seconds: exit code 2, one line on stderr naming the field or path,
no traceback, and no training started."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from ranksearch import baselines, cli, data, svd
from ranksearch import config as cfg
from ranksearch.svd.layers import SCHEMES
from tests.conftest import cli_error

BAD = Path(__file__).parent / "bad_spaces"
CORPUS = sorted(BAD.glob("*.yaml"))


def _expectation(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    if first.startswith("# expect: "):
        return first.removeprefix("# expect: ")
    return {"binary.yaml": "cannot read the file (not UTF-8 text)"}[path.name]


@pytest.mark.parametrize(
    ("override", "location", "choices"),
    [
        ({"data": {"name": "mnist"}}, "data.name", data.DATASETS),
        ({"space": {"decay": "l2"}}, "space.decay", cfg.DECAY_TYPES),
        ({"space": {"scheme": "diagonal"}}, "space.scheme", typing.get_args(cfg.Scheme)),
        ({"baselines": {"methods": ["taylor"]}}, "baselines.methods.0", baselines.METHODS),
    ],
    ids=["dataset", "decay", "scheme", "baseline"],
)
def test_a_wrong_choice_names_every_valid_one(tiny_space, override, location, choices):
    """The choices the schema accepts are the ones the code implements, and the one-line
    error lists them all."""
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(tiny_space(**override))
    message = str(info.value)
    assert f": {location}: " in message and "\n" not in message
    assert all(repr(choice) in message for choice in choices), message


def test_the_config_offers_what_svd_implements():
    """svd/ imports nothing of ranksearch and the config must not import torch, so both list
    the schemes and decay types: they must agree."""
    assert typing.get_args(cfg.Scheme) == SCHEMES
    assert cfg.DECAY_TYPES == svd.SPARSITY_KINDS


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_space_fails_fast(path: Path, tmp_path: Path, capsys, monkeypatch):
    # Training must never start: make any attempt blow up loudly.
    import ranksearch.pipeline

    monkeypatch.setattr(ranksearch.pipeline, "run_phase", _no_training)
    err = cli_error(["search", str(path), "--run-dir", str(tmp_path / "run")], capsys)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert _expectation(path) in lines[0]


def _no_training(*args, **kwargs):
    raise AssertionError("training started on a malformed config")


def test_no_command_prints_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ranksearch") and "quickstart" in err and "export" in err


def test_missing_file(tmp_path, capsys):
    err = cli_error(["search", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml: no such file" in err


def test_a_folder_for_a_file(tmp_path, capsys):
    (tmp_path / "space.yaml").mkdir()
    err = cli_error(["train", str(tmp_path / "space.yaml")], capsys)
    assert "space.yaml: a folder, not a YAML file" in err


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = cli_error(["search", "search_spaces/digits_quickstart.yaml", "--run-dir",
                    str(blocker / "run")], capsys)
    assert "cannot write the run directory" in err and str(blocker) in err


def test_unknown_storage_scheme(tmp_path, capsys):
    err = cli_error(["search", "search_spaces/digits_quickstart.yaml", "--run-dir",
                    str(tmp_path / "run"), "--storage", "foo://user:secret@host/db"], capsys)
    assert "unknown storage" in err
    assert "secret" not in err and "***" in err


def test_unreachable_postgres_masks_password(tmp_path, capsys):
    err = cli_error(["worker", "postgresql://user:hunter2@127.0.0.1:1/db"], capsys)
    assert "hunter2" not in err and "cannot open the storage" in err


def test_report_on_missing_run_dir(tmp_path, capsys):
    err = cli_error(["report", str(tmp_path / "none")], capsys)
    assert "no such run directory" in err


def test_report_on_empty_run_dir(tmp_path, capsys):
    err = cli_error(["report", str(tmp_path)], capsys)
    assert "not a ranksearch run directory" in err


def test_worker_on_unknown_path(tmp_path, capsys):
    err = cli_error(["worker", str(tmp_path / "nothing")], capsys)
    assert "no such run directory, journal file or storage URL" in err
    assert "RANKSEARCH_STORAGE" in err


def test_train_needs_params(capsys):
    err = cli_error(["train", "search_spaces/digits_quickstart.yaml"], capsys)
    assert "needs a 'params' section" in err



@pytest.mark.parametrize("args, message", [
    (["search", "search_spaces/digits_quickstart.yaml", "--trials", "-1"],
     "argument --trials: expected at least 1, got -1"),
    (["search", "search_spaces/digits_quickstart.yaml", "--cpus-per-trial", "-1"],
     "argument --cpus-per-trial: expected at least 0, got -1"),
    (["quickstart", "--max-batches", "0"], "argument --max-batches: expected at least 1, got 0"),
    (["latency", "runs/x", "--repeats", "0"], "argument --repeats: expected at least 1, got 0"),
    (["latency", "runs/x", "--threads", "two"], "argument --threads: expected a number, got 'two'"),
    (["export", "runs/x", "--trial", "-2", "--out", "x"],
     "argument --trial: expected at least 0, got -2"),
])
def test_a_count_out_of_range_is_a_usage_error(args, message, monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_search", _no_training)
    monkeypatch.setattr(cli, "cmd_quickstart", _no_training)
    err = cli_error(args, capsys)
    assert err.splitlines()[-1].endswith(message)


@pytest.mark.parametrize("option", [["--address", "head:6379"], ["--cpus-per-trial", "2"],
                                    ["--gpus-per-trial", "0.5"]])
def test_a_ray_option_without_the_ray_backend_is_refused(option, monkeypatch, capsys):
    monkeypatch.setattr("ranksearch.app.start_search", _no_training)
    err = cli_error(["search", "search_spaces/digits_quickstart.yaml", *option], capsys)
    assert err.endswith(f"{option[0]}: only with --backend ray")


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": 0}, "trials: trials: Input should be greater than 0"),
    ({"max_batches": -1}, "max_batches: schedule.reference.max_batches: Input should be greater"),
])
def test_a_bad_quickstart_argument_writes_no_run(tmp_path, kwargs, message):
    from ranksearch.quickstart import quickstart

    with pytest.raises(cfg.ConfigError, match=message):
        quickstart(run_dir=str(tmp_path / "run"), report_dir=str(tmp_path / "report"),
                   export_dir=str(tmp_path / "export"), **kwargs)
    assert not (tmp_path / "run").exists()

@pytest.mark.slow
def test_real_process_prints_one_line(tmp_path):
    """The installed entry point, not just main(): one line, exit 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "ranksearch", "search", str(BAD / "low_above_high.yaml"),
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ranksearch: error: {BAD / 'low_above_high.yaml'}: space.lambda_o: low (2) must not "
        "exceed high (1)"
    ]


def test_gp_on_a_large_study_warns(tiny_space):
    from ranksearch import config as cfg

    with pytest.warns(UserWarning, match="sampler gp with 1000 trials"):
        cfg.load(tiny_space(sampler={"name": "gp"}, trials=1000))


def test_a_diverging_reference_is_one_line_and_keeps_nothing_half_written(tiny_space, tmp_path,
                                                                           capsys):
    space = tiny_space(schedule={"reference": {"lr": 1e12}})
    err = cli_error(["search", str(space), "--run-dir", str(tmp_path / "run"), "--quiet"],
                    capsys)
    line = err.splitlines()[-1]
    assert "reference diverged" in line and "schedule.reference.lr" in line
    assert not list((tmp_path / "run" / "cache").rglob("model.safetensors"))


@pytest.mark.parametrize("url, module, hint", [
    ("mysql://u:secret@127.0.0.1:1/db", "MySQLdb",
     "pip install 'ranksearch[mysql]' and write the URL as mysql+pymysql://"),
    ("mysql+pymysql://u:secret@127.0.0.1:1/db", "pymysql", "pip install 'ranksearch[mysql]'"),
    ("postgresql://u:secret@127.0.0.1:1/db", "psycopg", "pip install 'ranksearch[postgres]'"),
])
def test_a_missing_database_driver_names_the_extra_to_install(url, module, hint, monkeypatch):
    from ranksearch.search.storage import StorageError, open_storage

    monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    with pytest.raises(StorageError) as error:
        open_storage(url)
    message = str(error.value)
    assert f"the database driver {module!r} is missing; {hint}" in message
    assert "secret" not in message


def test_the_command_line_leaves_the_process_as_it_was(tmp_path, capsys):
    """main() called from Python (a test, a notebook): Python's warning format, the SIGINT
    and SIGTERM handlers and the blocked signals are as they were before."""
    import signal
    import warnings

    def sigterm_ignored(signum, frame):
        pass

    before = warnings.formatwarning
    sigint = signal.getsignal(signal.SIGINT)  # ignored where the test run inherited it so
    previous = signal.signal(signal.SIGTERM, sigterm_ignored)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        cli_error(["search", str(tmp_path / "nope.yaml")], capsys)
        assert warnings.formatwarning is before
        assert signal.getsignal(signal.SIGTERM) is sigterm_ignored
        assert signal.getsignal(signal.SIGINT) is sigint
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask | {signal.SIGUSR1}
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

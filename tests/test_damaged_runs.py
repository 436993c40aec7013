"""A run directory damaged from outside (a truncated file, an export aimed into it, a folder
that cannot be written): one line naming the file, or the damaged part redone; never a
traceback, never another trial's numbers."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
import yaml

from ranksearch import cli
from ranksearch.runs import read_json
from tests.conftest import cli_error


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-trial digits study with one baseline (shared: copy it before damaging)."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("damaged")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({**TINY, "trials": 2,
                                     "baselines": {"methods": ["l1"], "targets": [2]}}))
    cli.main(["search", str(space), "--run-dir", str(tmp / "run"), "--quiet"])
    return tmp / "run"


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_damaged_baseline_result_is_run_again(run, capsys):
    result = run / "baselines" / "l1-2x" / "metrics.json"
    good = read_json(result)
    _cut(result)
    cli.main(["baselines", str(run), "--quiet"])
    again = read_json(result)
    assert again["accuracy"] == pytest.approx(good["accuracy"])  # seeded: the same run


def test_a_damaged_latency_file_is_timed_again_and_the_report_warns(run, tmp_path, capsys):
    cli.main(["latency", str(run), "--repeats", "1"])
    _cut(run / "latency.json")
    with pytest.warns(UserWarning, match="latency.json: damaged"):
        cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    with pytest.warns(UserWarning, match="timing every model again"):
        cli.main(["latency", str(run), "--repeats", "1"])
    assert read_json(run / "latency.json")["models"]


def test_a_damaged_trial_is_one_line_naming_it(run, tmp_path, capsys):
    _cut(run / "trials" / "0" / "metrics.json")
    err = cli_error(["export", str(run), "--trial", "0", "--out",
                     str(tmp_path / "x")], capsys)
    assert f"{run / 'trials' / '0' / 'metrics.json'}: damaged" in err
    _cut(run / "trials" / "1" / "model.safetensors")
    err = cli_error(["export", str(run), "--trial", "1", "--out",
                     str(tmp_path / "y")], capsys)
    assert f"{run / 'trials' / '1'}: model.safetensors cannot be read" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_export_into_the_run_is_refused(run, capsys):
    before = (run / "trials" / "1" / "plan.json").read_bytes()
    err = cli_error(["export", str(run), "--trial", "0", "--out",
                     str(run / "trials" / "1")], capsys)
    assert "inside the folders of the run" in err
    assert (run / "trials" / "1" / "plan.json").read_bytes() == before


def test_an_export_folder_follows_the_umask(run, tmp_path):
    mask = os.umask(0o022)
    try:
        cli.main(["export", str(run), "--trial", "0", "--out", str(tmp_path / "best")])
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "best").stat().st_mode) == 0o755


def test_an_output_path_that_cannot_be_written_is_one_line(run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = cli_error(["report", str(run), "--out", str(blocker)], capsys)
    assert str(blocker) in err
    err = cli_error(["export", str(run), "--trial", "0", "--out",
                     str(blocker / "best")], capsys)
    assert str(blocker) in err


def test_latency_without_the_reference_says_what_it_leaves_out(run, capsys):
    shutil.rmtree(run / "cache" / "reference")
    with pytest.warns(UserWarning, match="the trained reference is not in its cache"):
        cli.main(["latency", str(run), "--repeats", "1"])
    assert set(read_json(run / "latency.json")["models"]) == {"trial:0", "trial:1"}


def test_a_run_without_its_config_says_how_to_restore_it(run, capsys):
    (run / "config.yaml").unlink()
    err = cli_error(["status", str(run)], capsys)
    assert "no config.yaml" in err and "ranksearch search SPACE.yaml --run-dir" in err


def test_latency_times_the_others_around_a_damaged_trial(run):
    _cut(run / "trials" / "0" / "model.safetensors")
    with pytest.warns(UserWarning, match="trial:0 not timed: .*model.safetensors cannot be read"):
        cli.main(["latency", str(run), "--repeats", "1"])
    assert "trial:1" in read_json(run / "latency.json")["models"]

"""The quickstart from an installed wheel: no source checkout, run from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of what setuptools packages, so that the checkout gets no
    build/ or egg-info and the wheel cannot pick up anything else of the repository."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ranksearch", source / "ranksearch", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--disable-pip-version-check", "-q", "-w", str(dist), str(source)])
    (wheel,) = dist.glob("ranksearch-*.whl")
    return wheel


def _environment(tmp_path: Path) -> Path:
    """A fresh venv that sees this environment's dependencies (torch, optuna, ...) through a
    .pth line, so nothing is downloaded; ranksearch itself is installed from the wheel. The
    lines of a .pth file are added to sys.path without running this environment's .pth
    files, so an editable ranksearch installed here stays invisible."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.stdout.strip()) / "parent_environment.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def test_quickstart_runs_from_an_installed_wheel(tmp_path):
    wheel = _wheel(tmp_path)
    env_dir = _environment(tmp_path)
    python = env_dir / "bin" / "python"
    # pip comes from the parent environment; --ignore-installed: the editable ranksearch of
    # the parent environment is neither reused nor uninstalled.
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)])

    empty = tmp_path / "empty"
    empty.mkdir()
    # One thread, as in-process tests run (conftest.py): tiny tensors, busy test machines.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    where = _run([str(python), "-c", "import ranksearch; print(ranksearch.__file__)"],
                 cwd=empty, env=env)
    assert Path(where.stdout.strip()).is_relative_to(env_dir)  # the wheel, not the checkout

    result = _run([str(env_dir / "bin" / "ranksearch"), "quickstart", "--trials", "2",
                   "--max-batches", "2", "--quiet"], cwd=empty, env=env, timeout=900)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("reference accuracy:"), result.stdout
    for path in ("reports/quickstart/index.html", "reports/quickstart/trials.csv",
                 "exports/quickstart/model.safetensors", "runs/quickstart/config.yaml"):
        assert (empty / path).is_file(), path

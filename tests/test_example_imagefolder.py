"""examples/imagefolder: the commands of its README, run as written in a copy of the example."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import ranksearch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagefolder"


def _readme_commands() -> list[list[str]]:
    """The lines of the README's first ``bash`` block, to run with this interpreter."""
    block = re.search(r"```bash\n(.*?)```", (EXAMPLE / "README.md").read_text(), re.S)
    assert block is not None
    commands = [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]
    prefixes = {"python": [sys.executable], "ranksearch": [sys.executable, "-m", "ranksearch"]}
    return [prefixes[program] + args for program, *args in commands]


@pytest.mark.slow
def test_readme_commands(tmp_path, monkeypatch) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "imagefolder",
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    commands = _readme_commands()
    assert [c[3] for c in commands[1:]] == ["search", "report", "export"]
    # One torch thread: the tiny model gains nothing from more on a busy machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in commands:
        subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=600)

    images = sorted((tmp_path / "examples" / "imagefolder" / "data").glob("*/*/*.png"))
    assert len(images) == 390
    report = tmp_path / "runs" / "shapes" / "report"
    for name in ("index.html", "pareto.png", "pareto.csv", "trials.csv", "summary.md"):
        assert (report / name).is_file(), name
    trials = pd.read_csv(report / "trials.csv")
    assert {"reference", "svd", "baseline:l1"} <= set(trials["kind"])
    assert (trials["kind"] == "svd").sum() == 4
    reference = trials.loc[trials["kind"] == "reference", "accuracy"].item()
    assert reference > 0.8  # the shapes are learnt: the front compresses a working model

    export = tmp_path / "exports" / "shapes"
    for name in ("config.yaml", "model.safetensors", "model.onnx", "README.md"):
        assert (export / name).is_file(), name
    monkeypatch.chdir(tmp_path)  # the export names its model factory by the relative path
    model = ranksearch.load(export).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    exported = pd.read_csv(report / "pareto.csv")
    assert (exported["flops_reduction"] >= 2).any()

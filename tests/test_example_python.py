"""examples/custom_python runs as its README says: your own Dataset, model, training loop and
metric from Python, through the search, the baselines, the report and an export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ranksearch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_python"


@pytest.mark.slow
def test_custom_python_example(tmp_path: Path, monkeypatch) -> None:
    # One thread, as the test process: several OpenMP threads on a busy machine spin-wait.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLE / "run.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial 5: macro-F1 " in done.stderr
    report = tmp_path / "reports" / "custom-python"
    page = (report / "index.html").read_text()
    assert "macro-F1 against FLOPs" in page and "macro-F1 (%)" in page
    assert "top-1" not in page and "validation macro-F1" in (report / "summary.md").read_text()
    export = tmp_path / "exports" / "custom-python"
    assert "validation macro-F1" in (export / "README.md").read_text()
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the export names its model by toy_task
    model = ranksearch.load(export)
    baselines = list((tmp_path / "runs" / "custom-python" / "baselines").glob("*/metrics.json"))
    assert len(baselines) == 2 and sum(p.numel() for p in model.parameters()) > 0

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
def test_custom_python_example(tmp_path: Path) -> None:
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
    # The export names its model by toy_task's file, so it loads from any folder.
    assert str(EXAMPLE / "toy_task.py") in (export / "config.yaml").read_text()
    model = ranksearch.load(export)
    baselines = list((tmp_path / "runs" / "custom-python" / "baselines").glob("*/metrics.json"))
    assert len(baselines) == 2 and sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_custom_python_example_under_ray(tmp_path: Path) -> None:
    """The user's loop, metric, model and data reach Ray's workers: functions in a module
    beside the launching script, imported by name there."""
    script = tmp_path / "run_ray.py"
    script.write_text(
        "from toy_task import macro_f1, make_data, small_cnn, train\n"
        "import ranksearch\n"
        "if __name__ == '__main__':\n"
        f"    ranksearch.optimize({str(EXAMPLE / 'space.yaml')!r}, model=small_cnn,\n"
        "        data=make_data, train_loop=train, evaluate=macro_f1, metric_name='macro-F1',\n"
        "        trials=2, backend='ray', workers=2, progress=False)\n")
    (tmp_path / "toy_task.py").write_text((EXAMPLE / "toy_task.py").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial 1: macro-F1 " in done.stderr and "baseline l1 4x: macro-F1 " in done.stderr

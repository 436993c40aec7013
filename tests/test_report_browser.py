"""The report page in a real browser: headless Chromium opens index.html from disk with the
network off, and the page's own self-check says what Plotly drew and which errors occurred."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import types
from pathlib import Path

import optuna
import optuna.importance  # noqa: F401 - imported before the report, as in test_report
import pandas as pd
import pytest

from ranksearch.report import write_report

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def write_baselines(run_dir: Path) -> None:
    for method, slope in (("l1", 0.004), ("fpgm", 0.003)):
        for target in (1.5, 2.0, 3.0):
            directory = run_dir / "baselines" / f"{method}-{target:g}x"
            directory.mkdir(parents=True)
            accuracy = 0.9174 - slope * (target - 1) ** 1.3
            metrics = {
                "method": method,
                "target": target,
                "flops": 81e6 / target,
                "params": 270_000 / target,
                "flops_reduction": target,
                "accuracy": accuracy,
                "test_accuracy": accuracy - 0.002,
                "latency_ms": 3.0 / target**0.7,
                "wall_time_s": 50.0,
                "epochs": 30,
            }
            (directory / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture()
def quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quoted literature points, independent of what ranksearch.baselines ships."""
    fake = types.ModuleType("ranksearch.literature")
    fake.points = lambda model, dataset: pd.DataFrame(  # type: ignore[attr-defined]
        {
            "model": [model, model],
            "dataset": [dataset, dataset],
            "method": ["trp-channel", "trp-spatial"],
            "base_accuracy": [0.9174, 0.9174],
            "accuracy": [0.905, 0.9062],
            "flops_reduction": [2.17, 2.84],
            "source": ["Trained Rank Pruning README", "Trained Rank Pruning README"],
        }
    )
    monkeypatch.setattr("ranksearch.report.data.literature", fake)


def open_in_chromium(index: Path, tmp_path: Path, *, webgl: bool) -> tuple[dict, str, list[str]]:
    """Load ``index`` from disk in headless Chromium with name resolution disabled.

    Returns the page's self-check (JSON written by the page once every figure is drawn), the
    browser's stderr (console messages appear as ``INFO:CONSOLE`` lines) and every non-file
    URL the page asked for, read from Chromium's network log.
    """
    net_log = tmp_path / "net-log.json"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Any host name fails to resolve: the page cannot reach the network even if it tried.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        f"--log-net-log={net_log}",
        # Run the page's timers (Plotly's drawing, the self-check) before dumping the DOM.
        "--virtual-time-budget=30000",
        "--dump-dom",
        index.as_uri(),
    ]
    if webgl:
        # Headless Chromium has no GPU; WebGL traces need the software rasteriser.
        command.insert(1, "--enable-unsafe-swiftshader")
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r'<pre id="ranksearch-selfcheck"[^>]*>(.*?)</pre>', result.stdout, re.S)
    assert match and match.group(1), "the page's self-check did not run"
    check = json.loads(html.unescape(match.group(1)))

    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # Requests made on behalf of the page carry its file:// network isolation key; the
    # browser's own background requests (blocked by the resolver rules anyway) do not.
    urls = [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job
        and str(event.get("params", {}).get("network_isolation_key", "")).startswith("file://")
        and not event["params"]["url"].startswith("file:")
    ]
    return check, result.stderr, urls


def console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and re.search(r"error|uncaught|failed", line, re.I)
    ]


def complete_svd_rows(report: Path) -> int:
    trials = pd.read_csv(report / "trials.csv")
    return int(((trials["kind"] == "svd") & (trials["state"] == "COMPLETE")).sum())


def test_page_draws_every_complete_trial_offline(tmp_path: Path, quoted: None,
                                                 synthetic_study) -> None:
    run_dir = tmp_path / "run"
    write_baselines(run_dir)
    report = tmp_path / "report"
    index = write_report(synthetic_study(300), run_dir, report, model="resnet20", dataset="cifar10")

    check, stderr, urls = open_in_chromium(index, tmp_path, webgl=False)
    assert urls == []
    assert check["errors"] == []
    assert console_errors(stderr) == []
    assert check["figures"] == check["drawn"] == 5
    assert not check["webgl"]
    # Every complete SVD trial of trials.csv is a point of the live chart, as an SVG element.
    assert check["svd_points"] == check["svg_points"] == complete_svd_rows(report)


@pytest.mark.slow
def test_large_study_page_draws_the_sample_it_announces(tmp_path: Path,
                                                        synthetic_study) -> None:
    report = tmp_path / "report"
    # Sampling 1,000 of the ~1,200 non-front trials: sampled, and past the WebGL threshold.
    index = write_report(synthetic_study(1300), None, report, max_dominated=1000)
    page = index.read_text()
    announced = int(re.search(r'<meta name="ranksearch-points" content="(\d+)">', page).group(1))
    front = len(pd.read_csv(report / "pareto.csv"))
    assert announced == front + 1000 < complete_svd_rows(report)

    check, stderr, urls = open_in_chromium(index, tmp_path, webgl=True)
    assert urls == []
    assert check["errors"] == []
    assert console_errors(stderr) == []
    assert check["webgl"]
    assert check["svd_points"] == announced
    # WebGL paints the sampled cloud on a canvas; only the front is drawn as SVG.
    assert check["svg_points"] == front

"""The Pareto report: front, reduction table, hypervolume and the written files, on hand-built
studies whose right answers are worked out by hand below."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import optuna
import optuna.importance  # imported up front: its first import (scikit-learn) takes seconds
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from ranksearch.measure import FLOPS_CONVENTION
from ranksearch.report import (
    hypervolume_2d,
    hypervolume_history,
    param_importances,
    pareto_front,
    reduction_table,
    trials_frame,
    write_report,
)
from ranksearch.report.text import baseline_rule

optuna.logging.set_verbosity(optuna.logging.WARNING)

REFERENCE = {
    "accuracy": 0.92,
    "test_accuracy": 0.915,
    "flops": 40e6,
    "params": 270_000,
    "latency_ms": 2.0,
}
DISTRIBUTIONS = {
    "decay": CategoricalDistribution(["l1", "hoyer"]),
    "energy": FloatDistribution(1e-6, 0.3, log=True),
}

# number: (state, accuracy, FLOPs, full_budget); the comment says where the point belongs.
TRIALS = [
    (TrialState.COMPLETE, 0.91, 20e6, True),  # 0: front (exact tie with 6)
    (TrialState.COMPLETE, 0.90, 10e6, True),  # 1: front
    (TrialState.COMPLETE, 0.89, 15e6, True),  # 2: dominated by 1 (cheaper and better)
    (TrialState.COMPLETE, 0.915, 30e6, True),  # 3: front
    (TrialState.COMPLETE, 0.95, 5e6, False),  # 4: truncated; would dominate almost all
    (TrialState.FAIL, None, None, None),  # 5: failed
    (TrialState.COMPLETE, 0.91, 20e6, True),  # 6: front (exact tie with 0)
    (TrialState.COMPLETE, 0.91, 25e6, True),  # 7: dominated by 0 (same accuracy, dearer)
    (TrialState.COMPLETE, 0.80, 4e6, True),  # 8: front (cheapest)
    (TrialState.COMPLETE, 0.905, 20e6, True),  # 9: dominated by 0 (same FLOPs, worse)
    (TrialState.PRUNED, None, None, None),  # 10: pruned
    (TrialState.RUNNING, None, None, None),  # 11: running
    (TrialState.COMPLETE, 0.93, 41e6, True),  # 12: front (most accurate, dearer than dense)
]
FRONT = [8, 1, 0, 6, 3, 12]  # by FLOPs, ties by number
COMPLETE = [0, 1, 2, 3, 4, 6, 7, 8, 9, 12]

# method-target: (accuracy, FLOPs)
BASELINES = {
    "l1-2x": (0.912, 20e6),
    "l1-4x": (0.90, 10e6),
    "fpgm-2x": (0.905, 20e6),
}


def fixed_study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="fixed")
    study.set_user_attr("reference", REFERENCE)
    for number, (state, accuracy, flops, full_budget) in enumerate(TRIALS):
        params = {"decay": ["l1", "hoyer"][number % 2], "energy": 1e-6 * 2**number}
        user_attrs = {}
        if state == TrialState.COMPLETE:
            user_attrs["metrics"] = {
                "accuracy": accuracy,
                "test_accuracy": accuracy - 0.002,
                "flops": flops,
                "params": 1000 * number,
                "flops_reduction": REFERENCE["flops"] / flops,
                "ranks": {"conv1": 16 - number % 4, "layer1.0.conv1": 8 + number % 3},
                "latency_ms": flops / 2e7,
                "wall_time_s": 10.0 + number,
                "status": "complete",
                "full_budget": full_budget,
            }
        if state == TrialState.FAIL:
            user_attrs["fail_reason"] = "diverged: NaN loss at epoch 2"
        study.add_trial(
            create_trial(
                state=state,
                values=[accuracy, flops] if state == TrialState.COMPLETE else None,
                params=params,
                distributions=DISTRIBUTIONS,
                user_attrs=user_attrs,
            )
        )
    return study


def write_baselines(run_dir: Path) -> None:
    for name, (accuracy, flops) in BASELINES.items():
        method, target = name.split("-")
        directory = run_dir / "baselines" / name
        directory.mkdir(parents=True)
        metrics = {
            "method": method,
            "target": float(target.rstrip("x")),
            "flops": flops,
            "params": 100_000,
            "flops_reduction": REFERENCE["flops"] / flops,
            "accuracy": accuracy,
            "test_accuracy": accuracy - 0.001,
            "latency_ms": flops / 2e7,
            "wall_time_s": 5.0,
            "epochs": 12,
        }
        (directory / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return fixed_study()


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    write_baselines(run)
    return run


def test_trials_frame_has_one_row_per_point(study: optuna.Study, run_dir: Path) -> None:
    df = trials_frame(study, run_dir)
    assert df["kind"].value_counts().to_dict() == {
        "svd": len(TRIALS),
        "baseline:l1": 2,
        "baseline:fpgm": 1,
        "reference": 1,
    }
    svd = df[df["kind"] == "svd"].set_index("number")
    assert svd.loc[5, "state"] == "FAIL"
    assert svd.loc[5, "fail_reason"] == "diverged: NaN loss at epoch 2"
    assert svd.loc[10, "state"] == "PRUNED" and svd.loc[11, "state"] == "RUNNING"
    assert not svd.loc[4, "full_budget"] and svd.loc[3, "full_budget"]
    assert json.loads(svd.loc[3, "ranks"]) == {"conv1": 13, "layer1.0.conv1": 8}
    assert svd.loc[3, "param_decay"] == "hoyer" and svd.loc[3, "param_energy"] == 8e-6
    reference = df[df["kind"] == "reference"].iloc[0]
    assert reference["accuracy"] == 0.92 and reference["flops_reduction"] == 1.0


def test_trials_frame_reads_the_study_once(study: optuna.Study) -> None:
    calls = []
    original = study.get_trials

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    study.get_trials = counting  # type: ignore[method-assign]
    try:
        trials_frame(study, None)
    finally:
        del study.get_trials
    assert calls == [{"deepcopy": False}]


def test_front_is_the_non_dominated_complete_full_budget_trials(
    study: optuna.Study, run_dir: Path
) -> None:
    df = trials_frame(study, run_dir)
    front = pareto_front(df)
    assert front["number"].astype(int).tolist() == FRONT
    assert front["flops"].is_monotonic_increasing


def test_baseline_fronts(study: optuna.Study, run_dir: Path) -> None:
    df = trials_frame(study, run_dir)
    assert pareto_front(df, "baseline:l1")["flops"].tolist() == [10e6, 20e6]
    assert pareto_front(df, "baseline:fpgm")["accuracy"].tolist() == [0.905]


def test_the_latency_chart_draws_every_timed_trial_once(study: optuna.Study,
                                                        run_dir: Path) -> None:
    """The latency front differs from the FLOPs front; the FLOPs front's points off it are
    still drawn (they used to vanish from the latency chart)."""
    from ranksearch.report.data import pareto_chart

    df = trials_frame(study, run_dir)
    svd_rows = df["kind"] == "svd"
    df.loc[svd_rows, "latency_ms"] = 1.0  # equal times: the latency front is one point
    df.loc[svd_rows & (df["number"] == 4), "latency_ms"] = np.nan  # one trial not timed
    chart = pareto_chart(df, pareto_front(df), pd.DataFrame(), max_dominated=100)
    drawn = {role: s.rows["number"].astype(int).tolist()
             for s in chart.series("latency_ms") if (role := s.role) in
             ("front", "dominated", "truncated")}
    assert drawn["front"] == [12]  # the most accurate, at the same latency as all
    numbers = [n for numbers in drawn.values() for n in numbers]
    assert sorted(numbers) == [n for n in COMPLETE if n != 4]


def test_the_accuracy_axis_hides_no_point_above_it(study: optuna.Study, run_dir: Path) -> None:
    from ranksearch.report.data import LOW_FIDELITY_KIND, pareto_chart

    df = trials_frame(study, run_dir)
    lowfi = df[df["kind"] == "svd"].head(2).assign(kind=LOW_FIDELITY_KIND, accuracy=[0.99, 0.1])
    df = pd.concat([df, lowfi], ignore_index=True)
    chart = pareto_chart(df, pareto_front(df), pd.DataFrame(), max_dominated=100)
    assert chart.accuracy_range[1] > 99.0
    assert "1 candidates before fine-tuning lie below the initial accuracy axis" in chart.note()


@pytest.mark.parametrize("promoted_state", [TrialState.WAITING, TrialState.FAIL,
                                            TrialState.COMPLETE])
def test_a_promoted_candidate_is_a_point_until_its_trial_completes(promoted_state) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("reference", REFERENCE)
    sweep = [{"energy": 0.01, "flops": 20e6, "proxy_accuracy": 0.9, "own": True},
             {"energy": 0.1, "flops": 10e6, "proxy_accuracy": 0.8, "promoted": True},
             {"energy": 0.2, "flops": 5e6, "proxy_accuracy": 0.6}]
    metrics = {"accuracy": 0.9, "flops": 20e6, "status": "complete", "full_budget": True}
    study.add_trial(create_trial(values=[0.9, 20e6], user_attrs={"metrics": metrics,
                                                                 "sweep": sweep}))
    promoted = {"promoted_from": 0, "proxy_flops": 10e6}
    if promoted_state == TrialState.COMPLETE:
        promoted["metrics"] = {**metrics, "accuracy": 0.85, "flops": 10e6}
    study.add_trial(create_trial(
        state=promoted_state, user_attrs=promoted,
        values=[0.85, 10e6] if promoted_state == TrialState.COMPLETE else None))
    lowfi = trials_frame(study).query("kind == 'svd-proxy'")
    expected = [5e6] if promoted_state == TrialState.COMPLETE else [10e6, 5e6]
    assert lowfi["flops"].tolist() == expected


def test_a_low_fidelity_point_says_what_it_is_when_hovered() -> None:
    from ranksearch.report.data import pareto_chart
    from ranksearch.report.figures import _hover_texts

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("reference", REFERENCE)
    sweep = [{"energy": 0.01, "flops": 20e6, "proxy_accuracy": 0.9, "own": True},
             {"energy": {"layer1": 0.2, "layer2": 0.05}, "flops": 5e6, "proxy_accuracy": 0.6}]
    metrics = {"accuracy": 0.9, "flops": 20e6, "status": "complete", "full_budget": True}
    study.add_trial(create_trial(values=[0.9, 20e6], user_attrs={"metrics": metrics,
                                                                 "sweep": sweep}))
    df = trials_frame(study)
    lowfi = next(s for s in pareto_chart(df, pareto_front(df), pd.DataFrame(), 100).series()
                 if s.role == "lowfi")
    (text,) = _hover_texts(lowfi, [], "accuracy")
    assert text.startswith("<b>candidate of trial #0, before fine-tuning</b>")
    assert "proxy accuracy 60.00 %" in text and "layer1=0.2, layer2=0.05" in text


def brute_force_front(accuracy: np.ndarray, flops: np.ndarray) -> set[int]:
    keep = set()
    for i in range(len(accuracy)):
        better_or_equal = (accuracy >= accuracy[i]) & (flops <= flops[i])
        strictly = (accuracy > accuracy[i]) | (flops < flops[i])
        if not np.any(better_or_equal & strictly):
            keep.add(i)
    return keep


def test_front_matches_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(1)
    n = 400
    # Coarse values, so that equal accuracies, equal FLOPs and exact duplicates abound.
    df = pd.DataFrame(
        {
            "kind": "svd",
            "number": np.arange(n, dtype=float),
            "state": "COMPLETE",
            "status": "complete",
            "accuracy": rng.integers(0, 20, n) / 20,
            "flops": rng.integers(1, 30, n) * 1e6,
            "full_budget": True,
        }
    )
    expected = brute_force_front(df["accuracy"].to_numpy(), df["flops"].to_numpy())
    assert set(pareto_front(df).index) == expected


def test_reduction_table_by_hand(study: optuna.Study, run_dir: Path) -> None:
    df = trials_frame(study, run_dir)
    table = reduction_table(df, REFERENCE["accuracy"]).set_index("kind")
    assert list(table.columns) == ["method", "within_0.5", "within_1", "within_2"]
    assert table.index.tolist() == ["svd", "baseline:fpgm", "baseline:l1"]
    # SVD: >= 91.5 % -> trial 3 (30 M, 1.33x); >= 91 % -> trials 0/6 (2x); >= 90 % ->
    # trial 1 (4x). Truncated trial 4 (95 %, 8x) never counts.
    assert table.loc["svd", "within_0.5"] == pytest.approx(40 / 30)
    assert table.loc["svd", "within_1"] == pytest.approx(2.0)
    assert table.loc["svd", "within_2"] == pytest.approx(4.0)
    assert math.isnan(table.loc["baseline:l1", "within_0.5"])
    assert table.loc["baseline:l1", "within_1"] == pytest.approx(2.0)
    assert table.loc["baseline:l1", "within_2"] == pytest.approx(4.0)
    assert math.isnan(table.loc["baseline:fpgm", "within_1"])
    assert table.loc["baseline:fpgm", "within_2"] == pytest.approx(2.0)
    assert table.loc["svd", "method"] == "SVD training"


def test_hypervolume_by_hand(study: optuna.Study) -> None:
    assert hypervolume_2d(np.array([0.5, 0.8]), np.array([0.25, 0.5])) == pytest.approx(
        0.5 * 0.25 + 0.8 * 0.5
    )
    # Points no better than the reference point add nothing.
    assert hypervolume_2d(np.array([0.9]), np.array([1.2])) == 0.0

    history = hypervolume_history(trials_frame(study, None))
    # Eligible trials in order of completion; truncated trial 4 is left out.
    assert history["number"].astype(int).tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 12]
    # Front in (accuracy, FLOPs / 40 M): (.80, .1) (.90, .25) (.91, .5) (.915, .75); trial
    # 12 costs more than the dense model and adds nothing.
    final = 0.80 * 0.15 + 0.90 * 0.25 + 0.91 * 0.25 + 0.915 * 0.25
    assert history["hypervolume"].iloc[0] == pytest.approx(0.91 * 0.5)
    assert history["hypervolume"].iloc[1] == pytest.approx(0.90 * 0.25 + 0.91 * 0.5)
    assert history["hypervolume"].iloc[-1] == pytest.approx(final)
    assert history["hypervolume"].is_monotonic_increasing


def test_param_importances(study: optuna.Study) -> None:
    importances = param_importances(study)
    assert set(importances) == {"accuracy", "flops"}
    assert set(importances["accuracy"]) == {"decay", "energy"}
    single = optuna.create_study(directions=["maximize", "minimize"])
    single.add_trial(create_trial(values=[0.5, 1.0], params={}, distributions={}))
    assert param_importances(single) == {}


def test_write_report_writes_every_file(study: optuna.Study, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    index = write_report(study, run_dir, out, title="fixed study")
    assert index == out / "index.html"
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html",
        "pareto.csv",
        "pareto.png",
        "summary.md",
        "trials.csv",
    ]  # and no temporary file left behind

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 1 + len(TRIALS) + len(BASELINES)
    # Counts as integers: a trial number to pass to `export --trial`, not "0.0".
    text = (out / "trials.csv").read_text()
    assert re.search(r"^svd,0,COMPLETE,complete,0\.9\d*,0\.9\d*,20000000,", text, re.M), text
    assert trials["kind"].value_counts().to_dict() == {
        "svd": 13,
        "baseline:l1": 2,
        "baseline:fpgm": 1,
        "reference": 1,
    }
    assert pd.read_csv(out / "pareto.csv")["number"].astype(int).tolist() == FRONT
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")

    summary = (out / "summary.md").read_text()
    assert FLOPS_CONVENTION in summary
    assert baseline_rule(None) in summary
    assert "at the schedule's learning rates" in summary
    assert "| SVD training | 1.33× | 2.00× | 4.00× |" in summary
    assert "reference point (accuracy 0, FLOPs ratio 1.0" in summary

    page = index.read_text()
    meta = re.search(r'<meta name="ranksearch-points" content="(\d+)">', page)
    assert meta and int(meta.group(1)) == len(COMPLETE)
    # Offline: no script, style sheet or font is fetched; plotly.js is inline.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=", page)
    for heading in (
        "Accuracy against FLOPs",
        "Largest FLOPs reduction",
        "Accuracy against measured CPU latency",
        "Hypervolume over trials",
        "Parameter importances",
        "Kept rank per layer",
        "Trials never on the front",
    ):
        assert heading in page
    excluded = re.search(r'<table id="excluded-table".*?</table>', page, re.S).group(0)
    assert excluded.count("<tr>") == 1 + 3  # header, trials 4 (truncated), 5 (fail), 10
    assert "diverged: NaN loss at epoch 2" in excluded


def test_queued_trials_are_named_but_not_counted_as_run(run_dir: Path, tmp_path: Path) -> None:
    study = fixed_study()
    study.enqueue_trial({"decay": "l1", "energy": 1e-3})
    study.enqueue_trial({"decay": "hoyer", "energy": 1e-3})
    out = tmp_path / "report"
    write_report(study, run_dir, out, title="fixed study")
    states = "10 complete, 1 failed, 1 pruned, 1 running; 2 more queued"
    assert f"- SVD trials: {len(TRIALS)} ({states}); " in (out / "summary.md").read_text()
    card = re.search(r'<div class="k">SVD trials</div><div class="v">(.*?)</div>'
                     r'<div class="d">(.*?)</div>', (out / "index.html").read_text())
    assert card.groups() == (str(len(TRIALS)), states)


def test_quoted_literature_points_are_drawn(
    study: optuna.Study, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("ranksearch.literature")
    fake.points = lambda model, dataset: pd.DataFrame(  # type: ignore[attr-defined]
        {
            "model": [model],
            "dataset": [dataset],
            "method": ["trp-channel"],
            "base_accuracy": [0.9174],
            "accuracy": [0.905],
            "flops_reduction": [2.17],
            "source": ["TRP README"],
        }
    )
    monkeypatch.setattr("ranksearch.report.data.literature", fake)
    index = write_report(study, run_dir, tmp_path / "r", model="resnet20", dataset="cifar10")
    page = index.read_text()
    assert "quoted: trp-channel" in page and "TRP README" in page
    assert "resnet20 on cifar10" in page


def test_report_of_5000_trials_is_fast_and_small(tmp_path: Path, synthetic_study) -> None:
    study = synthetic_study(5000)
    run_dir = tmp_path / "run"
    write_baselines(run_dir)
    start = time.perf_counter()
    index = write_report(study, run_dir, tmp_path / "report")
    elapsed = time.perf_counter() - start
    size_mb = index.stat().st_size / 1e6
    print(f"report of 5,000 trials: {elapsed:.1f} s, index.html {size_mb:.1f} MB")
    assert size_mb < 10

    page = index.read_text()
    front = pd.read_csv(tmp_path / "report" / "pareto.csv")
    shown = int(re.search(r'<meta name="ranksearch-points" content="(\d+)">', page).group(1))
    # The front in full plus a sample of 2,000 of the other complete trials.
    assert shown == len(front) + 2000
    assert "random sample (seed 0)" in page
    assert len(pd.read_csv(tmp_path / "report" / "trials.csv")) == 1 + 5000 + len(BASELINES)


def test_write_report_for_run_reads_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ranksearch import config as cfg
    from ranksearch.app import write_report_for_run
    from ranksearch.runs import RunDir, atomic_write_text
    from ranksearch.search.storage import open_storage, storage_url
    from ranksearch.search.study import create_study

    config = cfg.load(Path(__file__).parents[1] / "search_spaces" / "digits_quickstart.yaml")
    run = RunDir(tmp_path / "run").create()
    atomic_write_text(run.config_path, cfg.dump(config))
    run_study = create_study(config, open_storage(storage_url(run, None)))
    run_study.set_user_attr("reference", REFERENCE)
    run_study.add_trial(
        create_trial(values=[0.91, 20e6], user_attrs={"metrics": {"full_budget": True}})
    )
    write_baselines(run.path)
    # Left over from earlier configs: a target no longer asked, and other settings.
    for name, extra in (("l1-3x", {}), ("fpgm-4x", {"settings": {"lr": [1e-3]}})):
        (run.path / "baselines" / name).mkdir()
        (run.path / "baselines" / name / "metrics.json").write_text(json.dumps(
            {"method": name.split("-")[0], "target": float(name[-2]), "flops": 10e6,
             "accuracy": 0.95, **extra}))
    monkeypatch.chdir(tmp_path)

    with pytest.warns(UserWarning, match="2 baseline result"):
        out = write_report_for_run(run.path)
    assert out == Path("reports") / config.name
    trials = pd.read_csv(out / "trials.csv")
    assert trials["kind"].value_counts().to_dict() == {
        "baseline:l1": 2,
        "svd": 1,
        "baseline:fpgm": 1,
        "reference": 1,
    }
    assert f"{config.model.name} on {config.data.name}" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_reading_studies_does_not_import_the_training_stack():
    """status, report and export's selection read studies without torch: a cold `ranksearch
    report` then starts in about two seconds instead of ten or more."""
    code = ("import sys; import ranksearch.cli, ranksearch.app, ranksearch.report.writer, "
            "ranksearch.search.study; "
            "print(sorted(m for m in ('torch', 'torchvision', 'torch_pruning', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_baseline_rule_says_how_this_study_trained_its_baselines():
    from ranksearch.config import BaselineSpec

    rule = baseline_rule(BaselineSpec(lr=[1e-3, 3e-3], slimming_penalty=1e-4))
    assert "at whichever of the rates 0.001, 0.003 did best on the validation split" in rule
    assert "except slimming, which trains the reference with network slimming's L1 penalty " \
           "(0.0001)" in rule
    default = baseline_rule(BaselineSpec())
    assert "at the schedule's learning rates" in default and "except" not in default
    assert default == baseline_rule(None)
    # The penalty trains only slimming's runs: a study without them trained none so.
    assert "except" not in baseline_rule(BaselineSpec(methods=["l1"], slimming_penalty=1e-4))

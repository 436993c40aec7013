"""The user's own training loop and metric, and the Python entry points (issue 17).

The functions below stand for a user's code: the configs name them by import string
(``test_user_loop:...``), as ``ranksearch.optimize`` does for any function.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

import ranksearch
from ranksearch import api, app, baselines, fidelity, models, pipeline
from ranksearch import config as cfg
from ranksearch.data import load
from ranksearch.errors import UserError
from ranksearch.imports import ImportFailed
from ranksearch.report import write_report
from ranksearch.runs import RunDir
from ranksearch.train import MetricFailed, Phase, evaluate

PARAMS = {"scheme": "channel", "decay": "hoyer", "lambda_s": 3e-3, "energy": 0.3}
CALLS: list[dict] = []
METRIC_CALLS: Counter = Counter()


# --- a user's code -------------------------------------------------------------------------
def recording_loop(model: nn.Module, phase: Phase) -> None:
    """Label-smoothed cross-entropy plus the phase's regulariser, recording what it got."""
    optimizer = torch.optim.SGD(model.parameters(), lr=phase.lr)
    seen, regularisers = 0, []
    for x, y in phase.batches():
        with phase.autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        regulariser = phase.regulariser(model)
        regularisers.append(float(regulariser.detach()))
        optimizer.zero_grad()
        (loss + regulariser).backward()
        optimizer.step()
        seen += 1
    CALLS.append({"name": phase.name, "desc": phase.desc, "steps": phase.steps, "seen": seen,
                  "lr": phase.lr, "seed": phase.seed, "training": model.training,
                  "regulariser": regularisers, "dtype": phase.regulariser(model).dtype})


def nan_in_svd_training(model: nn.Module, phase: Phase) -> None:
    """Trains nothing, and breaks the weights in SVD training (as a NaN loss would)."""
    if phase.name == "svd":
        with torch.no_grad():
            next(model.parameters()).fill_(math.nan)


def samples_over_1000(model: nn.Module, batches) -> float:
    """How many samples the split has, / 1000: says which split, and how much of it, the
    metric was given. Iterates twice, which a plain generator would not allow."""
    first = [y for _, y in batches]
    again = [y for _, y in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not model.training and not torch.is_grad_enabled()
    return sum(len(y) for y in first) / 1000


def flaky(model: nn.Module, batches) -> float:
    """Top-1 accuracy, but NaN on its third call (the first trial's validation split)."""
    METRIC_CALLS["flaky"] += 1
    if METRIC_CALLS["flaky"] == 3:
        return math.nan
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def always_nan(model: nn.Module, batches) -> float:
    return math.nan


def tiny_model(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return models.create("resnet20", num_classes=num_classes, in_channels=in_channels)


# --- helpers -------------------------------------------------------------------------------
def _config(tiny_space, **overrides) -> cfg.StudyConfig:
    return cfg.load(tiny_space(space=None, params=PARAMS, **overrides))


def _space(tiny_space, **overrides) -> dict:
    return yaml.safe_load(tiny_space(**overrides).read_text())


def _spec(function) -> str:
    return f"{__name__}:{function.__name__}"


# --- the Phase contract --------------------------------------------------------------------
def test_phase_batches_and_rates_are_the_schedules() -> None:
    data = load("digits", val_fraction=0.2, seed=0)
    schedule = cfg.Schedule(epochs=2, lr=0.1, batch_size=64, max_batches=3)
    phase = Phase("reference", data, schedule, seed=5, lr=0.3)
    assert (phase.lr, phase.epochs, phase.batches_per_epoch, phase.steps) == (0.3, 2, 3, 6)
    # The seeded batches of the whole budget: one generator across the epochs.
    generator = torch.Generator().manual_seed(5)
    expected = [b for _ in range(2) for b in data.batches("train", 64, train=True,
                                                          generator=generator, limit=3)]
    got = list(phase.batches())
    assert len(got) == 6 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                 for a, b in zip(got, expected, strict=True))
    assert [phase.lr_at(s) for s in (0, 3, 6)] == pytest.approx([0.3, 0.15, 0.0])
    model = nn.Linear(2, 2)
    zero = phase.regulariser(model)
    assert zero.shape == () and float(zero) == 0.0
    # A regulariser is computed in fp32 even inside bf16 autocast.
    with_term = Phase("svd", data, schedule, seed=0, regulariser=lambda m: m.weight.sum())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert with_term.regulariser(model).dtype == torch.float32


def test_user_loop_gets_every_phase_with_its_regulariser_and_budget(tiny_space, tmp_path
                                                                   ) -> None:
    CALLS.clear()
    config = _config(tiny_space, train_loop=_spec(recording_loop),
                     baselines={"methods": ["l1"], "targets": [2.0]})
    run = RunDir(tmp_path / "run").create()
    metrics = pipeline.run_trial(config, config.params, run, progress=False)
    baselines.run_baselines(config, run, progress=False)
    assert metrics["status"] == "complete"
    assert [c["name"] for c in CALLS] == ["reference", "svd", "finetune", "baseline",
                                          "baseline"]
    schedule = config.schedule
    # Steps: epochs x batches per epoch (capped by max_batches), all of them yielded.
    budgets = [2 * 4, 1 * 3, 1 * 2, 1 * 3, 1 * 2]
    assert [c["steps"] for c in CALLS] == [c["seen"] for c in CALLS] == budgets
    assert [c["lr"] for c in CALLS] == [schedule.reference.lr, schedule.svd.lr,
                                        schedule.finetune.lr, schedule.svd.lr,
                                        schedule.finetune.lr]
    assert [c["seed"] for c in CALLS] == [0, 1, 2, 3, 4]  # a seed per phase
    assert all(c["training"] and c["dtype"] == torch.float32 for c in CALLS)
    reference, svd_training, finetune, *baseline = CALLS
    # None for the reference and the baselines; orthogonality and sparsity in SVD training,
    # orthogonality alone (smaller) in fine-tuning.
    assert all(r == 0 for c in (reference, *baseline) for r in c["regulariser"])
    assert min(svd_training["regulariser"]) > 0 and min(finetune["regulariser"]) > 0
    assert finetune["regulariser"][0] < svd_training["regulariser"][-1]


def test_fit_named_as_the_user_loop_matches_the_default(tiny_space, tmp_path) -> None:
    default = _config(tiny_space)
    named = _config(tiny_space, train_loop="ranksearch.train:fit")
    assert pipeline.reference_key(named) != pipeline.reference_key(default)
    first = pipeline.run_trial(default, default.params, RunDir(tmp_path / "a").create(),
                               progress=False)
    second = pipeline.run_trial(named, named.params, RunDir(tmp_path / "b").create(),
                                progress=False)
    for key in ("accuracy", "test_accuracy", "flops", "ranks"):
        assert first[key] == second[key]


def test_loop_leaving_non_finite_weights_fails_the_trial_in_one_line(tiny_space, tmp_path
                                                                      ) -> None:
    config = _config(tiny_space, train_loop=_spec(nan_in_svd_training))
    with pytest.raises(pipeline.TrialFailed) as failed:
        pipeline.run_trial(config, config.params, RunDir(tmp_path / "run").create(),
                           progress=False)
    assert str(failed.value) == ("diverged: the training loop left non-finite weights after "
                                 "svd-train")


# --- the metric ----------------------------------------------------------------------------
def test_metric_measures_every_quality(tiny_space, tmp_path) -> None:
    metric = {"name": "samples", "evaluate": _spec(samples_over_1000)}
    config = _config(tiny_space, metric=metric, baselines={"methods": ["l1"], "targets": [2.0]})
    data = pipeline.dataset(config)
    val, test = data.len_split("val") / 1000, data.len_split("test") / 1000
    run = RunDir(tmp_path / "run").create()
    metrics = pipeline.run_trial(config, config.params, run, progress=False)
    _, reference = pipeline.reference(config, run, progress=False)
    (baseline,) = baselines.run_baselines(config, run, progress=False)
    for measured in (metrics, reference, baseline):
        assert (measured["accuracy"], measured["test_accuracy"]) == (val, test)
    space = cfg.load(tiny_space("sweep.yaml", metric=metric, space={
        "scheme": "channel", "decay": "hoyer", "energy": {"hoyer": [0.05, 0.3]},
        "sweep": {"candidates": 2, "promote": 1, "proxy_samples": 50, "bn_batches": 1}}))
    groups = models.layer_groups(pipeline.build_model(space, data))
    candidates = fidelity.sweep(space, cfg.TrialParams(**PARAMS), run, groups, [])
    assert {c.proxy_accuracy for c in candidates} == {0.05}


def test_nan_metric_on_the_reference_is_one_user_error(tiny_space, tmp_path) -> None:
    config = _config(tiny_space, metric={"name": "mIoU", "evaluate": _spec(always_nan)})
    with pytest.raises(MetricFailed) as failed:
        pipeline.reference(config, RunDir(tmp_path / "run").create(), progress=False)
    assert isinstance(failed.value, UserError)
    assert str(failed.value) == ("metric mIoU returned nan on the val split; it must return a "
                                 "finite number")


def test_evaluate_rejects_what_is_not_a_finite_number() -> None:
    data = load("digits", val_fraction=0.2, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert evaluate(model, data, "val", metric=lambda m, b: torch.tensor(0.5)) == 0.5
    for bad in ("0.5", None, math.inf, True, 87.5, -0.2):
        with pytest.raises(MetricFailed, match="^metric F1 returned .* on the test split"):
            evaluate(model, data, "test", metric=lambda m, b, bad=bad: bad, name="F1")
    with pytest.raises(MetricFailed, match=r"returned 87\.5 .*must return a number in \[0, 1\]"):
        evaluate(model, data, "test", metric=lambda m, b: 87.5, name="F1")


def test_report_names_the_metric(synthetic_study, tmp_path) -> None:
    study = synthetic_study(40)
    write_report(study, None, tmp_path / "custom", metric="mIoU")
    write_report(study, None, tmp_path / "default")
    page = (tmp_path / "custom" / "index.html").read_text()
    summary = (tmp_path / "custom" / "summary.md").read_text()
    assert "mIoU against FLOPs" in page and "mIoU (%)" in page and "top-1" not in page
    assert "validation mIoU" in summary and "accuracy drop" not in summary
    default = (tmp_path / "default" / "index.html").read_text()
    assert "Accuracy against FLOPs" in default and "top-1 accuracy (%)" in default


# --- the Python entry points ---------------------------------------------------------------
def test_study_config_names_functions_by_import_string(tiny_space) -> None:
    config = api.study_config(_space(tiny_space), model=tiny_model, train_loop=recording_loop,
                              evaluate=samples_over_1000, trials=3)
    assert config.model.name == _spec(tiny_model)
    assert config.train_loop == _spec(recording_loop)
    assert config.metric == cfg.MetricSpec(name="samples_over_1000",
                                           evaluate=_spec(samples_over_1000))
    assert config.trials == 3 and config.data.name == "digits"
    named = api.study_config(config, evaluate=_spec(flaky), metric_name="F1",
                             data={"name": "digits", "subset": 100})
    assert named.metric.name == "F1" and named.data.subset == 100
    assert named.train_loop == config.train_loop


def test_a_space_file_may_leave_out_what_the_arguments_give(tiny_space, tmp_path) -> None:
    path = tiny_space(model=None, data=None)
    with pytest.raises(cfg.ConfigError, match="model: required field is missing"):
        cfg.load(path)
    config = api.study_config(path, model=tiny_model, data={"name": "digits"})
    assert config.model.name == _spec(tiny_model) and config.data.name == "digits"
    with pytest.raises(cfg.ConfigError, match="no such file"):
        api.study_config(tmp_path / "missing.yaml")
    with pytest.raises(cfg.ConfigError, match=f"^{path}: data: required field is missing$"):
        api.study_config(path, model=tiny_model)


def test_a_lambda_is_one_clear_error(tiny_space) -> None:
    with pytest.raises(ImportFailed) as failed:
        api.study_config(_space(tiny_space), train_loop=lambda model, phase: None)
    message = str(failed.value)
    assert "\n" not in message and "worker processes" in message and "lambda" in message
    with pytest.raises(cfg.ConfigError, match="^the space dict: trials: "):
        api.study_config(_space(tiny_space), trials=0)


def test_optimize_refuses_to_run_inside_a_worker_import() -> None:
    namespace = {"__name__": "_ranksearch_user_0123456789ab", "ranksearch": ranksearch}
    with pytest.raises(UserError, match="under 'if __name__ == \"__main__\":'"):
        exec("ranksearch.optimize({})", namespace)


def test_optimize_report_export_and_resume(tiny_space, tmp_path, monkeypatch) -> None:
    METRIC_CALLS.clear()
    monkeypatch.chdir(tmp_path)
    phases = []
    real_run = pipeline.run_phase
    monkeypatch.setattr(pipeline, "run_phase", lambda model, phase, loop: phases.append(
        phase.name) or real_run(model, phase, loop))
    space = _space(tiny_space, trials=2, sampler={"name": "random"})
    run = ranksearch.optimize(space, train_loop=recording_loop, evaluate=flaky,
                              metric_name="flaky-acc", progress=False)
    assert run == Path("runs") / "tiny"
    _, _, study = app.open_run_study(run)
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1
    failed = next(t for t in study.get_trials() if t.state.name == "FAIL")
    assert failed.user_attrs["fail_reason"] == ("metric flaky-acc returned nan on the val "
                                                "split; it must return a finite number")
    status = app.status_text(run)
    assert "reference: flaky-acc" in status and "(val flaky-acc, FLOPs" in status
    report = ranksearch.report_run(run, tmp_path / "report")
    assert "flaky-acc against FLOPs" in (report / "index.html").read_text()
    export = ranksearch.export_run(run, tmp_path / "export", max_flops="1x")
    assert (export / "model.safetensors").is_file()
    # Resumed with one more trial: the cached reference is not trained again.
    phases.clear()
    ranksearch.optimize(space, train_loop=recording_loop, evaluate=flaky,
                        metric_name="flaky-acc", trials=3, progress=False)
    _, _, study = app.open_run_study(run)
    assert [t.state.name for t in study.get_trials()].count("COMPLETE") == 3
    assert "reference" not in phases and phases.count("svd") == 1


@pytest.mark.parametrize("field, code, message", [
    ("train_loop", "def loop(model, phase):\n    raise ValueError('boom in ' + phase.name)\n",
     "reference: training with the training loop 'user.py:loop' failed: ValueError: boom in "
     "reference"),
    ("metric", "def metric(model, batches):\n    raise RuntimeError('metric boom')\n",
     "reference: measuring with the metric 'user.py:metric' failed: RuntimeError: metric boom"),
])
def test_user_code_that_raises_on_the_reference_is_one_line(tiny_space, tmp_path, monkeypatch,
                                                            capsys, field, code, message):
    from tests.conftest import cli_error

    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.py").write_text(code)
    override = ({"train_loop": "user.py:loop"} if field == "train_loop"
                else {"metric": {"name": "mine", "evaluate": "user.py:metric"}})
    err = cli_error(["search", str(tiny_space(**override)), "--run-dir", "run", "--quiet"],
                    capsys)
    assert err.splitlines()[-1] == f"ranksearch: error: {message}"


def test_a_users_file_is_read_once_until_it_changes(tmp_path, monkeypatch) -> None:
    """Every trial keys its caches by the weights file's content: a large file is read once
    per process, and a new one at the same path, even of the same size, is read again."""
    import os

    from ranksearch.user_code import file_digest

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"a" * 4096)
    first = file_digest(weights)
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self)
                        or real_open(self, *a, **k))
    assert [file_digest(weights) for _ in range(3)] == [first] * 3
    assert not opened
    weights.write_bytes(b"b" * 4096)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    opened.clear()  # the write
    assert file_digest(weights) not in (first, None)
    assert len(opened) == 1


def test_a_study_refuses_to_resume_once_the_users_code_changed(tiny_space, tmp_path,
                                                               monkeypatch, capsys):
    """The same settings, another metric: its trials would mix with the earlier ones."""
    from ranksearch import cli
    from tests.conftest import cli_error

    monkeypatch.chdir(tmp_path)
    metric = tmp_path / "user.py"
    metric.write_text("from ranksearch.train import top1_accuracy as metric\n")
    space = tiny_space(trials=1, metric={"name": "mine", "evaluate": "user.py:metric"})
    cli.main(["search", str(space), "--run-dir", "run", "--quiet"])
    cli.main(["search", str(space), "--run-dir", "run", "--quiet", "--trials", "2"])  # same code
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    metric.write_text("def metric(model, batches):\n    return 0.5\n")
    err = cli_error(["search", str(space), "--run-dir", "run", "--quiet", "--trials", "3"],
                    capsys)
    assert "the code of the training loop or metric, changed since" in err.splitlines()[-1]
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before


def test_a_function_of_an_installed_package_keeps_its_import_name() -> None:
    from ranksearch.imports import spec_of
    from ranksearch.train import top1_accuracy

    assert spec_of(top1_accuracy, "metric") == "ranksearch.train:top1_accuracy"
    assert spec_of(tiny_model, "model factory") == _spec(tiny_model)


def test_a_model_instead_of_its_factory_or_a_misspelt_backend_is_one_line(tiny_space) -> None:
    from ranksearch.app import make_backend

    model = tiny_model()
    with pytest.raises(ImportFailed) as failed:
        api.study_config(_space(tiny_space), model=model)
    assert str(failed.value) == (f"model factory: expected a function (or class) defined at "
                                 "the top level of a module or script, got a "
                                 f"{type(model).__name__} object (pass make_model, not "
                                 "make_model())")
    with pytest.raises(cfg.ConfigError, match="backend: expected 'optuna' or 'ray', got 'optuan'"):
        make_backend("optuan")


def test_a_module_beside_the_script_is_named_by_its_file(tmp_path, monkeypatch) -> None:
    """Importable by name only from its folder: export, load and report, run later from
    another folder, find it by its file, whatever a library put first on sys.path since."""
    import importlib
    import sys

    from ranksearch.imports import spec_of

    (tmp_path / "beside_the_script.py").write_text("def make_model():\n    return None\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(tmp_path / "run.py"),
                        raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))  # as Python puts the script's folder
    module = importlib.import_module("beside_the_script")
    monkeypatch.setattr(sys, "path", ["/elsewhere/thirdparty_files", *sys.path])  # as Ray does
    assert spec_of(module.make_model, "model factory") == (
        f"{(tmp_path / 'beside_the_script.py').resolve()}:make_model")
    monkeypatch.delitem(sys.modules, "beside_the_script")

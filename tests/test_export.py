"""Export a trial, load it without pickle, run it in ONNX Runtime, and rerun it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ranksearch import cli, export, load
from ranksearch.runs import read_json


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-trial digits study (shared by the tests of this file)."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("export")
    space = tmp / "space.yaml"
    config = {**TINY, "trials": 3,
              "space": {**TINY["space"], "energy": {"l1": {"low": 0.2, "high": 0.4},
                                                    "hoyer": {"low": 0.2, "high": 0.4}}}}
    space.write_text(yaml.safe_dump(config))
    cli.main(["search", str(space), "--run-dir", str(tmp / "run"), "--quiet"])
    return tmp / "run"


def test_export_load_onnx_and_train(finished_run, tmp_path, capsys):
    out = tmp_path / "best"
    number = 0
    capsys.readouterr()
    cli.main(["export", str(finished_run), "--trial", str(number), "--out", str(out)])
    for name in ("config.yaml", "plan.json", "model.safetensors", "model.onnx", "README.md",
                 "metrics.json"):
        assert (out / name).is_file(), name
    trial_metrics = read_json(finished_run / "trials" / str(number) / "metrics.json")
    assert read_json(out / "metrics.json") == {"trial": number, **trial_metrics}
    assert capsys.readouterr().out == (
        f"exported trial {number} (validation accuracy {100 * trial_metrics['accuracy']:.2f} %, "
        f"{trial_metrics['flops_reduction']:.2f}x fewer FLOPs) to {out}\n")
    # A deployment normalises its inputs as training did: the export says how.
    from ranksearch.datasets.base import STATS

    mean, std = STATS["digits"]
    assert read_json(out / "plan.json")["normalisation"] == {"mean": list(mean), "std": list(std)}
    assert f"{mean[0]:.4f}" in (out / "README.md").read_text()

    # Loading rebuilds the same compact model: identical outputs to the trial's own files.
    model = load(out)
    reference = export.load(finished_run / "trials" / str(number))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(type(m).__module__.startswith("torch.nn") for m in leaves)  # plain layers

    # ONNX Runtime gives the same outputs within 1e-4.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(onnx_out, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)

    # `ranksearch train config.yaml` reproduces the trial's FLOPs and ranks.
    capsys.readouterr()
    cli.main(["train", str(out / "config.yaml"), "--run-dir", str(finished_run), "--out",
              str(tmp_path / "again"), "--quiet"])
    again = read_json(tmp_path / "again" / "metrics.json")
    assert again["ranks"] == trial_metrics["ranks"]
    assert again["flops"] == trial_metrics["flops"]



def test_export_readme_code_runs_and_names_the_deployed_widths(finished_run, tmp_path):
    out = tmp_path / "best"
    cli.main(["export", str(finished_run), "--min-accuracy", "0", "--out", str(out)])
    readme = (out / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    # The load snippet runs as written, with the folder's real path.
    namespace: dict = {}
    exec(code.replace("path/to/this/folder", str(out)), namespace)  # noqa: S102
    model = namespace["model"]
    # Each layer's row says what the loaded model has: a pair's inner width (the kept rank
    # rounded up) or one merged dense layer.
    plan = read_json(out / "plan.json")["plan"]
    rows = {line.split("`")[1]: line for line in readme.splitlines() if line.startswith("| `")}
    assert set(rows) == set(plan)
    assert list(rows) == [name for name, _ in model.named_modules() if name in plan]  # in order
    for name, width in plan.items():
        if width is None:
            assert "merged back" in rows[name]
            assert hasattr(model.get_submodule(name), "weight")
        else:
            assert rows[name].endswith(f"inner width {width} |")
            assert model.get_submodule(name)[0].weight.shape[0] == width

def test_selection_rules(finished_run, tmp_path, capsys):
    cli.main(["export", str(finished_run), "--min-accuracy", "0", "--out", str(tmp_path / "a")])
    cli.main(["export", str(finished_run), "--max-flops", "1x", "--out", str(tmp_path / "b")])
    fewest = read_json(tmp_path / "a" / "plan.json")
    most_accurate = read_json(tmp_path / "b" / "plan.json")
    assert fewest["plan"] and most_accurate["plan"]
    assert (tmp_path / "a" / "model.onnx").is_file() and (tmp_path / "b" / "README.md").is_file()


@pytest.mark.parametrize("args, message", [
    (["--min-accuracy", "0.9999"], "no front point reaches accuracy 0.9999; the closest: trial"),
    (["--max-flops", "1000x"], "no front point has at most"),
    (["--max-flops", "lots"], "--max-flops: expected FLOPs"),
    (["--max-flops", "nan"], "--max-flops: expected a positive number"),
    (["--max-flops", "nanx"], "--max-flops: expected FLOPs"),
    (["--min-accuracy", "-1"], "--min-accuracy: expected an accuracy (0-1) or a percentage"),
    (["--min-accuracy", "nan"], "--min-accuracy: expected an accuracy (0-1) or a percentage"),
    (["--trial", "99"], "--trial: no trial 99 in the study"),
])
def test_nothing_qualifies(finished_run, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(finished_run), *args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_load_rejects_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(export.ExportError, match="not an export folder"):
        load(tmp_path)


def _widen_every_pair(path):
    plan = read_json(path)
    plan["plan"] = {name: None if width is None else width + 1
                    for name, width in plan["plan"].items()}
    path.write_text(json.dumps(plan))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:999]),
     "model.safetensors cannot be read"),
    (lambda f: (f / "plan.json").write_text((f / "plan.json").read_text()[:40]),
     "plan.json cannot be read"),
    (lambda f: (f / "plan.json").write_text('{"model": "resnet20"}'),
     "plan.json cannot be read (KeyError"),
    (lambda f: _widen_every_pair(f / "plan.json"),
     "model.safetensors does not hold the model plan.json describes"),
])
def test_load_of_a_damaged_export_is_one_line(finished_run, tmp_path, damage, message):
    out = tmp_path / "best"
    cli.main(["export", str(finished_run), "--min-accuracy", "0", "--out", str(out)])
    damage(out)
    with pytest.raises(export.ExportError) as error:
        load(out)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_gives_the_deployed_model_or_the_one_to_train_further(finished_run, tmp_path):
    out = tmp_path / "best"
    cli.main(["export", str(finished_run), "--min-accuracy", "0", "--out", str(out)])
    deployed, trainable = load(out), load(out, deployed=False)
    norms = [m for m in trainable.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():  # folding the norms changes nothing but rounding
        torch.testing.assert_close(deployed(x), trainable(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("state, word", [("FAIL", "failed"), ("WAITING", "queued"),
                                         ("RUNNING", "running"), ("PRUNED", "pruned")])
def test_exporting_an_unfinished_trial_says_what_it_is(state, word):
    import pandas as pd

    trials = pd.DataFrame({"kind": ["svd"], "number": [3], "state": [state]})
    with pytest.raises(export.ExportError, match=f"^trial: trial 3 is {word}, not complete"):
        export.select_trial(trials, trials.iloc[:0], 1e6, trial=3)


@pytest.mark.parametrize("selection, message", [
    ({"trial": 99}, "trial: no trial 99 in the study"),
    ({"max_flops": "lots"}, "max_flops: expected FLOPs (e.g. 2.5e6) or a reduction"),
    ({"min_accuracy": -1}, "min_accuracy: expected an accuracy (0-1) or a percentage"),
])
def test_python_errors_name_the_python_argument(finished_run, tmp_path, selection, message):
    """Called from Python, an error names the argument as Python spells it, not its flag."""
    with pytest.raises(export.ExportError) as info:
        export.export_run(finished_run, tmp_path / "x", **selection)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("edit, message", [
    ({"ranks": {"bogus.conv": 4}}, "params.ranks: 'bogus.conv' is not an SVD layer"),
    ({"ranks": {"layer1.0.conv1": 1000}}, "params.ranks: rank for 'layer1.0.conv1' must be in [1,"),
    ({"energy": {"layer9": 0.1}}, "params.energy: unknown layer or group 'layer9'"),
], ids=["unknown-layer", "rank-too-large", "unknown-group"])
def test_an_edited_export_config_is_refused_before_training(finished_run, tmp_path, capsys,
                                                            monkeypatch, edit, message):
    """Wrong layer names or ranks in a config for ``ranksearch train`` are found before any
    training, not after SVD training, in one line."""
    from ranksearch import pipeline
    from tests.conftest import cli_error

    cli.main(["export", str(finished_run), "--trial", "0", "--out", str(tmp_path / "e")])
    config = yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())
    config["params"].update(edit)
    if "energy" in edit:
        config["params"].pop("ranks")
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(pipeline, "svd_trained", lambda *a, **k: pytest.fail("trained"))
    err = cli_error(["train", str(path), "--run-dir", str(finished_run), "--out",
                     str(tmp_path / "t")], capsys)
    assert message in err.splitlines()[-1]


def test_a_trial_that_diverges_under_train_is_one_line(finished_run, tmp_path, capsys):
    from tests.conftest import cli_error

    cli.main(["export", str(finished_run), "--trial", "0", "--out", str(tmp_path / "e")])
    config = yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())
    config["schedule"]["svd"].update(optimizer="sgd", lr=1e8)
    path = tmp_path / "diverging.yaml"
    path.write_text(yaml.safe_dump(config))
    err = cli_error(["train", str(path), "--run-dir", str(finished_run), "--out",
                     str(tmp_path / "t"), "--quiet"], capsys)
    assert f"{path}: the trial failed: diverged" in err.splitlines()[-1]


def test_an_off_front_export_warns_in_one_line(finished_run, tmp_path):
    """The warning is the user's, not a developer's: no source file, no line of code."""
    import subprocess
    import sys

    from ranksearch.report.pareto import pareto_front, trials_frame
    from ranksearch.search.study import open_run_study

    frame = trials_frame(open_run_study(finished_run)[2], finished_run)
    complete = frame[(frame["kind"] == "svd") & (frame["state"] == "COMPLETE")]
    off_front = sorted(set(complete["number"].astype(int))
                       - set(pareto_front(frame)["number"].astype(int)))
    assert off_front, "the fixture's study should have a dominated trial"
    done = subprocess.run([sys.executable, "-m", "ranksearch", "export", str(finished_run),
                           "--trial", str(off_front[0]), "--out", str(tmp_path / "e")],
                          capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() == [
        f"ranksearch: warning: trial {off_front[0]} is not on the Pareto front (another trial "
        "is at least as good in both objectives); exporting it as asked"]


def test_export_run_from_python_takes_numbers_and_one_selection(finished_run, tmp_path):
    from ranksearch.export import ExportError, export_run

    with pytest.raises(ExportError, match="exactly one of trial, max_flops and min_accuracy"):
        export_run(finished_run, tmp_path / "none")
    with pytest.raises(ExportError, match="exactly one of trial, max_flops and min_accuracy"):
        export_run(finished_run, tmp_path / "two", trial=0, max_flops="2x")
    out = export_run(finished_run, tmp_path / "big", max_flops=10**12)
    assert (out / "model.safetensors").is_file()


def test_the_quickstart_names_its_export_folder_as_its_user_gave_it(finished_run):
    from ranksearch.quickstart import export_best

    inside = finished_run / "trials" / "0"
    with pytest.raises(export.ExportError) as info:
        export_best(finished_run, inside, 0.9)
    assert str(info.value).startswith(f"export_dir: {inside} is inside the folders of the run")
    assert info.value.for_command_line().startswith(f"--export: {inside} is inside")

"""The quickstart as a fast test: the whole flow with every epoch cut to two batches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ranksearch import cli, data, load, measure
from ranksearch.quickstart import QUICKSTART_SPACE

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_trimmed(tmp_path, capsys):
    cli.main(["quickstart", "--trials", "2", "--max-batches", "2", "--quiet",
              "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "report"),
              "--export", str(tmp_path / "export")])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3
    assert out[0].startswith("reference accuracy:")
    assert out[1].startswith("best FLOPs reduction within 1 point:")
    assert out[2].startswith(f"export: {tmp_path / 'export'}")
    for name in ("index.html", "pareto.png", "pareto.csv", "trials.csv", "summary.md"):
        assert (tmp_path / "report" / name).is_file()
    trials = pd.read_csv(tmp_path / "report" / "trials.csv")
    kinds = set(trials["kind"])
    assert {"reference", "svd", "baseline:l1", "baseline:fpgm", "baseline:slimming"} <= kinds
    assert (trials["kind"] == "svd").sum() == 2

    # The export is the deployed model of one of the front's trials: loaded without pickle,
    # it has that trial's FLOPs and scores that trial's test accuracy on the digits test split.
    model = load(tmp_path / "export").eval()
    front = pd.read_csv(tmp_path / "report" / "pareto.csv")
    exported = front.loc[front["flops"] == measure.flops(model, (1, 8, 8))]
    assert len(exported) >= 1, front
    digits = data.load("digits", val_fraction=0.2)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum())
                      for x, y in digits.batches("test", 256, train=False))
    accuracy = correct / digits.len_split("test")
    # One sample either way: folded batch norms may round a near-tie differently.
    assert (exported["test_accuracy"] - accuracy).abs().min() <= 1 / digits.len_split("test")


def test_one_copy_of_the_quickstart_space():
    """The repository's search_spaces/digits_quickstart.yaml is the packaged file itself."""
    assert QUICKSTART_SPACE.is_relative_to(ROOT / "ranksearch")
    assert (ROOT / "search_spaces" / "digits_quickstart.yaml").resolve() == QUICKSTART_SPACE

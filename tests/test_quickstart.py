"""The quickstart as a fast test: the whole flow with every epoch cut to two batches."""

from __future__ import annotations

import pandas as pd

from ranksearch import cli, load


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
    assert load(tmp_path / "export")  # the export loads

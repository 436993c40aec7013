"""A study's constraints (a FLOPs ceiling, an accuracy floor): the samplers steer by them, and
no front, status line, report or export holds a trial that violates them."""

from __future__ import annotations

import pytest

from ranksearch import cli
from ranksearch.app import status_text
from ranksearch.report import pareto_front, trials_frame
from ranksearch.search.storage import open_storage
from ranksearch.search.study import load_study


def test_a_trial_outside_the_constraints_is_on_no_front(tiny_space, tmp_path, capsys):
    ceiling = 4.6e6  # the dense digits ResNet-20 counts 5.07 MFLOPs
    run = tmp_path / "run"
    energy = {"low": 0.01, "high": 0.6, "log": True}
    space = tiny_space(trials=6, constraints={"max_flops": ceiling},
                       space={"energy": {"l1": energy, "hoyer": energy}})
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    study = load_study(open_storage(str(run / "study.journal")))
    df = trials_frame(study, run)
    svd = df[(df["kind"] == "svd") & (df["state"] == "COMPLETE")]
    # The case this test is about: trials on both sides of the ceiling.
    assert (svd["flops"] > ceiling).any() and (svd["flops"] <= ceiling).any()
    assert (svd["feasible"] == (svd["flops"] <= ceiling)).all()

    front = pareto_front(df)
    assert (front["flops"] <= ceiling).all()
    # The same front as Optuna's own, which leaves out infeasible trials.
    assert sorted(front["number"]) == sorted(t.number for t in study.best_trials)

    status = status_text(run)
    for number in svd[svd["flops"] > ceiling]["number"]:
        assert f"trial {number:>4} " not in status

    out = tmp_path / "best"
    cli.main(["export", str(run), "--max-flops", "1x", "--out", str(out)])
    most_accurate = int(front.sort_values(["accuracy", "flops"]).iloc[-1]["number"])
    assert (out / "README.md").read_text().splitlines()[0].endswith(f"trial {most_accurate}")

    # Asked for by number, an infeasible trial is exported, with a warning saying why.
    infeasible = int(svd[svd["flops"] > ceiling]["number"].iloc[0])
    with pytest.warns(UserWarning, match=f"trial {infeasible} is not on the Pareto front "
                      r"\(outside the study's constraints\)"):
        cli.main(["export", str(run), "--trial", str(infeasible), "--out", str(tmp_path / "x")])


def test_status_says_why_there_is_no_front(tiny_space, tmp_path):
    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=2, constraints={"max_flops": 1e3})),
              "--run-dir", str(run), "--quiet"])
    assert ("Pareto front: none yet (2 complete trials, all outside the study's constraints)"
            in status_text(run))

"""The multi-fidelity sweep (many points per SVD-trained model) and its promotion rule."""

from __future__ import annotations

import json

import pytest

from ranksearch import config as cfg
from ranksearch import fidelity
from ranksearch.fidelity import Candidate
from ranksearch.runs import RunDir
from ranksearch.search.study import open_run_study


def _candidate(accuracy: float, flops: int, energy: float) -> Candidate:
    return Candidate(energy=energy, flops=flops, proxy_accuracy=accuracy, rank=1, seconds=0.0)


def test_promote_takes_front_points_by_added_hypervolume() -> None:
    candidates = [
        _candidate(0.90, 80, 0.01),   # front
        _candidate(0.85, 90, 0.02),   # dominated by the first
        _candidate(0.80, 40, 0.05),   # front
        _candidate(0.30, 20, 0.10),   # front, adds little
        _candidate(0.95, 120, 0.001),  # above the reference's FLOPs: never promoted
    ]
    # Hypervolume in (accuracy, FLOPs / reference) from (0, 1), as the report measures it:
    # alone, 0.80 at 0.4 adds 0.48 (0.90 at 0.8: 0.18; 0.30 at 0.2: 0.24); next to it, 0.30
    # at 0.2 adds 0.3 * 0.2 = 0.06 and 0.90 at 0.8 adds 0.1 * 0.2 = 0.02.
    promoted = fidelity.promote(candidates, 2, reference_flops=100)
    assert [c.energy for c in promoted] == [0.05, 0.10]
    # The trial's own setting is fine-tuned anyway: counted as chosen, never promoted.
    promoted = fidelity.promote(candidates, 2, reference_flops=100, exclude=0.05)
    assert [c.energy for c in promoted] == [0.10, 0.01]
    assert fidelity.promote(candidates, 0, reference_flops=100) == []
    # Never more than the front holds.
    assert len(fidelity.promote(candidates, 10, reference_flops=100)) == 3


def test_energy_candidates_follow_the_space() -> None:
    space = cfg.SearchSpace(
        decay=["l1", "hoyer"], granularity="stage",
        lambda_s={"l1": 0.1, "hoyer": 0.01},
        energy={"l1": {"low": 0.01, "high": 0.3, "log": True}, "hoyer": [0.001, 0.01]})
    glob = fidelity.energy_candidates(space, "l1", [], 5, seed=0)
    assert len(glob) == 5 and min(glob) == pytest.approx(0.01) and max(glob) == pytest.approx(0.3)
    staged = fidelity.energy_candidates(space, "l1", ["layer1", "layer2"], 6, seed=0)
    assert len(staged) == 6 and all(set(e) == {"layer1", "layer2"} for e in staged)
    assert all(0.01 <= v <= 0.3 for e in staged for v in e.values())
    assert staged == fidelity.energy_candidates(space, "l1", ["layer1", "layer2"], 6, seed=0)
    assert fidelity.energy_candidates(space, "hoyer", [], 5, seed=0) == [0.001, 0.01]


def test_allocate_prunes_the_insensitive_unit_first() -> None:
    levels = [0.01, 0.1, 0.3]
    # Base model: accuracy 0.9 at 100 FLOPs. Pruning "a" further costs nothing; pruning "b"
    # costs a lot per FLOP saved.
    probes = {"a": [(0.9, 100), (0.9, 80), (0.89, 60)],
              "b": [(0.9, 100), (0.5, 70), (0.2, 50)]}
    at_85, at_60, at_10 = fidelity.allocate(levels, probes, [85, 60, 10])
    assert at_85 == {"a": 0.1, "b": 0.01}
    assert at_60 == {"a": 0.3, "b": 0.01}          # a's 40 FLOPs before any of b's
    assert at_10 == {"a": 0.3, "b": 0.3}           # every unit as far as it goes
    assert fidelity.allocate(levels, probes, [100]) == [{"a": 0.01, "b": 0.01}]


def test_allocate_ends_on_the_move_that_reaches_the_target_losing_least() -> None:
    # Pruning "a" further loses least per FLOP saved but saves half the model; the target
    # needs only 3 FLOPs saved, which "b" saves losing half as much accuracy.
    probes = {"a": [(0.9, 100), (0.89, 50)], "b": [(0.9, 100), (0.895, 95)]}
    assert fidelity.allocate([0.01, 0.1], probes, [97, 60]) == [
        {"a": 0.01, "b": 0.1},   # not a's 50 FLOPs at twice the loss
        {"a": 0.1, "b": 0.01}]   # b cannot reach 60: the best ratio goes first


def test_allocated_sweep_on_digits(tiny_space, tmp_path, monkeypatch) -> None:
    config = cfg.load(tiny_space(space={
        "scheme": "channel", "decay": "hoyer", "granularity": "stage",
        "energy": {"hoyer": {"low": 0.01, "high": 0.6, "log": True}},
        "sweep": {"candidates": 6, "promote": 2, "proxy_samples": 100, "bn_batches": 2,
                  "allocate": 3}}))
    from ranksearch import models, pipeline
    from ranksearch.search.space import granularity_units

    dense = pipeline.build_model(config, pipeline.dataset(config))
    groups = models.layer_groups(dense)
    units = granularity_units(config.space, groups)
    params = cfg.TrialParams(scheme="channel", decay="hoyer", lambda_s=1e-3,
                             energy=dict.fromkeys(units, 0.05))
    run = RunDir(tmp_path / "run").create()
    built = []
    deployable = fidelity.deployable
    monkeypatch.setattr(fidelity, "deployable",
                        lambda *args: built.append(1) or deployable(*args))
    candidates = fidelity.sweep(config, params, run, groups, units)
    sources = [c.source for c in candidates]
    levels = fidelity.ALLOCATION_LEVELS
    # Every setting is evaluated once: the probes' base is the lowest uniform candidate.
    settings = {json.dumps(c.energy, sort_keys=True) for c in candidates}
    assert len(built) == len(settings) < len(candidates)
    first = {}
    for c in candidates:
        again = first.setdefault(json.dumps(c.energy, sort_keys=True), c)
        if again is not c:
            assert (c.flops, c.proxy_accuracy, c.seconds) == (again.flops, again.proxy_accuracy,
                                                              0.0)
    assert sources[:7 + 1 + len(units) * (levels - 1)] == (
        ["sweep"] * 7 + ["sensitivity"] * (1 + len(units) * (levels - 1)))
    # Up to three allocations, each evaluated once.
    allocated = [c for c in candidates if c.source == "allocated"]
    assert 1 <= len(allocated) <= 3 and len(sources) == sources.index("allocated") + len(
        allocated)
    assert len({str(c.energy) for c in allocated}) == len(allocated)
    probes = [c for c in candidates if c.source == "sensitivity"]
    # One unit at a time pruned further than the base never adds FLOPs.
    assert all(c.flops <= probes[0].flops for c in probes)
    assert all(set(c.energy) == set(units) for c in allocated)
    # Targets from low to high FLOPs, all below the largest other candidate's.
    assert [c.flops for c in allocated] == sorted(c.flops for c in allocated)
    assert allocated[-1].flops < max(c.flops for c in candidates if c.source == "sweep")
    with pytest.raises(cfg.ConfigError, match="needs granularity stage or layer"):
        cfg.load(tiny_space("global.yaml", space={"sweep": {"allocate": 2}}))


def test_sweep_on_digits_is_cached(tiny_space, tmp_path) -> None:
    config = cfg.load(tiny_space(space={
        "scheme": "channel", "decay": "hoyer", "energy": {"hoyer": {"low": 0.01, "high": 0.6,
                                                                    "log": True}},
        "sweep": {"candidates": 6, "promote": 2, "proxy_samples": 100, "bn_batches": 2}}))
    params = cfg.TrialParams(scheme="channel", decay="hoyer", lambda_s=1e-3, energy=0.05)
    run = RunDir(tmp_path / "run").create()
    from ranksearch import models, pipeline

    dense = pipeline.build_model(config, pipeline.dataset(config))
    groups = models.layer_groups(dense)
    candidates = fidelity.sweep(config, params, run, groups, [])
    assert len(candidates) == 7 and candidates[0].energy == 0.05
    assert all(0 <= c.proxy_accuracy <= 1 and c.flops > 0 for c in candidates)
    # A larger threshold never keeps more singular values.
    by_energy = sorted(candidates[1:], key=lambda c: c.energy)
    assert all(a.rank >= b.rank for a, b in zip(by_energy, by_energy[1:], strict=False))
    assert by_energy[0].flops > by_energy[-1].flops
    # The second call reads the cache: the same numbers, nothing recomputed.
    again = fidelity.sweep(config, params, run, groups, [])
    assert again == candidates


def test_search_promotes_sweep_candidates(tiny_space, tmp_path) -> None:
    """A study with a sweep: the first trial's model is swept, its two best other candidates
    become complete trials of their own (real parameters, the same trained model), and every
    candidate is recorded as a low-fidelity point."""
    import optuna

    from ranksearch import cli

    run = tmp_path / "run"
    space = tiny_space(trials=3, space={
        "scheme": "channel", "decay": "hoyer",
        "energy": {"hoyer": {"low": 0.01, "high": 0.6, "log": True}},
        "finetune_epochs": [1, 2],
        "sweep": {"candidates": 8, "promote": 2, "proxy_samples": 100, "bn_batches": 2}})
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    trials = open_run_study(run)[2].get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    first, promoted = trials[0], trials[1:]
    sweep = first.user_attrs["sweep"]
    assert len(sweep) == 9 and sweep[0]["own"]
    assert sum(c["promoted"] for c in sweep) == 2
    promoted_energy = sorted(c["energy"] for c in sweep if c["promoted"])
    assert sorted(t.params["energy_hoyer"] for t in promoted) == pytest.approx(promoted_energy)
    for t in promoted:
        assert t.user_attrs["promoted_from"] == 0
        assert t.user_attrs["metrics"]["svd_cached"]
        assert {k: v for k, v in t.params.items() if k != "energy_hoyer"} == {
            k: v for k, v in first.params.items() if k != "energy_hoyer"}
        assert "sweep" not in t.user_attrs  # promoted trials do not sweep again
        # Fine-tuned as long as the trial that trained the model, not as the sampler drew.
        assert t.system_attrs["fixed_params"]["finetune_epochs"] == first.params[
            "finetune_epochs"]

    # The report: the six unpromoted candidates are low-fidelity rows, never on the front.
    import pandas as pd

    cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    rows = pd.read_csv(tmp_path / "report" / "trials.csv")
    low = rows[rows["kind"] == "svd-proxy"]
    assert len(low) == 6 and not low["full_budget"].any() and (low["number"] == 0).all()
    assert (pd.read_csv(tmp_path / "report" / "pareto.csv")["kind"] == "svd").all()
    # The one SVD-trained model's spectrum, on the trial that trained it.
    svd_rows = rows[rows["kind"] == "svd"].set_index("number")
    assert svd_rows["spectrum_rank_before"].notna().tolist() == [True, False, False]
    assert "Did SVD training move the spectrum?" in (tmp_path / "report" / "summary.md").read_text()


def test_report_latency_front_is_computed_on_latency(synthetic_study) -> None:
    """Against latency the front is the non-dominated set in (accuracy, latency), not the
    FLOPs front drawn again: a trial made the fastest of all joins it and drops every less
    accurate point."""
    import numpy as np
    import pandas as pd

    from ranksearch.dominance import nondominated
    from ranksearch.report.data import report_data

    study = synthetic_study(120)
    study.get_trials(deepcopy=False)[0].user_attrs["metrics"]["latency_ms"] = 0.01
    chart = report_data(study, None).chart
    fronts = {axis: next(s for s in chart.series(axis, sampled=False) if s.role == "front")
              for axis in ("flops", "latency_ms")}
    pool = pd.concat([chart.front, chart.others[chart.eligible.loc[chart.others.index]]])
    expected = pool[nondominated(pool["accuracy"], pool["latency_ms"])]
    latency_front = fronts["latency_ms"].rows
    assert set(latency_front.index) == set(expected.index)
    assert 0 in set(latency_front["number"])
    assert set(latency_front.index) != set(fronts["flops"].rows.index)
    assert np.all(np.diff(latency_front["latency_ms"].to_numpy()) >= 0)


def test_report_latency_speedup_table(synthetic_study) -> None:
    from ranksearch.report.data import report_data
    from ranksearch.report.markdown import summary

    study = synthetic_study(120)
    data = report_data(study, None)
    table = data.latency_reduction.set_index("kind")
    ref_latency = data.trials.loc[data.trials["kind"] == "reference", "latency_ms"].iloc[0]
    svd_points = data.trials[(data.trials["kind"] == "svd") & data.trials["full_budget"]
                             & (data.trials["state"] == "COMPLETE")]
    within = svd_points[svd_points["accuracy"] >= data.reference_accuracy - 0.02]
    assert table.loc["svd", "within_2"] == pytest.approx(ref_latency / within["latency_ms"].min())
    assert "Largest measured CPU speedup" in summary(data)


def test_a_promoted_candidate_ends_with_its_proxy_flops_under_latency_merging(
        tiny_space, tmp_path, monkeypatch) -> None:
    """With measure_latency a trial keeps the pairs timed faster than their layer, not those
    that save FLOPs: the sweep builds its candidates by the same rule, so a trial ends with
    the FLOPs its candidate had."""
    import importlib

    from ranksearch import cli

    compact = importlib.import_module("ranksearch.svd.compact")  # svd.compact is the function

    # Every pair times faster than its layer: kept even where it costs more FLOPs.
    monkeypatch.setattr(compact, "fastest_seconds", lambda modules, x, repeats: (1.0, 2.0))

    run = tmp_path / "run"
    space = tiny_space(trials=2, measure_latency=True, latency={"batch_size": 2, "threads": 1},
                       space={"scheme": "spatial", "decay": "hoyer",
                              "energy": {"hoyer": {"low": 0.05, "high": 0.6, "log": True}},
                              "sweep": {"candidates": 4, "promote": 1, "proxy_samples": 50,
                                        "bn_batches": 1}})
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    trials = open_run_study(run)[2].get_trials()
    own = trials[0].user_attrs["sweep"][0]
    assert own["own"] and own["flops"] == trials[0].user_attrs["metrics"]["flops"]
    for t in trials:
        if "proxy_flops" in t.user_attrs:
            assert t.user_attrs["metrics"]["flops"] == t.user_attrs["proxy_flops"]


def test_a_stepped_energy_range_is_swept_on_its_steps() -> None:
    """Promoted candidates become trial parameters: off the range's step grid, Optuna flags
    them and stores a value the distribution cannot hold."""
    from optuna.distributions import FloatDistribution

    from ranksearch import config as cfg
    from ranksearch.fidelity import energy_candidates

    space = cfg.SearchSpace(decay="l1", energy={"low": 0.02, "high": 0.59, "step": 0.02})
    distribution = FloatDistribution(0.02, 0.58, step=0.02)
    for units in ([], ["layer1", "layer2"]):
        candidates = energy_candidates(space, "l1", units, 8, seed=0)
        values = [v for c in candidates for v in (c.values() if units else [c])]
        assert len(candidates) >= 4
        assert all(distribution._contains(distribution.to_internal_repr(v)) for v in values)


def test_trials_sharing_one_trained_model_promote_different_candidates(tiny_space,
                                                                        tmp_path) -> None:
    """Constant training settings: every sampled trial sweeps the same model. A candidate one
    of them promoted is not promoted again (the slot goes to the next), and once fine-tuned
    it is no low-fidelity point in any of their sweeps."""
    import optuna
    import pandas as pd

    from ranksearch import cli

    run = tmp_path / "run"
    space = tiny_space(trials=4, sampler={"name": "random", "seed": 0}, space={
        "scheme": "spatial", "decay": "l1", "lambda_s": 0.01,
        "energy": {"l1": {"low": 0.02, "high": 0.6, "log": True}},
        "sweep": {"candidates": 6, "promote": 1, "proxy_samples": 100, "bn_batches": 1}})
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    trials = open_run_study(run)[2].get_trials()
    queued = [t.user_attrs["candidate"] for t in trials if "candidate" in t.user_attrs]
    assert len(queued) >= 2 and len(set(queued)) == len(queued)
    sweeps = [t for t in trials if "sweep" in t.user_attrs]
    assert len(sweeps) >= 2
    done = {t.user_attrs["candidate"] for t in trials
            if "candidate" in t.user_attrs and t.state == optuna.trial.TrialState.COMPLETE}
    cli.main(["report", str(run), "--out", str(tmp_path / "report")])
    rows = pd.read_csv(tmp_path / "report" / "trials.csv")
    low = rows[rows["kind"] == "svd-proxy"]
    shown = {c["candidate"] for t in sweeps for c in t.user_attrs["sweep"]
             if not c["own"]} - done
    assert len(low) == sum(1 for t in sweeps for c in t.user_attrs["sweep"]
                           if not c["own"] and c["candidate"] in shown)

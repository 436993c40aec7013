"""The Optuna backend end to end on tiny digits studies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from ranksearch import cli, pipeline
from ranksearch.search.storage import STORAGE_ENV

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(run: Path, name: str = "tiny", storage: str | None = None) -> optuna.Study:
    url = storage or str(run / "study.journal")
    if "://" not in url:
        url = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return optuna.load_study(study_name=name, storage=url)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_four_trial_study(tiny_space, tmp_path, monkeypatch, capsys):
    fits = []
    real_run = pipeline.run_phase
    monkeypatch.setattr(pipeline, "run_phase", lambda model, phase, loop: fits.append(
        phase.desc) or real_run(model, phase, loop))
    run = tmp_path / "run"
    space = tiny_space(space={"energy_trials_per_model": 2})
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    study = _study(run)
    complete = _complete(study)
    assert len(complete) == 4
    for t in complete:
        accuracy, flops = t.values
        assert 0 <= accuracy <= 1 and flops > 0
        assert {"scheme", "decay"} <= set(t.params)
        assert t.user_attrs["metrics"]["flops"] == flops
        assert (run / "trials" / str(t.number) / "model.safetensors").is_file()
    assert fits.count("reference") == 1
    assert study.user_attrs["reference"]["accuracy"] > 0

    # Trials after the first of each SVD-trained model reuse it: same training parameters,
    # only pruning and fine-tuning.
    reused = [t for t in complete if t.user_attrs["metrics"]["svd_cached"]]
    assert len(reused) == 2 and fits.count("svd-train") == 2
    for t in reused:
        first = next(s for s in complete if s.number == t.user_attrs["reuses_training_of"])
        training = {k: v for k, v in first.params.items() if not k.startswith("energy")}
        assert {k: t.params[k] for k in training} == training

    capsys.readouterr()
    cli.main(["status", str(run)])
    out = capsys.readouterr().out
    assert "4 complete of 4" in out and "Pareto front" in out and "reference: accuracy" in out

    # The same command again resumes: nothing finished runs again.
    fits.clear()
    cli.main(["search", str(space), "--run-dir", str(run), "--quiet"])
    assert fits == [] and len(_complete(_study(run))) == 4

    # A larger --trials adds exactly the difference.
    cli.main(["search", str(space), "--run-dir", str(run), "--trials", "5", "--quiet"])
    assert fits.count("reference") == 0 and len(_complete(_study(run))) == 5


def _two_processes(space: Path, run: Path, storage: str | None) -> None:
    args = [sys.executable, "-m", "ranksearch", "search", str(space), "--run-dir", str(run),
            "--workers", "2", "--quiet"]
    env = dict(os.environ)
    if storage:
        env[STORAGE_ENV] = storage
        args += ["--storage", storage]
    subprocess.run(args, check=True, env=env, timeout=600)


def _assert_exact(study: optuna.Study, target: int) -> None:
    complete = _complete(study)
    assert len(complete) == target
    numbers = [t.number for t in complete]
    assert len(set(numbers)) == len(numbers)
    # No point was evaluated twice by accident (the queue may repeat training params only).
    points = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(points)) == len(points)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RANKSEARCH_TEST_POSTGRES"),
                    reason="needs RANKSEARCH_TEST_POSTGRES (set by .ci/run, which starts "
                    "PostgreSQL on loopback)")
def test_two_workers_exact_count_postgres(tiny_space, tmp_path):
    url = os.environ["RANKSEARCH_TEST_POSTGRES"]
    name = f"tiny-pg-{os.getpid()}"
    run = tmp_path / "run"
    try:
        _two_processes(tiny_space(name=name, trials=5), run, url)
        _assert_exact(_study(run, name, url), 5)
        password = url.split(":")[2].split("@")[0]
        for f in run.rglob("*"):
            if f.is_file():
                assert password.encode() not in f.read_bytes(), f
    finally:
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.slow
def test_worker_joins_from_run_dir(tiny_space, tmp_path):
    """A second process joins with `ranksearch worker RUN_DIR`; the count stays exact."""
    run = tmp_path / "run"
    space = tiny_space(trials=6)
    launcher = subprocess.Popen([sys.executable, "-m", "ranksearch", "search", str(space),
                                 "--run-dir", str(run), "--quiet"])
    try:
        # Join once the launcher has created the study.
        for _ in range(600):
            if (run / "study.journal").is_file() and (run / "cache" / "reference").is_dir():
                break
            launcher.poll()
            import time

            time.sleep(0.2)
        subprocess.run([sys.executable, "-m", "ranksearch", "worker", str(run), "--quiet",
                        "--worker-index", "1"], check=True, timeout=600)
    finally:
        assert launcher.wait(timeout=600) == 0
    _assert_exact(_study(run), 6)


def test_asking_fewer_trials_than_are_done_keeps_the_count_true(tiny_space, tmp_path):
    from ranksearch.app import status_text

    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=2)), "--run-dir", str(run), "--quiet"])
    with pytest.warns(UserWarning, match="already holds 2 complete trials, more than the 1"):
        cli.main(["search", str(tiny_space(trials=2)), "--run-dir", str(run), "--trials", "1",
                  "--quiet"])
    assert "trials: 2 complete of 2," in status_text(run)
    assert "trials: 2" in (run / "config.yaml").read_text()


def test_a_worker_joining_by_a_runs_journal_works_in_that_run(tiny_space, tmp_path,
                                                               monkeypatch):
    """`ranksearch worker RUN/study.journal`: the trials belong in RUN, not in a new
    runs/NAME of the working directory (export from RUN found no files for them)."""
    cli.main(["search", str(tiny_space(trials=1)), "--run-dir", str(tmp_path / "run"),
              "--quiet"])
    study = _study(tmp_path / "run")
    study.set_user_attr("n_trials", 2)  # one more trial, for the worker
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli.main(["worker", str(tmp_path / "run" / "study.journal"), "--quiet"])
    assert not (elsewhere / "runs").exists()
    assert not (tmp_path / "run" / "storage.txt").exists()  # its own journal: no note
    assert len(_complete(study)) == 2
    assert (tmp_path / "run" / "trials" / "1" / "metrics.json").is_file()


def test_workers_never_share_a_sampler_stream():
    """Worker 0 starting after one trial and worker 1 starting first once got the same seed
    (seed + worker + trials) and suggested the same points on PostgreSQL."""
    from ranksearch import config as cfg
    from ranksearch.search.study import make_sampler, sampler_seed

    starts = [(w, n) for w in range(4) for n in range(50)]
    assert len({sampler_seed(0, w, n) for w, n in starts}) == len(starts)
    assert sampler_seed(7, 0, 0) == 7  # a new single-worker study keeps the configured seed

    def first_point(worker: int, trials_before: int) -> float:
        sampler = make_sampler(cfg.SamplerSpec(name="tpe", seed=0), worker,
                               trials_before)
        study = optuna.create_study(sampler=sampler)
        return study.ask().suggest_float("x", 0, 1)

    assert first_point(0, 1) != first_point(1, 0)


def test_a_new_host_joins_by_environment_or_journal_file(tiny_space, tmp_path, monkeypatch):
    """README's other-host commands: `RANKSEARCH_STORAGE=URL ranksearch worker RUN_DIR` where
    RUN_DIR does not exist yet, and `ranksearch worker JOURNAL_FILE`; a relative SQLite URL is
    recorded absolute, so the run opens its study from any directory."""
    from ranksearch.app import status_text

    monkeypatch.chdir(tmp_path)
    cli.main(["search", str(tiny_space(trials=2)), "--run-dir", "run", "--storage",
              "sqlite:///study.db", "--quiet"])
    assert (tmp_path / "run" / "storage.txt").read_text().strip() == (
        f"sqlite:///{tmp_path / 'study.db'}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "2 complete of 2" in status_text(tmp_path / "run")
    assert not (elsewhere / "study.db").exists()

    monkeypatch.setenv("RANKSEARCH_STORAGE", f"sqlite:///{tmp_path / 'study.db'}")
    cli.main(["worker", "host2/run", "--quiet"])
    monkeypatch.delenv("RANKSEARCH_STORAGE")
    assert (elsewhere / "host2" / "run" / "config.yaml").is_file()
    assert "2 complete of 2" in status_text("host2/run")

    cli.main(["search", str(tiny_space(trials=1, name="journal")), "--run-dir", "run3",
              "--storage", "shared.journal", "--quiet"])
    cli.main(["worker", "shared.journal", "--run-dir", "host3", "--quiet"])
    assert "1 complete of 1" in status_text("host3")


def test_a_refused_resume_leaves_the_run_config_as_it_was(tiny_space, tmp_path, capsys):
    """A study started with other settings refuses the new ones, and the run's config.yaml
    (which worker, baselines and latency read) keeps the settings the study holds."""
    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=1)), "--run-dir", str(run), "--quiet"])
    before = (run / "config.yaml").read_text()
    changed = tiny_space("changed.yaml", trials=1,
                         schedule={"reference": {"epochs": 3}})
    with pytest.raises(SystemExit):
        cli.main(["search", str(changed), "--run-dir", str(run), "--quiet"])
    assert ("already exists with different settings (schedule.reference.epochs: 2 then, 3 now)"
            in capsys.readouterr().err)
    assert (run / "config.yaml").read_text() == before


def test_a_resume_without_storage_continues_where_the_study_lives(tiny_space, tmp_path,
                                                                 monkeypatch, capsys):
    """The README's 'the same command with more --trials resumes': a study started with
    --storage is continued there, not forked into a new journal in the run directory."""
    monkeypatch.chdir(tmp_path)
    space = tiny_space(trials=1)
    cli.main(["search", str(space), "--run-dir", "run", "--storage", "sqlite:///q.db",
              "--quiet"])
    cli.main(["search", str(space), "--run-dir", "run", "--trials", "2", "--quiet"])
    assert len(_complete(_study(tmp_path / "run", storage="sqlite:///q.db"))) == 2
    assert not (tmp_path / "run" / "study.journal").exists()
    assert "storage: sqlite:///" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(SystemExit):
        cli.main(["search", str(space), "--run-dir", "run", "--storage", "sqlite:///other.db",
                  "--trials", "3", "--quiet"])
    assert ("run: its study lives in sqlite:///" in capsys.readouterr().err)
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///other.db")  # as --storage: checked alike
    with pytest.raises(SystemExit):
        cli.main(["search", str(space), "--run-dir", "run", "--trials", "3", "--quiet"])
    assert "run: its study lives in sqlite:///" in capsys.readouterr().err
    monkeypatch.delenv(STORAGE_ENV)
    assert not (tmp_path / "other.db").exists()
    # Its own journal, named by a relative path, is the same storage.
    cli.main(["search", str(space), "--run-dir", "journal-run", "--quiet"])
    cli.main(["search", str(space), "--run-dir", "journal-run", "--storage",
              "journal-run/study.journal", "--trials", "2", "--quiet"])
    assert len(_complete(_study(tmp_path / "journal-run"))) == 2
    assert not (tmp_path / "journal-run" / "storage.txt").exists()  # the run can be moved


def test_another_study_in_the_same_run_directory_is_refused(tiny_space, tmp_path, capsys):
    """Trial folders are named by number: a second study would write over the first one's,
    and export the other study's model."""
    run = tmp_path / "run"
    cli.main(["search", str(tiny_space(trials=1)), "--run-dir", str(run), "--quiet"])
    before = (run / "trials" / "0" / "metrics.json").read_text()
    renamed = tiny_space("renamed.yaml", name="renamed", trials=1)
    with pytest.raises(SystemExit):
        cli.main(["search", str(renamed), "--run-dir", str(run), "--quiet"])
    assert ("holds the study 'tiny'; the study 'renamed' needs a run directory of its own"
            in capsys.readouterr().err)
    assert (run / "trials" / "0" / "metrics.json").read_text() == before
    (run / "config.yaml").unlink()  # the study itself still says whose run this is
    with pytest.raises(SystemExit):
        cli.main(["search", str(renamed), "--run-dir", str(run), "--quiet"])
    assert "holds the study 'tiny'" in capsys.readouterr().err
    assert optuna.get_all_study_names(
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(run / "study.journal")))) == ["tiny"]


def test_a_search_says_when_it_trains_the_reference(tiny_space, tmp_path, capsys):
    """Its progress bar shows on a terminal only: in a log the wait needs a line too."""
    cli.main(["search", str(tiny_space(trials=1)), "--run-dir", str(tmp_path / "run")])
    assert "training the dense reference (2 epochs; cached for every trial)" in (
        capsys.readouterr().err)
    cli.main(["search", str(tiny_space(trials=2)), "--run-dir", str(tmp_path / "run")])
    assert "training the dense reference" not in capsys.readouterr().err

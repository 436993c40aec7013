"""kill -9 soak: five kills of `ranksearch search --workers 2` at random moments, rerunning
the same command after each, then one run to the end.

Checks what issue #8 asks: exactly --trials complete trials, no trial number completed twice,
no truncated file in the run directory, every trial running at a kill failed with a reason and
its parameters requeued, and no worker outliving its launcher.

With ``--backend ray`` the same through Ray Tune (a private local Ray per command, resumed
with ``Tuner.restore``); stray processes are then Ray's (raylet, GCS, ``ray::`` workers).

Usage: python benchmarks/reliability/kill_soak.py [--backend optuna] [--kills 5] [--trials 16]
Writes benchmarks/reliability/results-BACKEND.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _wait_for_no(pattern: str, timeout: float) -> list[str]:
    """The processes matching ``pattern`` still there after up to ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True,
                               text=True).stdout.split()
        if not found or time.time() > deadline:
            return found
        time.sleep(1)


def _trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    """The soak study's trials (none before the study exists)."""
    journal = run / "study.journal"
    if not journal.is_file():
        return []
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name="kill-soak", storage=storage).get_trials(
            deepcopy=False)
    except KeyError:
        return []


def _states(run: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in _trials(run):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _wait_for_running(run: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until a trial started by this command runs (True), or the command ends or time is
    up (False). Trials left RUNNING by the previous kill do not count: their heartbeat has
    not expired yet."""
    before = {t.number for t in _trials(run)}
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(t.state.name == "RUNNING" and t.number not in before for t in _trials(run)):
            return True
        time.sleep(0.5)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kill-soak-"))
    space = yaml.safe_load((ROOT / "search_spaces" / "digits_quickstart.yaml").read_text())
    space.update(name="kill-soak", trials=args.trials, baselines=None)
    for phase in ("reference", "svd", "finetune"):
        space["schedule"][phase]["max_batches"] = 4
    space_path = tmp / "space.yaml"
    space_path.write_text(yaml.safe_dump({k: v for k, v in space.items() if v is not None}))
    run = tmp / "run"
    env = {**os.environ, "RANKSEARCH_HEARTBEAT_GRACE": "6"}
    cmd = [sys.executable, "-m", "ranksearch", "search", str(space_path), "--run-dir", str(run),
           "--workers", "2", "--quiet", "--backend", args.backend]
    # What must not outlive a killed launcher: its worker processes, or the Ray it started.
    stray = (f"ranksearch worker {run}" if args.backend == "optuna"
             else "raylet|gcs_server|ray::|default_worker.py")
    kills = []
    for _ in range(args.kills):
        started = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # A random moment while trials run: start-up (imports, Ray, the reference) is seconds
        # to minutes, trials a few seconds each, so a fixed delay would mostly hit start-up.
        running = _wait_for_running(run, proc, timeout=300)
        time.sleep(rng.uniform(0, 3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states = _states(run)
        killed = time.time()
        # Ray's own agents notice a dead raylet only after a while: record how long.
        orphans = _wait_for_no(stray, timeout=120)
        gone_after = round(time.time() - killed, 1)
        kills.append({"after_s": round(time.time() - started, 1), "trials_were_running": running,
                      "complete_at_kill": states.get("COMPLETE", 0),
                      "running_at_kill": states.get("RUNNING", 0),
                      "orphaned_processes": len(orphans),
                      "stray_processes_gone_after_s": gone_after})
        print(json.dumps(kills[-1]), flush=True)
    start = time.time()
    final = subprocess.run(cmd, env=env, capture_output=True, text=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "study.journal")))
    study = optuna.load_study(study_name="kill-soak", storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    truncated = []
    for f in run.rglob("*"):
        try:
            if f.name.startswith("search_gen_state-"):
                pickle.loads(f.read_bytes())  # Ray Tune pickles these despite the name
            elif f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".safetensors":
                load_file(str(f))
            elif f.name.endswith(".tmp"):
                truncated.append(str(f))
        except Exception:
            truncated.append(str(f))
    result = {
        "kills": kills,
        "final_exit_code": final.returncode,
        "final_run_s": round(time.time() - start, 1),
        "trials_target": args.trials,
        "complete": len(complete),
        "distinct_complete_numbers": len({t.number for t in complete}),
        "failed": len(failed),
        "failed_without_reason": sum("fail_reason" not in t.user_attrs for t in failed),
        "truncated_files": truncated,
        "ok": (final.returncode == 0 and len(complete) == args.trials
               and len({t.number for t in complete}) == args.trials and not truncated
               and all(k["orphaned_processes"] == 0 for k in kills)),
    }
    result["backend"] = args.backend
    result["stray_after_final_run"] = len(_wait_for_no(stray, timeout=30))
    result["ok"] = result["ok"] and result["stray_after_final_run"] == 0
    (HERE / f"results-{args.backend}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The latencies the report shows: the trials' own timings, or ``ranksearch latency``'s."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from ranksearch.conventions import baseline_key, trial_key
from ranksearch.runs import DamagedFile, RunDir, read_json

__all__ = ["latency_source", "use_timings"]


def _timing_key(row: dict[str, Any]) -> str | None:
    """The key of a row's model in ``latency.json`` (see :mod:`ranksearch.latency`)."""
    if row["kind"] == "reference":
        return "reference"
    if row["kind"] == "svd":
        return trial_key(row["number"])
    if row["kind"].startswith("baseline:"):
        return baseline_key(row["method"], row["target"])
    return None


def _timings(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``latency.json``, or None where there is none or it is damaged (then the
    trials' own timings stand, with a warning: ``ranksearch latency`` rewrites it)."""
    path = RunDir(run_dir).latency_path
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except DamagedFile as err:
        warnings.warn(f"{err}; using the trials' own timings", stacklevel=3)
        return None


def use_timings(rows: list[dict[str, Any]], run_dir: Path) -> None:
    """Replace every row's latency by the run's ``latency.json`` timing of its model, when
    ``ranksearch latency`` wrote one: timed one model at a time, they are free of the load of
    other workers. A model it did not time gets none, so that the two kinds never mix."""
    timings = _timings(run_dir)
    if timings is None:
        return
    for row in rows:
        key = _timing_key(row)
        if key is not None:
            row["latency_ms"] = timings["models"].get(key, {}).get("latency_ms", math.nan)


def latency_source(run_dir: Path | None) -> str:
    """How the latencies of :func:`trials_frame` were measured, in words."""
    t = _timings(run_dir) if run_dir is not None else None
    if t is None:
        return "timed by each trial in its own process (other workers on the host share its cores)"
    return (f"timed one model at a time by `ranksearch latency` on {t['host']} ({t['cpu']}), "
            f"batch {t['batch_size']}, {t['threads']} threads")

"""The latencies the report shows: the trials' own timings, or ``ranksearch latency``'s."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ranksearch.conventions import baseline_key, trial_key
from ranksearch.runs import RunDir, read_json

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


def use_timings(rows: list[dict[str, Any]], run_dir: Path) -> None:
    """Replace every row's latency by the run's ``latency.json`` timing of its model, when
    ``ranksearch latency`` wrote one: timed one model at a time, they are free of the load of
    other workers. A model it did not time gets none, so that the two kinds never mix."""
    path = RunDir(run_dir).latency_path
    if not path.is_file():
        return
    timings = read_json(path)
    for row in rows:
        key = _timing_key(row)
        if key is not None:
            row["latency_ms"] = timings["models"].get(key, {}).get("latency_ms", math.nan)


def latency_source(run_dir: Path | None) -> str:
    """How the latencies of :func:`trials_frame` were measured, in words."""
    path = RunDir(run_dir).latency_path if run_dir is not None else None
    if path is None or not path.is_file():
        return "timed by each trial in its own process (other workers on the host share its cores)"
    t = read_json(path)
    return (f"timed one model at a time by `ranksearch latency` on {t['host']} ({t['cpu']}), "
            f"batch {t['batch_size']}, {t['threads']} threads")

"""Print the Markdown tables of ``benchmarks/scale/README.md`` from ``results/*.json``.

    python benchmarks/scale/summarize.py [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str, quick: bool) -> dict[str, Any] | None:
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ms(stats: dict[str, Any], key: str = "median") -> str:
    return f"{stats[key] * 1e3:,.0f}" if stats.get("n") else "–"


def _s(stats: dict[str, Any], key: str = "median") -> str:
    return f"{stats[key]:.2f}" if stats.get("n") else "–"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def sampler_table(data: dict[str, Any]) -> str:
    """Median suggestion time per sampler (rows) and finished trials (columns)."""
    sizes = data["settings"]["sizes"]
    by_sampler: dict[str, dict[int, dict[str, Any]]] = {}
    for cell in data["cells"]:
        by_sampler.setdefault(cell["sampler"], {})[cell["finished"]] = cell
    rows = []
    for sampler, cells in by_sampler.items():
        row = [sampler]
        for size in sizes:
            cell = cells[size]
            if cell["measured"]:
                row.append(f"{cell['seconds']['median'] * 1e3:,.1f} ms")
            elif "suggestion_over_s" in cell:
                row.append(f"> {cell['suggestion_over_s']:.0f} s (cut off)")
            else:
                row.append("not run (slower still)")
        rows.append(row)
    return _table(["sampler"] + [f"{s:,} finished" for s in sizes], rows)


def storage_table(cells: list[dict[str, Any]]) -> str:
    """One row per storage, study size and worker count."""
    rows = []
    for c in cells:
        errors = f" ({len(c['errors'])} workers failed)" if c["errors"] else ""
        rows.append([
            c["storage"], f"{c['prefill']:,}", str(c["workers"]),
            f"{c['started_per_s']:.1f}", f"{c['finished_per_s']:.1f}{errors}",
            _ms(c["next_trial_s"]), _ms(c["next_trial_s"], "p95"), _ms(c["tell_s"]),
            _ms(c["user_attr_s"]), _ms(c.get("lock_wait_s", {})),
            _ms(c["machinery_per_trial_s"]), _ms(c["machinery_per_trial_s"], "p95"),
            f"{c['round_trips_per_trial_total']:.0f}", _s(c["startup_s"]),
        ])
    return _table(["storage", "study size", "workers", "started/s", "finished/s",
                   "`_next_trial` ms", "p95", "`tell` ms", "attr write ms",
                   "host-lock wait ms", "machinery/trial ms", "p95", "round trips/trial",
                   "start-up s"], rows)


def goal_table(data: dict[str, Any], trial_minutes: float = 10.0) -> str:
    """Machinery per trial against a ``trial_minutes`` trial."""
    rows = []
    for c in data["cells"]:
        per = c["machinery_per_trial_s"]
        rows.append([
            c["storage"], f"{c['prefill']:,}", str(c["workers"]), data["settings"]["sampler"],
            f"{data['settings']['duration_s']:g} s", _s(per), _s(per, "p95"),
            _s(c.get("machinery_per_trial_unqueued_s", {})), _s(c.get("lock_wait_s", {})),
            _s(c["machinery_first_trial_s"], "median"),
            f"{100 * per['median'] / (60 * trial_minutes):.3f} %" if per.get("n") else "–",
            f"{100 * per['p95'] / (60 * trial_minutes):.3f} %" if per.get("n") else "–",
        ])
    return _table(["storage", "study size", "workers", "sampler", "stand-in trial",
                   "machinery/trial s (median)", "p95", "same less host-lock wait s",
                   "host-lock wait s", "first trial s",
                   f"share of a {trial_minutes:g}-min trial (median)", "(p95)"], rows)


def ray_table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for c in cells:
        rows.append([
            f"{c['prefill']:,}", "yes" if c.get("storage_kept_open") else "no (before the fix)",
            str(c["concurrency"]), f"{c['cpus_per_trial']:g}", f"{c['duration_s']:g} s",
            f"{c['complete']}",
            f"{c['finished_per_s']:.2f}",
            f"{c['ideal_per_s']:.2f}" if c["ideal_per_s"] else "–",
            f"{100 * c['slot_efficiency']:.0f} %",
            f"{c['concurrency'] * c['window_s'] / c['complete'] - c['duration_s']:.1f}",
            _s(c["outside_trial_s"]),
            _s(c["outside_trial_s"], "p95"), _s(c["ask_to_trainable_s"]),
            _s(c["trial_end_to_tell_s"]), _s(c["first_wave_outside_s"]), f"{c['wall_s']:.0f}",
        ])
    return _table(["study size", "storage kept open", "concurrency", "CPUs/trial",
                   "stand-in trial",
                   "trials", "finished/s", "ideal/s", "slot efficiency",
                   "slot s per trial beyond the trial",
                   "outside trial s (median)", "p95", "ask → trainable s",
                   "trial end → tell s", "first wave s", "wall s"], rows)


def report_table(data: dict[str, Any]) -> str:
    rows = []
    for c in data["cells"]:
        rows.append([
            f"{c['trials']:,}", f"{c['heartbeat_lines']:,}", f"{c['journal_mb']:.1f}",
            f"{c['cli_report_s']:.1f}", f"{c['report_s']:.1f}", f"{c['load_s']:.1f}",
            f"{c['write_report_s']:.1f}", f"{c['index_html_mb']:.2f}",
            f"{c['fresh_load_s']:.1f}", f"{c['study_rss_mb']:.0f}",
        ])
    return _table(["trials", "heartbeat lines", "journal MB", "`ranksearch report` s (cold)",
                   "same, warm process s", "of which load s", "of which `write_report` s",
                   "index.html MB", "study read by a fresh process s", "its memory MB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tables of the smoke results")
    quick = parser.parse_args().quick
    sections = []
    if data := _load("sampler_latency", quick):
        sections.append(("Sampler suggestion latency", sampler_table(data)))
    storage = [c for name in ("journal", "sqlite", "sqlite-5000", "postgresql",
                              "postgresql-5000")
               if (data := _load(f"storage_throughput-{name}", quick)) for c in data["cells"]]
    if storage:
        sections.append(("Storage throughput and latency", storage_table(storage)))
    goal = [table for name in ("goal_check", "goal_check-postgresql", "goal_check-journal")
            if (data := _load(name, quick)) for table in [goal_table(data)]]
    if goal:
        sections.append(("Goal check", "\n\n".join(goal)))
    ray = [c for name in ("ray_overhead", "ray_overhead-slack", "ray_overhead-5000-before",
                          "ray_overhead-5000")
           if (data := _load(name, quick)) for c in data["cells"]]
    if ray:
        sections.append(("Ray Tune overhead", ray_table(ray)))
    if data := _load("report_scale", quick):
        sections.append(("Report at scale", report_table(data)))
    for title, table in sections:
        print(f"### {title}\n\n{table}\n")


if __name__ == "__main__":
    main()

"""``summary.md``: the report's headline numbers as markdown."""

from __future__ import annotations

from ranksearch.conventions import FLOPS_CONVENTION
from ranksearch.report import text
from ranksearch.report.data import ReportData

__all__ = ["summary"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _latency_section(data: ReportData) -> list[str]:
    table = data.latency_reduction
    if not len(table):
        return []
    return [
        f"## Largest measured CPU speedup within a given drop of the reference {data.metric}",
        "",
        _table(text.reduction_header(table), text.reduction_rows(table)),
        "",
        "Speedup = reference latency / point latency, both measured on the deployed model "
        "(BN folded, channels_last, fp32) on the CPU at the study's latency batch and "
        f"threads (trials.csv: latency_ms), {data.latency_source}; the gap to the FLOPs "
        "table is what the CPU does not turn into time.",
        "",
    ]


def _spectrum_section(data: ReportData) -> list[str]:
    """Whether SVD training reshaped the spectrum of each model it trained."""
    df = data.trials
    trained = df[(df["kind"] == "svd") & df["spectrum_rank_before"].notna()]
    if trained.empty:
        return []
    rows = []
    for r in trained.sort_values("number").itertuples():
        change = r.spectrum_rank_after / r.spectrum_rank_before - 1
        rows.append([f"#{int(r.number)}", str(getattr(r, "param_decay", "")),
                     f"{r.spectrum_rank_before:.0f}", f"{r.spectrum_rank_after:.0f}",
                     f"{100 * change:+.1f} %"])
    return [
        "## Did SVD training move the spectrum?",
        "",
        _table(["trial", "decay", "rank at e = 0.01 before", "after SVD training", "change"],
               rows),
        "",
        "Summed over the decomposed layers, one row per SVD-trained model. Where the rank does "
        "not fall, the sparsity term did nothing and the trial was truncated SVD plus "
        "fine-tuning.",
        "",
    ]


def summary(data: ReportData) -> str:
    """The text of ``summary.md``."""
    df = data.trials
    metric = data.metric
    reference = df[df["kind"] == "reference"]
    ref_line = (
        f"- Dense reference: validation {metric} {text.pct(reference['accuracy'].iloc[0])}, "
        f"test {metric} {text.pct(reference['test_accuracy'].iloc[0])}, "
        f"{text.mflops(reference['flops'].iloc[0])}, "
        f"{reference['params'].iloc[0]:,.0f} parameters."
        if len(reference)
        else "- Dense reference: not recorded in the study."
    )
    trials_run, states = text.trial_counts(data.state_counts)
    excluded = int((data.excluded["kind"] == "svd").sum())
    baselines = df[df["kind"].str.startswith("baseline:")]
    methods = sorted(baselines["method"].value_counts().items())
    reduction = data.reduction
    lines = [
        f"# {data.title}",
        "",
        data.subtitle,
        "",
        ref_line,
        f"- SVD trials: {trials_run:,} ({states})"
        + (f"; {excluded} failed, pruned, truncated, diverged or outside the constraints, "
           "never on the front." if excluded else "."),
        f"- Pareto front: {len(data.front)} points (pareto.csv).",
        f"- Baseline runs: {len(baselines)}"
        + (" (" + ", ".join(f"{n} {m}" for m, n in methods) + ")" if len(baselines) else "")
        + ".",
        *(f"- Failed baseline run, never drawn: {row.method} {row.target:g}x: {row.reason}."
          for row in data.excluded.itertuples() if row.kind != "svd"),
        "",
        f"## Largest FLOPs reduction within a given drop of the reference {metric}",
        "",
        _table(text.reduction_header(reduction), text.reduction_rows(reduction))
        if len(reduction)
        else "No points.",
        "",
        "FLOPs reduction = reference FLOPs / point FLOPs; drops in percentage points of "
        f"validation {metric}; — where no point qualifies.",
        "",
        *_latency_section(data),
        *_spectrum_section(data),
        "## Hypervolume",
        "",
        f"{data.hypervolume:.4f} after {len(data.history)} complete full-budget SVD trials, "
        f"{text.hypervolume_text(metric)}.",
        "",
        "## Conventions",
        "",
        f"- {FLOPS_CONVENTION}.",
        f"- {text.metric_title(metric)}: {text.metric_note(metric)}; test {metric} is in "
        "trials.csv.",
        f"- Baselines: {data.baseline_rule}.",
        "- The front holds only complete trials trained on the full budget.",
        "",
    ]
    return "\n".join(lines)

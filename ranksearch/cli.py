"""The ``ranksearch`` command line: a thin face over the library.

Every user error (bad config, missing data, wrong path, unreachable storage) ends with one
line on stderr and exit code 2; nothing already computed is lost.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import EXIT_USER_ERROR, UserError


class CLIError(UserError):
    """A user error found by the command line itself."""


# --- commands ------------------------------------------------------------------------------
def cmd_search(args) -> None:
    from . import config as cfg
    from .app import start_search

    ray_only = {"--address": args.address, "--cpus-per-trial": args.cpus_per_trial,
                "--gpus-per-trial": args.gpus_per_trial}
    given = [name for name, value in ray_only.items() if value is not None]
    if given and args.backend != "ray":  # the optuna backend would run here, ignoring them
        raise CLIError(f"{given[0]}: only with --backend ray")
    config = cfg.load(args.space)
    if args.trials is not None:
        config = cfg.updated(config, "--trials", trials=args.trials)
    if args.storage:
        config = cfg.updated(config, "--storage", storage=args.storage)
    run = start_search(config, args.run_dir, source=args.space, backend=args.backend,
                       workers=args.workers, address=args.address, progress=not args.quiet,
                       gpus_per_trial=args.gpus_per_trial,
                       cpus_per_trial=1.0 if args.cpus_per_trial is None else args.cpus_per_trial)
    print(f"study done: {run.path}  (next: ranksearch report {run.path})")


def cmd_worker(args) -> None:
    from .app import join_study

    run, done = join_study(args.target, run_dir=args.run_dir, worker=args.worker_index,
                           progress=not args.quiet)
    if not args.quiet:  # the launcher's own workers run quiet
        print(f"worker done: {done} trial{'s' if done != 1 else ''} here; the study holds its "
              f"target (ranksearch status {run.path})")


def cmd_status(args) -> None:
    from .app import status_text

    print(status_text(args.run_dir))


def cmd_train(args) -> None:
    from . import config as cfg
    from .app import train_trial

    config = cfg.load(args.config)
    metrics, out = train_trial(config, args.run_dir, args.out, source=args.config,
                               progress=not args.quiet)
    print(f"{config.metric.name} {metrics['accuracy']:.4f} "
          f"(test {metrics['test_accuracy']:.4f})  "
          f"FLOPs {metrics['flops']:,} ({metrics['flops_reduction']:.2f}x fewer)  "
          f"params {metrics['params']:,}")
    print(f"ranks {metrics['ranks']}")
    print(f"written to {out}")


def cmd_report(args) -> None:
    from .app import write_report_for_run

    out = write_report_for_run(args.run_dir, args.out)
    print(f"report written to {out}/index.html")


def cmd_export(args) -> None:
    from . import config as cfg
    from .export import export_run
    from .runs import read_json

    out = export_run(args.run_dir, args.out, trial=args.trial, max_flops=args.max_flops,
                     min_accuracy=args.min_accuracy)
    metrics, metric = read_json(out / "metrics.json"), cfg.load(out / "config.yaml").metric.name
    print(f"exported trial {metrics['trial']} (validation {metric} "
          f"{100 * metrics['accuracy']:.2f} %, {metrics['flops_reduction']:.2f}x fewer FLOPs) "
          f"to {out}")


def cmd_latency(args) -> None:
    from .latency import measure_run

    result = measure_run(args.run_dir, batch_size=args.batch_size, threads=args.threads,
                         repeats=args.repeats)
    batches = " and ".join(str(b) for b in dict.fromkeys((result["batch_size"], 1)))
    print(f"{Path(args.run_dir) / 'latency.json'}: {len(result['models'])} models timed at "
          f"batch {batches} on {result['threads']} thread" + "s" * (result["threads"] != 1))


def cmd_baselines(args) -> None:
    from .baselines import run_baselines_for_run

    run_baselines_for_run(args.run_dir, progress=not args.quiet)


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    quickstart(run_dir=args.run_dir, report_dir=args.out, export_dir=args.export,
               trials=args.trials, max_batches=args.max_batches, progress=not args.quiet)


# --- parser --------------------------------------------------------------------------------
def _at_least(low: float, kind: type = int):  # noqa: ANN202
    """An argparse type: a ``kind`` number of at least ``low``, else a usage error that says
    so (``--trials -1`` would otherwise finish at once, ``--repeats 0`` time nothing)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected at least {low}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE = _at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ranksearch",
        description="Find the best low-rank version of a PyTorch network: a multi-objective "
        "search (Optuna, Ray Tune) over SVD training, reported as an accuracy-vs-FLOPs "
        "Pareto front next to filter-pruning baselines.",
    )
    parser.add_argument("--version", action="version", version=f"ranksearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("search", "start or resume a study (the same command after a crash continues it)",
            cmd_search)
    p.add_argument("space", help="search-space YAML file (see search_spaces/)")
    p.add_argument("--backend", choices=["optuna", "ray"], default="optuna",
                   help="optuna: worker processes on one storage (default); ray: Ray Tune")
    p.add_argument("--trials", type=POSITIVE, help="complete trials the study should hold in total "
                   "(default: the file's 'trials'); a larger number resumes and adds trials")
    p.add_argument("--workers", type=POSITIVE, default=1,
                   help="optuna: worker processes on this host; ray: concurrent trials")
    p.add_argument("--storage", help="Optuna storage URL (postgresql://, mysql://, sqlite:///, "
                   "redis://) or journal file; default: RUN_DIR/study.journal")
    p.add_argument("--address", help="ray: address of an existing Ray cluster (HOST:6379)")
    p.add_argument("--cpus-per-trial", type=_at_least(0, float),
                   help="ray: CPUs per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=_at_least(0, float), default=None,
                   help="ray: GPUs per trial, fractions share a card (default: 1 if CUDA)")
    p.add_argument("--run-dir", help="run directory (default: runs/NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("worker", "join a running study from another process or host", cmd_worker)
    p.add_argument("target", help="the run directory, or the storage URL or journal file of "
                   "the study; with $RANKSEARCH_STORAGE set (a URL with a password), the run "
                   "directory to use on this host, created if new")
    p.add_argument("--run-dir", help="where this worker keeps caches and trial files "
                   "(default: the run directory, or runs/NAME for a URL)")
    p.add_argument("--worker-index", type=_at_least(0), default=0,
                   help="offsets the sampler seed, so workers suggest different points")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("status", "trials done / running / failed, and the best points so far", cmd_status)
    p.add_argument("run_dir")

    p = add("report", "write the Pareto report (HTML, PNG, CSVs, summary)", cmd_report)
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: reports/NAME)")

    p = add("export", "write a chosen trial's config and compact model", cmd_export)
    p.add_argument("run_dir")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=_at_least(0), help="this trial number")
    pick.add_argument("--max-flops", help="the most accurate front point under this many FLOPs "
                      "(e.g. 2.5e6) or this reduction (e.g. 4x)")
    pick.add_argument("--min-accuracy", type=float,
                      help="the front point with the fewest FLOPs at or above this accuracy "
                      "(0-1, or a percentage above 1)")
    p.add_argument("--out", required=True, help="output folder")

    p = add("train", "run one trial from a config (an exported config reproduces its trial)",
            cmd_train)
    p.add_argument("config")
    p.add_argument("--run-dir", help="where the reference cache lives (default: runs/NAME)")
    p.add_argument("--out", help="where the trial's files go (default: RUN_DIR/train)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("latency", "time every model of a run again, one at a time on this machine (the "
            "report then uses these timings)", cmd_latency)
    p.add_argument("run_dir")
    p.add_argument("--batch-size", type=POSITIVE,
                   help="default: the config's latency.batch_size")
    p.add_argument("--threads", type=POSITIVE,
                   help="default: the config's latency.threads, else PyTorch's")
    p.add_argument("--repeats", type=POSITIVE, default=30,
                   help="timed passes per model (the fastest counts, each beside the reference's)")

    p = add("baselines", "run or complete a study's filter-pruning baselines", cmd_baselines)
    p.add_argument("run_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("quickstart", "a whole small search, its baselines, report and export on the "
            "bundled digits data (no download, no GPU)", cmd_quickstart)
    p.add_argument("--run-dir", default="runs/quickstart")
    p.add_argument("--out", default="reports/quickstart", help="report folder")
    p.add_argument("--export", default="exports/quickstart", help="export folder")
    p.add_argument("--trials", type=POSITIVE, default=None,
                   help="trials (default: the shipped space)")
    p.add_argument("--max-batches", type=POSITIVE, default=None,
                   help="cap every epoch at this many batches (a smoke run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    # ranksearch's own warnings are addressed to the user: one line, no source file or code.
    if issubclass(category, UserWarning) and str(filename).startswith(_PACKAGE + os.sep):
        return f"ranksearch: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PACKAGE = str(Path(__file__).resolve().parent)
_PYTHON_FORMAT = warnings.formatwarning


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # no command: what there is to run
        parser.print_help(sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    args = parser.parse_args(argv)
    import signal

    import optuna

    # SIGTERM (a scheduler's stop, a dying launcher's death signal to its workers) acts as
    # Ctrl-C: the running trial is given back (failed, parameters requeued) at once, rather
    # than discovered dead after the heartbeat grace period.
    stops = (signal.SIGTERM, signal.SIGINT)
    handlers = {sig: signal.signal(sig, signal.default_int_handler) for sig in stops}
    # Ctrl-C must work whatever the parent left behind: a process inherits ignored and blocked
    # signals (a shell's background job, some process managers, a test runner), and Python
    # keeps SIGINT ignored when it starts so.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)

    # ranksearch prints one line per trial itself; Optuna's per-trial INFO lines would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    python_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        args.func(args)
    except UserError as err:
        print(f"ranksearch: error: {err.for_command_line()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("ranksearch: interrupted; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os._exit(0)
    except OSError as err:  # a path that is a file, a read-only folder, a full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"ranksearch: error: {where}{err.strerror or err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:  # main() called from Python (a test, a notebook) leaves the process as it was
        warnings.formatwarning = python_format
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            if handler is not None:  # None: installed outside Python, which cannot restore it
                signal.signal(sig, handler)


if __name__ == "__main__":
    main()

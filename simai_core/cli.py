"""``simai-bench``: compare runs (the regression gate), measure the gate, write reports, show FOM tables, predict.

Exit codes: 0 fine, 1 a FOM (or round time) regressed (``gate-check``: the gate missed its
target), 2 bad input or runs that are not comparable (other world size, machine or params).
User errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from simai_core import jobscript
from simai_core.errors import SimaiError

if TYPE_CHECKING:
    from simai_core.report.loading import Run

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2
STORAGE_HELP = "pytest-benchmark storage to look run ids (0001, latest) up in (default: .benchmarks)"


class UsageError(Exception):
    """A command line argparse refused; carries its one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print the whole usage and exit; we want one line and a return code.
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_pct(text: str) -> float:
    """``'10%'`` or ``'10'`` -> 10.0; negative or non-numbers are refused."""
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (use e.g. 10%)") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"a threshold must be >= 0: {text!r}")
    return value


def parse_fail_on(text: str) -> tuple[str, float]:
    """``'get_GBps:5%'`` -> ('get_GBps', 5.0); the name may be a glob such as ``*_GBps``."""
    name, sep, pct = text.rpartition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected FOM:PCT such as get_GBps:5%, got {text!r}")
    return name, parse_pct(pct)


def parse_alpha(text: str) -> float:
    """A false-alarm rate strictly between 0 and 1: ``'0.01'`` or ``'1%'``."""
    try:
        value = float(text.strip().rstrip("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a probability: {text!r} (use e.g. 0.01)") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"alpha must be between 0 and 1: {text!r}")
    return value


def parse_floor(text: str) -> tuple[str, float]:
    """``'*_pct:2'`` -> ('*_pct', 2.0): the smallest change that matters for those FOMs, in their unit."""
    name, sep, value = text.rpartition(":")
    try:
        floor = float(value)
    except ValueError:
        floor = -1.0
    if not sep or not name or not floor >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected FOM:VALUE such as '*_pct:1' or final_skill:0.1, got {text!r}")
    return name, floor


def _gate_options(cmd: argparse.ArgumentParser) -> None:
    """The options that decide a comparison, shared by ``compare`` and ``gate-check``."""
    cmd.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)
    cmd.add_argument("--threshold", type=parse_pct, default=10.0, metavar="PCT",
                     help="smallest relative change that matters (default 10%%)")
    cmd.add_argument("--fail-on", type=parse_fail_on, action="append", default=[], metavar="FOM:PCT",
                     help="own threshold for a FOM, glob or time.median/time.mean (repeatable)")
    cmd.add_argument("--floor", type=parse_floor, action="append", default=[], metavar="FOM:VALUE",
                     help="absolute floor of the change of a FOM (glob), in its unit; defaults '*_pct:1' "
                          "and '*skill*:0.1' (repeatable)")
    cmd.add_argument("--alpha", type=parse_alpha, default=None, metavar="P",
                     help="family-wise false-alarm rate of the significance tests of one comparison (default 0.01)")
    cmd.add_argument("--null", choices=("margin", "zero"), default="margin",
                     help="the test's null hypothesis: no change beyond the threshold (default), or no change at all")
    cmd.add_argument("--ignore-stats", action="store_true",
                     help="show pytest-benchmark's round times but gate on FOMs only")
    cmd.add_argument("--no-noise", action="store_true",
                     help="fail on any change past the threshold, significant or not")
    cmd.add_argument("--ignore-backend", action="store_true",
                     help="match benchmarks regardless of backend (to compare two backends' runs)")
    cmd.add_argument("--test", choices=("run", "rounds"), default="run",
                     help="run: runs are the unit, with a between-run noise term (default); "
                          "rounds: the earlier Mann-Whitney test of pooled rounds")
    cmd.add_argument("--noise", type=Path, default=None, metavar="FILE",
                     help="between-run noise per metric, measured by gate-check --write-noise (default: "
                          "estimated from each pair's own blocks of rounds)")
    cmd.add_argument("--gate-untested", action="store_true",
                     help="fail untested figures (too few rounds, one value per rank) on the threshold alone")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``simai-bench`` and its subcommands."""
    parser = _Parser(prog="simai-bench", description="Compare and report SimAI-Bench runs (pytest-benchmark JSON).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cmp_ = sub.add_parser("compare", help="compare runs FOM by FOM; exit 1 on a regression")
    cmp_.add_argument("base", metavar="BASE", help="base run: JSON file or storage run id")
    cmp_.add_argument("new", metavar="NEW", nargs="+", help="run(s) to compare against BASE")
    _gate_options(cmp_)
    cmp_.add_argument("--only-changed", action="store_true", help="list only rows past their threshold")

    gate = sub.add_parser("gate-check", help="measure the gate on N runs of one command: false alarms, detections")
    gate.add_argument("runs", metavar="RUN", nargs="+", help="two or more runs of the same benchmark command")
    gate.add_argument("--change", type=parse_pct, default=25.0, metavar="PCT",
                      help="synthetic change injected into the newer run of each pair (default 25%%)")
    gate.add_argument("--all-metrics", action="store_true", help="list every metric, not only those with a miss")
    gate.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the counts as JSON")
    gate.add_argument("--calibrate", type=int, default=0, metavar="K",
                      help="measure the between-run noise on the first K runs and count the pairs of the others")
    gate.add_argument("--write-noise", type=Path, default=None, metavar="FILE",
                      help="write the between-run noise of all the runs, for compare --noise")
    gate.add_argument("--suggest", action="store_true",
                      help="print --fail-on/--floor options wide enough for the changes seen between these runs")
    _gate_options(gate)

    rep = sub.add_parser("report", help="write report.md/report.html with plots")
    rep.add_argument("runs", metavar="RUN", nargs="+", help="JSON file(s) or storage run id(s)")
    rep.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write into")
    rep.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)

    show = sub.add_parser("show", help="print the FOM table of a run")
    show.add_argument("runs", metavar="RUN", nargs="+", help="JSON file(s) or storage run id(s)")
    show.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)

    summ = sub.add_parser("summary", help="what ran, and the best and worst ratio to the raw limit (make bench)")
    summ.add_argument("run", metavar="RUN", help="JSON file or storage run id")
    summ.add_argument("--report", type=Path, default=None, metavar="DIR", help="also write the report and plots there")
    summ.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)

    jobscript.add_parser(sub)

    pred = sub.add_parser("predict", help="predict a motif-6 workflow's staging traffic from a micro run (--check: "
                                          "against a mini run)")
    pred.add_argument("micro", metavar="MICRO", nargs="+",
                      help="micro run(s) of this machine (one per world size; the busy_warm benchmarks once per "
                           "trainer size: --simai-trainer-size)")
    pred.add_argument("--check", metavar="MINI", action="append", default=None,
                      help="predict every motif-6 benchmark of this mini run and print predicted vs measured; "
                           "repeated (runs of one command): per benchmark, the measured mean and range")
    pred.add_argument("--within", type=float, default=30.0, metavar="PCT",
                      help="--check over repeated runs: count the runs the prediction is within PCT %% of (default 30)")
    pred.add_argument("--backend", default=None, help="backend to predict (default: every one the micro run measured)")
    pred.add_argument("--ranks", type=int, default=4, help="MPI ranks of the workflow (default 4)")
    pred.add_argument("--model", choices=("mlp", "gnn"), default="mlp", help="surrogate (default mlp)")
    pred.add_argument("--sync-steps", type=int, default=20, help="sync steps of the run (default 20)")
    pred.add_argument("--contention", choices=("node", "callers"), default="node",
                      help="price each call as measured with as many micro ranks as the workflow has (node, default) "
                           "or as make the same call at once (callers)")
    pred.add_argument("--fetch-fraction", type=float, default=1.0,
                      help="share of sync steps at which a new checkpoint reaches the simulation (default 1)")
    pred.add_argument("--epochs-per-sync", type=float, default=None,
                      help="epochs the trainer trains per sync step (default: checkpoint-every x fetch-fraction)")
    for name, kind, what in (("problem-size", str, "debug/small/medium/large/very_large (default small)"),
                             ("inputs", str, "well_posed or reference (default well_posed)"),
                             ("step-time", float, "seconds of emulated work per step (default 0.5)"),
                             ("train-interval", int, "steps between sync points (default 5)"),
                             ("sim-fraction", float, "share of ranks that simulate (default 0.5)"),
                             ("checkpoint-every", int, "epochs between checkpoints (default 10)"),
                             ("mini-batch", int, "trainer mini-batch"), ("epoch-batches", int, "mini-batches per epoch")):
        pred.add_argument(f"--simai-{name}", type=kind, default=None, help=f"as the mini benchmark's option: {what}")
    pred.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)
    return parser


def _load(specs: Sequence[str], storage: Path | None) -> list[Run]:
    from simai_core.report.loading import load_run

    # Short labels (file names, run ids) for table headers; the typed argument where names clash,
    # and a position where even that clashes (the same run given twice).
    names = [Path(s).name for s in specs]
    labels = [spec if names.count(name) > 1 else name for spec, name in zip(specs, names, strict=True)]
    labels = [f"{name}#{i + 1}" if labels.count(label) > 1 else label
              for i, (label, name) in enumerate(zip(labels, names, strict=True))]
    runs = [load_run(spec, storage, label=label) for spec, label in zip(specs, labels, strict=True)]
    return runs


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    """Compare each NEW run with BASE; 1 when any regressed."""
    from simai_core.report.compare import compare_runs

    base, *news = _load([args.base, *args.new], args.storage)
    comparisons = [compare_runs(base, new, **_compare_options(args)) for new in news]
    for comp in comparisons:
        comp.render(console, only_changed=args.only_changed)
    if not all(c.comparable for c in comparisons):
        return EXIT_USAGE
    return EXIT_OK if all(c.ok for c in comparisons) else EXIT_REGRESSION


def _compare_options(args: argparse.Namespace) -> dict[str, Any]:
    from simai_core.report.compare import ABS_FLOORS, DEFAULT_ALPHA
    from simai_core.report.gate_check import read_noise

    return {"threshold_pct": args.threshold, "fail_on": dict(args.fail_on), "gate_stats": not args.ignore_stats,
            "ignore_backend": args.ignore_backend, "noise_aware": not args.no_noise,
            "alpha": DEFAULT_ALPHA if args.alpha is None else args.alpha, "floors": {**ABS_FLOORS, **dict(args.floor)},
            "null": args.null, "test": args.test, "gate_untested": args.gate_untested,
            "noise": None if args.noise is None else read_noise(args.noise)}


def cmd_gate_check(args: argparse.Namespace, console: Console) -> int:
    """Count false alarms and detections over every pair of the runs; 1 when the target is missed."""
    from simai_core.report.gate_check import between_run_noise, gate_check, write_noise

    if len(args.runs) < 2:
        raise UsageError("gate-check needs two or more runs")
    runs = _load(args.runs, args.storage)
    options = _compare_options(args)
    if args.write_noise is not None:
        try:
            write_noise(args.write_noise, between_run_noise(runs, options["floors"]))
        except OSError as exc:
            raise SimaiError(f"{args.write_noise}: cannot write ({exc.strerror or exc})") from None
    try:
        report = gate_check(runs, args.change, calibrate=args.calibrate, **options)
    except ValueError as exc:
        raise UsageError(f"--calibrate {args.calibrate}: {exc}") from None
    report.render(console, all_metrics=args.all_metrics)
    if args.suggest and report.suggestions():
        console.print("options that let these runs' changes through (1.5x the largest): "
                      + " ".join(report.suggestions()), markup=False, soft_wrap=True)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.as_dict(), indent=1))
        except OSError as exc:
            raise SimaiError(f"{args.json}: cannot write ({exc.strerror or exc})") from None
    return EXIT_OK if report.target_met else EXIT_REGRESSION


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Write the report and its plots."""
    from simai_core.report.markdown import write_report

    runs = _load(args.runs, args.storage)
    try:
        written = write_report(runs, args.output)
    except OSError as exc:
        raise SimaiError(f"{args.output}: cannot write the report ({exc.strerror or exc})") from None
    console.print(f"wrote {written['markdown']} and {written['html']} with {len(written['images'])} plot(s)",
                  markup=False, soft_wrap=True)  # paths to copy: never wrapped
    return EXIT_OK


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    """Print the FOM tables."""
    from simai_core.report.table import print_fom_table

    for run in _load(args.runs, args.storage):
        print_fom_table(run, console)
    return EXIT_OK


def cmd_summary(args: argparse.Namespace, console: Console) -> int:
    """Print the summary of one run, after writing its report when asked."""
    from simai_core.report.summary import summary_lines

    [run] = _load([args.run], args.storage)
    if args.report is not None:
        cmd_report(argparse.Namespace(runs=[args.run], output=args.report, storage=args.storage), Console(quiet=True))
    for line in summary_lines(run, str(args.report) if args.report is not None else None):
        console.print(line, highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    """Print a workflow's predicted traffic per backend, or predicted vs measured for a mini run."""
    from simai_core.predict import check, estimate, model, workflow

    micro = _load(args.micro, args.storage)
    names = [args.backend] if args.backend else model.backends(micro)
    size = args.simai_problem_size or "small"
    models = {name: model.cost_model(micro, name, size) for name in names}
    empty = [name for name, m in models.items() if not m.curves]
    if not names or empty:
        raise SimaiError(f"the micro run(s) measured no put/get of {', '.join(empty) or 'any backend'}")
    if args.check is not None:
        results = [r for mini in _load(args.check, args.storage) for r in check.check_runs(mini, micro, args.contention)]
        check.render_check(results, console, args.within)
        return EXIT_OK
    try:
        cfg = workflow.workflow_config(size, args.model, args.simai_inputs,
                                       args.simai_step_time, args.simai_train_interval, args.simai_sim_fraction,
                                       args.simai_checkpoint_every, args.simai_mini_batch, args.simai_epoch_batches)
        shape = workflow.shape(cfg, args.ranks, args.fetch_fraction, args.epochs_per_sync)
    except ValueError as exc:  # pydantic's errors and a rank count that cannot split
        raise UsageError(f"bad workflow options: {str(exc).splitlines()[0]}") from None
    for name in names:
        estimate.render(estimate.predict(models[name], shape, args.sync_steps, contention=args.contention), console)
    return EXIT_OK


def _console() -> Console:
    """Stdout console; piped into a CI log (no terminal, no COLUMNS) it is 160 wide, not rich's 80."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=160)


COMMANDS = {"compare": cmd_compare, "gate-check": cmd_gate_check, "report": cmd_report, "show": cmd_show,
            "summary": cmd_summary, "predict": cmd_predict, "jobscript": jobscript.run}


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run ``simai-bench`` with ``argv`` (default: the process's); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args, console or _console())
    except UsageError as exc:
        print(f"simai-bench: error: {exc}", file=sys.stderr)
    except SimaiError as exc:
        print(f"simai-bench: error: {exc}", file=sys.stderr)
    except SystemExit as exc:  # --help and --version exit through argparse
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

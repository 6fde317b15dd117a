"""``simai-bench``: compare runs (the regression gate), write reports, show FOM tables.

Exit codes: 0 fine, 1 a FOM (or round time) regressed past its threshold, 2 bad input.
User errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``simai-bench`` and its subcommands."""
    parser = _Parser(prog="simai-bench", description="Compare and report SimAI-Bench runs (pytest-benchmark JSON).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cmp_ = sub.add_parser("compare", help="compare runs FOM by FOM; exit 1 on a regression")
    cmp_.add_argument("base", metavar="BASE", help="base run: JSON file or storage run id")
    cmp_.add_argument("new", metavar="NEW", nargs="+", help="run(s) to compare against BASE")
    cmp_.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)
    cmp_.add_argument("--threshold", type=parse_pct, default=10.0, metavar="PCT",
                      help="relative change that counts as a regression (default 10%%)")
    cmp_.add_argument("--fail-on", type=parse_fail_on, action="append", default=[], metavar="FOM:PCT",
                      help="own threshold for a FOM, glob or time.median/time.mean (repeatable)")
    cmp_.add_argument("--only-changed", action="store_true", help="list only rows past their threshold")
    cmp_.add_argument("--ignore-stats", action="store_true",
                      help="show pytest-benchmark's round times but gate on FOMs only")
    cmp_.add_argument("--no-noise", action="store_true",
                      help="fail on any change past the threshold, even where rank spreads or round scatter cover it")
    cmp_.add_argument("--ignore-backend", action="store_true",
                      help="match benchmarks regardless of backend (to compare two backends' runs)")

    rep = sub.add_parser("report", help="write report.md/report.html with plots")
    rep.add_argument("runs", metavar="RUN", nargs="+", help="JSON file(s) or storage run id(s)")
    rep.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write into")
    rep.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)

    show = sub.add_parser("show", help="print the FOM table of a run")
    show.add_argument("runs", metavar="RUN", nargs="+", help="JSON file(s) or storage run id(s)")
    show.add_argument("--storage", type=Path, default=None, metavar="DIR", help=STORAGE_HELP)
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
    comparisons = [compare_runs(base, new, args.threshold, dict(args.fail_on), gate_stats=not args.ignore_stats,
                                ignore_backend=args.ignore_backend, noise_aware=not args.no_noise) for new in news]
    for comp in comparisons:
        comp.render(console, only_changed=args.only_changed)
    return EXIT_OK if all(c.ok for c in comparisons) else EXIT_REGRESSION


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """Write the report and its plots."""
    from simai_core.report.markdown import write_report

    runs = _load(args.runs, args.storage)
    try:
        written = write_report(runs, args.output)
    except OSError as exc:
        raise SimaiError(f"{args.output}: cannot write the report ({exc.strerror or exc})") from None
    console.print(f"wrote {written['markdown']} and {written['html']} with {len(written['images'])} plot(s)", markup=False)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    """Print the FOM tables."""
    from simai_core.report.table import print_fom_table

    for run in _load(args.runs, args.storage):
        print_fom_table(run, console)
    return EXIT_OK


def _console() -> Console:
    """Stdout console; piped into a CI log (no terminal, no COLUMNS) it is 160 wide, not rich's 80."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=160)


COMMANDS = {"compare": cmd_compare, "report": cmd_report, "show": cmd_show}


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

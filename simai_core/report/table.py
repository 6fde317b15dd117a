"""The FOM table: one row per benchmark, its backend and params, then its FOMs with units.

The same rows feed the terminal (rich) and the Markdown/HTML report, so the builder
returns plain strings and the renderers only lay them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from simai_core.fom import Fom
from simai_core.report.loading import Bench, Run, as_run
from simai_core.report.units import format_params, format_range, format_value

_FIXED = ("benchmark", "backend", "params")
MAX_FOM_COLUMNS = 6  # more FOMs than this are split over several tables that fit a terminal
# What a reader of a put/get sweep looks for first, side by side: the backend, the raw limit, their ratio.
HEADLINE = ("GBps", "raw_GBps", "vs_raw")
_LOG_WIDTH = 240  # the widest a table gets when the output is a file or a CI log, not a terminal


@dataclass
class FomGrid:
    """A table as strings: headers and rows (a row has one cell per header)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # what the reference paths were, once per table


def fom_column(bench: Bench, name: str) -> str:
    """The column a FOM goes in: the op drops out, so ``put_GBps`` and ``get_GBps`` share ``GBps``."""
    op = bench.params.get("op")
    if not isinstance(op, str) or not op:
        return name
    if name.startswith(op + "_"):
        return name[len(op) + 1 :]
    return name.replace(f"_{op}_", "_", 1)  # raw_put_GBps -> raw_GBps


def format_fom(fom: Fom) -> str:
    """A FOM value with unit, followed by its rank spread when the ranks disagree."""
    text = format_value(fom.value, fom.unit)
    if fom.ranks.min != fom.ranks.max:
        text += f" (ranks {format_range(fom.ranks.min, fom.ranks.max, fom.unit)})"  # per rank, even for sums
    return text


def _sort_key(bench: Bench) -> tuple[Any, ...]:
    p = bench.params
    return (bench.base_name, bench.backend or "", str(p.get("op", "")), p.get("nbytes", 0), format_params(p))


def _params_cell(bench: Bench) -> str:
    params = bench.identity_params
    if bench.simai and bench.simai.deployment and "deployment" not in params:
        params["deployment"] = bench.simai.deployment
    return format_params(params)


def _columns(benches: list[Bench]) -> list[str]:
    """Every FOM column, in first-seen order, the :data:`HEADLINE` ones first."""
    columns: list[str] = []
    for bench in benches:
        columns += [c for c in (fom_column(bench, n) for n in bench.foms) if c not in columns]
    return [c for c in HEADLINE if c in columns] + [c for c in columns if c not in HEADLINE]


def _reference_notes(benches: list[Bench]) -> list[str]:
    """One line per backend and reference path: what ``raw`` (and ``redispy``...) meant."""
    notes: list[str] = []
    for bench in benches:
        refs = {"raw": bench.params.get("raw"), **(bench.params.get("references") or {})}
        for name, text in refs.items():
            line = f"{bench.backend or '-'} {name}: {text}"
            if isinstance(text, str) and line not in notes:
                notes.append(line)
    return notes


def _affixes(columns: list[str]) -> tuple[str, str]:
    """The ``sim_`` prefix and ``_pct`` suffix that all of several columns share ('' where none)."""
    if len(columns) < 2:
        return "", ""
    first = {c.split("_", 1)[0] for c in columns}
    last = {c.rsplit("_", 1)[-1] for c in columns}
    prefix = f"{first.pop()}_" if len(first) == 1 and all("_" in c for c in columns) else ""
    suffix = f"_{last.pop()}" if len(last) == 1 and all(c.count("_") >= 2 for c in columns) else ""
    return prefix, suffix


def grid(benches: list[Bench], title: str, columns: list[str] | None = None) -> FomGrid:
    """The FOM grid of some benchmarks (default columns: the union of their FOMs, in first-seen order).

    A shared prefix and suffix (``sim_*_pct``) move from the headers into the title.
    """
    benches = sorted(benches, key=_sort_key)
    columns = _columns(benches) if columns is None else columns
    rows = []
    for bench in benches:
        cells = {fom_column(bench, n): format_fom(f) for n, f in bench.foms.items()}
        rows.append([bench.base_name, bench.backend or "-", _params_cell(bench)] + [cells.get(c, "") for c in columns])
    prefix, suffix = _affixes(columns)
    headers = [c[len(prefix) : len(c) - len(suffix)] for c in columns]
    if prefix or suffix:
        title += f": {prefix}*{suffix}"
    return FomGrid(title, list(_FIXED) + headers, rows, _reference_notes(benches))


def column_chunks(columns: list[str], limit: int = MAX_FOM_COLUMNS) -> list[list[str]]:
    """Split many FOM columns into tables of at most ``limit``: a prefix family (``sim_*``) per table, the rest together."""
    if len(columns) <= limit:
        return [columns]
    headline = [c for c in HEADLINE if c in columns]
    if headline:  # the headline together in the first table
        return [headline, *column_chunks([c for c in columns if c not in headline], limit)]
    by_prefix: dict[str, list[str]] = {}
    for c in columns:
        by_prefix.setdefault(c.split("_", 1)[0], []).append(c)
    families = [g for g in by_prefix.values() if len(g) > 1]
    rest = [c for g in by_prefix.values() if len(g) == 1 for c in g]
    chunks = [g[i : i + limit] for g in [*families, rest] for i in range(0, len(g), limit)]
    return [c for c in chunks if c]


def _group_title(run: Run, level: str | None, test: str) -> str:
    what = " / ".join(filter(None, [level or "plain pytest-benchmark", test]))
    return f"{run.label}: {what}"


def fom_grids(run: Run | dict[str, Any]) -> list[FomGrid]:
    """One grid per level and test function, so different benchmarks do not share columns; wide ones split."""
    run = as_run(run)
    groups: dict[tuple[str | None, str], list[Bench]] = {}
    for bench in run.benches:
        groups.setdefault((bench.level, bench.base_name), []).append(bench)
    grids = []
    for key, benches in groups.items():
        chunks = column_chunks(_columns(benches))
        for columns in chunks:
            grids.append(grid(benches, _group_title(run, *key), columns))
    return grids


def _fom_cell(text: str) -> Text:
    value, sep, spread = text.partition(" (")
    cell = Text(value)
    if sep:  # the rank spread on its own line, dimmed: the value is what people scan for
        cell.append("\n" + spread.rstrip(")").removeprefix("ranks ").replace(" %", ""), style="dim")
    return cell


def _rich(g: FomGrid) -> Table:
    table = Table(title=Text(g.title), title_justify="left", caption="dim: FOM range over ranks (min..max)",
                  caption_justify="left")
    for i, header in enumerate(g.headers):
        fixed = i < len(_FIXED)
        table.add_column(Text(header), justify="left" if fixed else "right", overflow="fold", no_wrap=fixed)
    for row in g.rows:
        head = [*row[: len(_FIXED) - 1], row[len(_FIXED) - 1].replace(", ", "\n")]  # a param a line
        table.add_row(*map(Text, head), *(_fom_cell(c) for c in row[len(_FIXED) :]))
    return table


def fom_table(run: Run | dict[str, Any]) -> Table:
    """The FOM table of a run (an already-loaded JSON dict is fine) as one rich Table."""
    run = as_run(run)
    return _rich(grid(run.benches, run.label))


def print_fom_table(run: Run | dict[str, Any], console: Console | None = None) -> None:
    """Print the FOM tables of a run, one per benchmark level and motif, with the machine it ran on."""
    run = as_run(run)
    grids = fom_grids(run)
    tables = [_rich(g) for g in grids]
    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or a CI log: as wide as the tables need, not 80 columns
            console = Console(width=min(_LOG_WIDTH, max((_natural_width(t) for t in tables), default=80)))
    simai = run.machine_info.get("simai") or {}
    where = ", ".join(filter(None, [str(run.machine_info.get("node") or ""), str(simai.get("profile") or "")]))
    header = Text(run.label, style="bold")
    header.append((f" on {where}" if where else "") + f": {len(run.benches)} benchmarks")
    console.print(header)
    for g, table in zip(grids, tables, strict=True):
        console.print(table)
        for note in g.notes:  # unwrapped: a log keeps the whole line
            console.print(Text(note, style="dim"), soft_wrap=True)


def _natural_width(table: Table) -> int:
    """The width ``table`` takes when nothing forces it narrower."""
    from rich.measure import Measurement

    wide = Console(width=10_000)
    return Measurement.get(wide, wide.options, table).maximum

"""The report: ``report.md`` and ``report.html`` with FOM tables and PNG plots, linked relatively.

The report is built as a list of blocks once, then rendered to Markdown and to HTML, so
both say the same thing. A missing piece (no micro sweep, no mini benchmark, no sidecar)
becomes a line in the report, never an error.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simai_core.events import read_events
from simai_core.report.loading import Bench, Run
from simai_core.report.table import FomGrid, fom_grids


@dataclass
class Block:
    """One piece of the report: kind is ``h1``/``h2``/``p``/``list``/``img``/``table``."""

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()
    grid: FomGrid | None = None
    src: str = ""


def _run_line(run: Run) -> str:
    mi, ci = run.machine_info, run.data.get("commit_info") or {}
    simai = mi.get("simai") or {}
    commit = str(ci.get("id") or "")[:10] + (" (dirty)" if ci.get("dirty") else "")
    bits = [f"node {mi.get('node')}" if mi.get("node") else "", f"profile {simai['profile']}" if "profile" in simai else "",
            str(run.data.get("datetime") or ""), f"commit {commit}" if commit else "", f"{len(run.benches)} benchmarks"]
    return f"{run.label}: " + ", ".join(b for b in bits if b)


def _outcomes(runs: list[Run]) -> list[str]:
    lines = []
    for run in runs:
        for b in run.benches:
            out = getattr(b.simai, "outcome", None) if b.simai else None
            if isinstance(out, dict):
                verdict = "converged" if out.get("converged") else "did NOT converge"
                if out.get("criterion", "mse") == "mse":
                    rule = f"criterion mse: final MSE {out.get('final_mse')}, tolerance {out.get('tolerance')}"
                else:
                    rule = (f"criterion {out.get('criterion')}: skill {out.get('skill')} (min {out.get('min_skill')}), "
                            f"final MSE {out.get('final_mse')}, persistence {out.get('persistence_mse')}")
                lines.append(f"{b.name}: {verdict} ({out.get('reason', '')}; {rule})")
    return lines


def _micro_blocks(runs: list[Run], outdir: Path) -> list[Block]:
    from simai_core.report import plots

    blocks = [Block("h2", "Micro benchmarks: throughput and latency vs message size")]
    written = [p for p in (plots.plot_micro(runs, outdir, k) for k in ("throughput", "latency")) if p]
    if not written:
        return [*blocks, Block("p", "No micro put/get sweep in the input (params `nbytes`, FOMs `put_*`/`get_*`): "
                                    "plots skipped.")]
    for p in written:
        blocks += [Block("img", p.title, src=p.path.name), Block("p", p.caption)]
    return blocks


def _mini_blocks(runs: list[Run], outdir: Path) -> list[Block]:
    from simai_core.report import plots

    blocks = [Block("h2", "Mini benchmarks: overhead breakdown")]
    p = plots.plot_overhead(runs, outdir)
    if p is None:
        blocks.append(Block("p", "No mini benchmark with `sim_*_pct`/`train_*_pct` FOMs in the input: breakdown skipped."))
    else:
        blocks += [Block("img", p.title, src=p.path.name), Block("p", p.caption)]
    outcomes = _outcomes(runs)
    if outcomes:
        blocks += [Block("p", "Outcomes:"), Block("list", items=tuple(outcomes))]
    return blocks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80]


def _timeline(run: Run, bench: Bench, outdir: Path, index: int) -> tuple[list[Block], str]:
    from simai_core.report import plots

    path = run.events_path(bench)
    if path is None:
        return [], f"{bench.name}: events sidecar named but the run was not loaded from a file"
    try:
        events = read_events(path)
    except (OSError, ValueError) as exc:
        return [], f"{bench.name}: events sidecar {path} unreadable ({type(exc).__name__}: {exc})"
    out = outdir / f"timeline_{index}_{_slug(bench.name)}.png"
    p = plots.plot_timeline(events, out, f"{bench.name} ({run.label})")
    if p is None:
        return [], f"{bench.name}: events sidecar {path} holds no events"
    return [Block("img", p.title, src=out.name), Block("p", p.caption)], ""


def _timeline_blocks(runs: list[Run], outdir: Path, limit: int = 12) -> list[Block]:
    blocks, skipped = [Block("h2", "Workflow timeline")], []
    with_events = [(r, b) for r in runs for b in r.benches if b.simai and getattr(b.simai, "events", None)]
    if not with_events:
        return [*blocks, Block("p", "No benchmark names an events sidecar (`extra_info.simai.events`): "
                                    "timeline skipped.")]
    for i, (run, bench) in enumerate(with_events[:limit]):
        got, why = _timeline(run, bench, outdir, i)
        blocks += got
        skipped += [why] if why else []
    if len(with_events) > limit:
        skipped.append(f"{len(with_events) - limit} more timelines left out (first {limit} shown)")
    if skipped:
        blocks += [Block("p", "Skipped:"), Block("list", items=tuple(skipped))]
    return blocks


def build(runs: list[Run], outdir: Path) -> list[Block]:
    """Write the plots into ``outdir`` and return the report's blocks."""
    blocks = [Block("h1", "SimAI-Bench report"), Block("list", items=tuple(_run_line(r) for r in runs))]
    blocks.append(Block("h2", "Figures of merit"))
    blocks += [Block("table", g.title, grid=g) for r in runs for g in fom_grids(r)]
    return blocks + _micro_blocks(runs, outdir) + _mini_blocks(runs, outdir) + _timeline_blocks(runs, outdir)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"{'#' * int(b.kind[1])} {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "img":
            alt = b.text.replace("[", "\\[").replace("]", "\\]")  # test ids have brackets
            out.append(f"![{alt}]({b.src})")
        elif b.kind == "table" and b.grid:
            g = b.grid
            lines = [f"**{g.title}**", "", "| " + " | ".join(map(_md_cell, g.headers)) + " |",
                     "|" + "|".join("---" for _ in g.headers) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in g.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _html_block(b: Block) -> str:
    e = html.escape
    if b.kind in ("h1", "h2"):
        return f"<{b.kind}>{e(b.text)}</{b.kind}>"
    if b.kind == "p":
        # The only Markdown in paragraphs is `code`.
        return "<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", e(b.text)) + "</p>"
    if b.kind == "list":
        return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>"
    if b.kind == "img":
        return f'<p><img src="{e(b.src)}" alt="{e(b.text)}"></p>'
    if b.kind == "table" and b.grid:
        head = "".join(f"<th>{e(h)}</th>" for h in b.grid.headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.grid.rows)
        return f"<table><caption>{e(b.grid.title)}</caption><tr>{head}</tr>{body}</table>"
    return ""


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
          "td{text-align:right}td:nth-child(-n+3){text-align:left}caption{font-weight:bold;text-align:left}"
          "img{max-width:100%}")


def to_html(blocks: list[Block]) -> str:
    """Render blocks as a standalone HTML page (images by relative link)."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SimAI-Bench report</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(runs: list[Run], outdir: Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and the PNGs into ``outdir``; return what was written."""
    outdir.mkdir(parents=True, exist_ok=True)
    blocks = build(runs, outdir)
    (outdir / "report.md").write_text(to_markdown(blocks))
    (outdir / "report.html").write_text(to_html(blocks))
    images = [b.src for b in blocks if b.kind == "img"]
    return {"markdown": outdir / "report.md", "html": outdir / "report.html", "images": images}

"""FOM tables, plots and the Markdown/HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from simai_core.report import plots, samples
from simai_core.report.loading import ReportInputError, parse_run
from simai_core.report.markdown import write_report
from simai_core.report.table import column_chunks, fom_table, print_fom_table
from simai_core.report.units import format_params, format_range, format_value

PNG = b"\x89PNG\r\n\x1a\n"


def _text(renderable=None, run=None) -> str:
    console = Console(record=True, width=240, color_system=None)
    if run is not None:
        print_fom_table(run, console)
    else:
        console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(1.23e-5, "s", "12.3 µs"), (0.0456, "s", "45.6 ms"), (2.5, "s", "2.50 s"), (0.372, "GB/s", "372 MB/s"),
     (12.34, "GB/s", "12.3 GB/s"), (6.0, "%", "6.00 %"), (0.155, "ratio", "0.155\u00d7"), (1024.0, "count", "1,024"),
     (float("nan"), "s", "n/a")],
)
def test_values_read_in_human_units(value, unit, text):
    assert format_value(value, unit) == text


def test_params_and_ranges_in_human_units():
    assert format_params({"nbytes": 64 * 2**20, "op": "put"}) == "op=put, size=64MiB"
    assert format_range(62.5e-6, 66.3e-6, "s") == "62.5..66.3 µs"
    assert format_range(0.9996e-3, 1.2e-3, "s") == "1.00..1.20 ms"
    assert format_range(0.5e-3, 2e-3, "s") == "500 µs..2.00 ms"
    assert format_value(0.9995e-3, "s") == "0.999 ms"  # not "1000 µs"


def test_fom_table_from_a_json_dict_one_row_per_benchmark():
    run = samples.micro_run(sizes=(1024, 64 * 2**20))
    table = fom_table(run)
    assert table.row_count == 8
    headers = [str(c.header) for c in table.columns]
    # put_* and get_* share columns: the op is in the params; the backend's GB/s and its ratio to raw come first.
    assert headers == ["benchmark", "backend", "params", "GBps", "vs_raw", "latency_s"]
    text = _text(table)
    assert "size=64MiB" in text and "op=get" in text
    assert "GB/s" in text and "µs" in text
    assert re.search(r"\d\.\.\d", text)  # rank spread shown where ranks differ


def _suite_like_run() -> dict:
    """As the suite writes them: a raw reference FOM, settings in params, a checkpoint test with push/pull."""
    run = samples.micro_run(backends=("redis",), sizes=(1024, 4096))
    for b in run["benchmarks"]:
        op = b["extra_info"]["simai"]["params"]["op"]
        b["extra_info"]["simai"]["params"].update(rounds=50, raw="redis-py SET/GET of the raw buffer")
        b["extra_info"]["fom"][f"raw_{op}_GBps"] = samples.fom(1.0, "GB/s", "higher")
    push = samples.micro_bench("redis", "put", 38647)
    push["name"], push["fullname"] = "test_checkpoint[redis-push-mlp]", "t.py::test_checkpoint[redis-push-mlp]"
    push["extra_info"]["simai"]["params"] = {"op": "push", "model": "mlp", "nbytes": 38647}
    push["extra_info"]["fom"] = {f"push{k[3:]}": v for k, v in push["extra_info"]["fom"].items()}
    run["benchmarks"].append(push)
    return run


def test_tables_per_test_function_with_the_op_out_of_column_names():
    text = _text(run=_suite_like_run())
    assert "run: micro / test_put_get" in text and "run: micro / test_checkpoint" in text
    header = next(line for line in text.splitlines() if "raw_GBps" in line)
    assert "raw_put_GBps" not in text and "GBps" in header
    assert "rounds=" not in text and "raw=" not in text  # settings and descriptions are not what was measured
    assert "size=37.7KiB" in text and "model=mlp" in text


def test_only_put_get_sweeps_are_plotted_against_size():
    run = parse_run(_suite_like_run())
    data = plots.micro_series([run], "_GBps")
    assert list(data) == ["put", "get"]
    assert [n for n, _ in data["put"][("run", "redis", "test_put_get")]] == [1024, 4096]


def test_rank_spread_only_where_ranks_differ():
    run = samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",))
    text = _text(fom_table(run))
    gbps_cell = next(line for line in text.splitlines() if "redis" in line).split("│")[4]
    assert "MB/s" in gbps_cell and ".." not in gbps_cell  # this FOM has equal ranks here


def test_print_fom_table_splits_wide_mini_tables_by_component():
    text = _text(run=samples.mini_run())
    assert "mini / test_sim_train: sim_*_pct" in text and "mini / test_sim_train: train_*_pct" in text
    assert "checkpoint" in text and "workflow_s" in text and "deployment=clustered" in text
    assert column_chunks([f"c{i}" for i in range(3)]) == [["c0", "c1", "c2"]]
    chunks = column_chunks([f"sim_{i}" for i in range(5)] + [f"train_{i}" for i in range(5)] + ["workflow_s"])
    assert [len(c) for c in chunks] == [5, 5, 1]


@pytest.fixture
def runs(tmp_path: Path) -> list:
    (tmp_path / "micro.json").write_text(json.dumps(samples.micro_run()))
    (tmp_path / "mini.json").write_text(json.dumps(samples.mini_run(tmp_path)))
    micro = parse_run(json.loads((tmp_path / "micro.json").read_text()), "micro", tmp_path / "micro.json")
    mini = parse_run(json.loads((tmp_path / "mini.json").read_text()), "mini", tmp_path / "mini.json")
    return [micro, mini]


def test_report_writes_markdown_html_and_linked_plots(tmp_path, runs):
    out = tmp_path / "report"
    written = write_report(runs, out)
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    links = re.findall(r"!\[(?:[^\]\\]|\\.)*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(written["images"])
    assert {"micro_throughput.png", "micro_latency.png", "mini_overhead.png"} <= set(links)
    assert any(link.startswith("timeline_") for link in links)
    for link in links:
        data = (out / link).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        assert f'<img src="{link}"' in html
    assert "| test_put_get | filesystem | op=put, size=1KiB |" in md
    assert "converged" in md and "skipped" not in md.lower()


def test_plots_label_axes_with_units_and_have_legends(tmp_path, runs, monkeypatch):
    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_micro(runs, tmp_path, "throughput")
    plots.plot_micro(runs, tmp_path, "latency")
    plots.plot_overhead(runs, tmp_path)
    plots.plot_timeline(samples.mini_events(), tmp_path / "t.png", "timeline")
    put, get = figures["micro_throughput.png"].axes
    assert (put.get_title(), get.get_title()) == ("put", "get")
    assert "GB/s" in put.get_ylabel() and "bytes" in put.get_xlabel()
    assert put.get_xscale() == "log" and put.get_yscale() == "log"
    assert [t.get_text() for t in put.get_xticklabels()][:2] == ["1KiB", "16KiB"]
    legend = [t.get_text() for t in put.get_legend().get_texts()]
    assert legend[:2] == ["filesystem", "redis"] and "memcpy, one rank" in legend[2]
    lat = figures["micro_latency.png"].axes[0]
    assert "latency" in lat.get_ylabel() and "s" in lat.yaxis.get_major_formatter()(1e-4, 0)
    sim, train = figures["mini_overhead.png"].axes
    assert "%" in sim.get_xlabel() and (sim.get_title(), train.get_title()) == ("simulation", "training")
    assert sim.get_yticklabels()[0].get_text() == "redis / colocated / mlp / heat2d"
    overhead_legend = [t.get_text() for t in figures["mini_overhead.png"].legends[0].get_texts()]
    # Not the *_overhead_pct total (it would count the parts twice) nor compute (written next to the bar).
    assert overhead_legend == ["meta", "data", "checkpoint", "inference", "wait", "unaccounted"]
    assert sim.texts[0].get_text() == " 17.3 % (compute 82.7 %)"
    ax = figures["t.png"].axes[0]
    assert "(s)" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sim rank 0", "sim rank 1", "train rank 0"]
    kinds = [t.get_text() for t in figures["t.png"].legends[0].get_texts()]
    assert kinds == ["epoch", "step", "compute", "meta", "data", "checkpoint", "inference", "wait"]


def test_missing_pieces_are_skipped_with_a_line(tmp_path, runs):
    micro, mini = runs
    write_report([micro], tmp_path / "a")
    md = (tmp_path / "a" / "report.md").read_text()
    assert "breakdown skipped" in md and "timeline skipped" in md
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == ["micro_latency.png", "micro_throughput.png"]
    # A sidecar that went missing, and a run held as a dict (no file to resolve the sidecar from).
    (tmp_path / "events" / "mini-redis-colocated.jsonl").unlink()
    as_dict = parse_run(mini.data, "plugin")
    write_report([mini, as_dict], tmp_path / "b")
    md = (tmp_path / "b" / "report.md").read_text()
    assert "No micro put/get sweep" in md
    assert "unreadable (FileNotFoundError" in md and "not loaded from a file" in md
    assert (tmp_path / "b" / "mini_overhead.png").exists()
    assert not list((tmp_path / "b").glob("timeline_*.png"))


def test_malformed_fom_is_a_one_line_input_error():
    run = samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",))
    del run["benchmarks"][0]["extra_info"]["fom"]["put_GBps"]["better"]
    with pytest.raises(ReportInputError, match=r"bad FOM 'put_GBps' \(better: Field required\)") as info:
        parse_run(run, "x.json")
    assert "\n" not in str(info.value)


def test_a_log_gets_the_whole_table_not_80_columns(capsys):
    print_fom_table(_suite_like_run())  # stdout captured: not a terminal, as in a CI log
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "benchmark" in line and "raw_GBps" in line)
    assert "vs_raw" in header and len(header) > 80
    assert any(line.startswith("redis raw: ") for line in lines)  # what `raw` meant, on one line

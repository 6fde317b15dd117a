"""``simai-bench`` end to end: exit codes, one-line errors, storage run ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from simai_core.cli import main
from simai_core.report import samples

MACHINE_DIR = "Linux-CPython-3.11-64bit"


def _write(path: Path, doc: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def run_cli(*argv: str) -> tuple[int, str]:
    """Run the CLI in-process with a wide recording console; return (exit code, stdout text)."""
    console = Console(record=True, width=220, color_system=None)
    code = main(list(argv), console=console)
    return code, console.export_text()


@pytest.fixture
def micro(tmp_path: Path) -> dict:
    return samples.micro_run(sizes=(1024, 2**20))


@pytest.fixture
def base(tmp_path: Path, micro: dict) -> str:
    return _write(tmp_path / "base.json", micro)


def test_compare_with_itself_exits_0(base):
    code, out = run_cli("compare", base, base)
    assert code == 0
    assert "0 worse, 0 better, 0 within noise, 40 unchanged" in out and "OK" in out


def test_compare_fifty_percent_worse_exits_1_and_names_fom_and_benchmark(tmp_path, base, micro):
    new = _write(tmp_path / "new.json", samples.worsen(micro, "get_GBps", 50, bench_index=2))
    code, out = run_cli("compare", base, new)  # no samples: shown as worse, untested, not gated
    assert code == 0 and "untested: no samples (not gated)" in out
    code, out = run_cli("compare", base, new, "--gate-untested")
    assert code == 1
    assert "REGRESSION test_put_get[filesystem-get-1KiB] get_GBps" in out
    assert "FAIL: 1 regression(s)" in out


def test_compare_fifty_percent_better_exits_0_as_improvement(tmp_path, base, micro):
    new = _write(tmp_path / "new.json", samples.worsen(micro, "put_latency_s", -50))
    code, out = run_cli("compare", base, new, "--only-changed")
    assert code == 0
    assert "1 better" in out and "better by more than 10 %" in out and "put_latency_s" in out


def test_threshold_and_fail_on_options(tmp_path, base, micro):
    new = _write(tmp_path / "new.json", samples.worsen(micro, "put_GBps", 7))
    gate = ("--gate-untested",)  # no samples: the threshold alone decides
    assert run_cli("compare", base, new, *gate)[0] == 0
    assert run_cli("compare", base, new, "--threshold", "5%", *gate)[0] == 1
    assert run_cli("compare", base, new, "--fail-on", "put_GBps:5%", *gate)[0] == 1
    assert run_cli("compare", base, new, "--fail-on", "get_GBps:5%", "--fail-on", "*_latency_s:1", *gate)[0] == 0


def test_noise_can_be_switched_off(tmp_path, micro):
    # Rounds that scatter from 0.5x to 1.5x: a 15 % change of the value is within noise.
    base = json.loads(json.dumps(micro))
    f = base["benchmarks"][0]["extra_info"]["fom"]["put_GBps"]
    f["samples"] = [f["value"] * k for k in (0.5, 0.7, 0.9, 1.1, 1.3, 1.5)]
    new = samples.worsen(base, "put_GBps", 15)
    paths = _write(tmp_path / "b.json", base), _write(tmp_path / "n.json", new)
    code, out = run_cli("compare", *paths)
    assert code == 0 and "within noise (p=" in out and "1 within noise" in out
    assert run_cli("compare", *paths, "--no-noise")[0] == 1
    # The earlier pooled test: a stricter false-alarm rate keeps it noise, down to where 6 vs 6 samples
    # cannot reach it (2/924): then the row is untested and, with --gate-untested, judged on the threshold.
    assert run_cli("compare", *paths, "--alpha", "0.005", "--test", "rounds")[0] == 0
    code, out = run_cli("compare", *paths, "--alpha", "0.001", "--test", "rounds")
    assert code == 1 and "untested: 6 vs 6 samples cannot reach alpha" in out
    # A tight-scatter copy is flagged.
    f["samples"] = samples.scattered(f["value"], 10, 0.01, 1)
    paths = _write(tmp_path / "b2.json", base), _write(tmp_path / "n2.json", samples.worsen(base, "put_GBps", 15))
    code, out = run_cli("compare", *paths)
    assert code == 1 and "worse by more than 10 % (p=" in out


def test_another_world_size_is_not_comparable_exit_2(tmp_path, base, micro):
    four = json.loads(json.dumps(micro))
    for b in four["benchmarks"]:
        b["extra_info"]["simai"]["world_size"] = 4
    code, out = run_cli("compare", base, _write(tmp_path / "four.json", samples.worsen(four, "put_GBps", 50)))
    assert code == 2
    assert "not comparable: test_put_get[filesystem-put-1KiB] (world_size 2 vs 4)" in out
    assert "NOT COMPARABLE" in out and "REGRESSION" not in out


def test_percent_and_ratio_floors(tmp_path):
    mini = samples.mini_run()
    new = json.loads(json.dumps(mini))
    new["benchmarks"][0]["extra_info"]["fom"]["sim_data_pct"]["value"] += 0.8  # +13 %, 0.8 points
    paths = _write(tmp_path / "b.json", mini), _write(tmp_path / "n.json", new)
    code, out = run_cli("compare", *paths)
    assert code == 0 and "+0.800 pt" in out
    code, out = run_cli("compare", *paths, "--floor", "sim_*:0.5", "--gate-untested")
    assert code == 1 and "sim_data_pct" in out and "by more than 0.600 pt" in out  # 10 % of 6 points, above the 0.5 floor


def test_gate_check_counts_false_alarms_and_detections(tmp_path):
    micro = samples.micro_run(sizes=(1024,))
    runs = [_write(tmp_path / f"run{i}.json", samples.with_samples(micro, n=10, scatter=0.03, seed=i))
            for i in range(5)]
    # Rounds of these runs are exchangeable (no run effect): the earlier pooled test holds its rate here.
    code, out = run_cli("gate-check", *runs, "--json", str(tmp_path / "gate.json"), "--test", "rounds")
    assert code == 0, out
    assert "false alarms: 0 of 10 pairs" in out and "every figure 25 % worse: 10 of 10 pairs" in out
    counts = json.loads((tmp_path / "gate.json").read_text())
    assert counts["pairs"] == 10 and counts["false_alarm_pairs"] == 0 and counts["detected_pairs"] == 10
    # 4 benchmarks x (3 FOMs + 2 round times), each moved alone in each of the 10 pairs.
    assert counts["metric_detections_eligible"] == 4 * 5 * 10
    assert counts["metric_detections"] >= 0.95 * counts["metric_detections_eligible"]
    # Every run's rounds carry samples; each metric moved alone is caught in (nearly) every pair.
    assert all(m["detected"] >= 9 for m in counts["metrics"].values())
    # A change no larger than the threshold is not a regression: nothing to detect, and gate-check says so.
    code, out = run_cli("gate-check", *runs, "--change", "5", "--test", "rounds")
    assert code == 1 and "every figure 5 % worse: 0 of 10 pairs" in out


def test_several_new_runs_each_against_base_and_machine_warning(tmp_path, base, micro):
    other = samples.worsen(micro, "put_GBps", 50)
    other["machine_info"]["node"] = "node-b"
    code, out = run_cli("compare", base, base, _write(tmp_path / "other.json", other), "--gate-untested")
    assert code == 1
    assert "base.json#2 vs base.json#1" in out and "other.json vs base.json#1" in out
    assert "warning: the runs come from different machines (node 'node-a' vs 'node-b'" in out


def test_gate_check_names_noisy_figures_and_suggests_thresholds(tmp_path):
    # Three runs without samples (judged on the threshold alone); the third's put_GBps 20 % lower.
    run = samples.micro_run(backends=("redis",), sizes=(1024,))
    runs = [_write(tmp_path / f"r{i}.json", doc) for i, doc in enumerate((run, run, samples.worsen(run, "put_GBps", 20)))]
    code, out = run_cli("gate-check", *runs, "--suggest", "--gate-untested")
    assert code == 1 and "false alarms: 2 of 3 pairs" in out
    row = next(line for line in out.splitlines() if "put_GBps" in line)
    assert "│            2 │" in row and "20.0 %" in row  # two false alarms, the largest change 20 %
    assert "--fail-on 'put_GBps:30%'" in out
    code, out = run_cli("gate-check", *runs, "--fail-on", "put_GBps:30%", "--gate-untested")
    assert code == 0 and "false alarms: 0 of 3 pairs" in out and "25 % worse: 3 of 3 pairs" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"hello": 1}', "not a pytest-benchmark JSON"),
        ('{"benchmarks": [{"name": "x"}]}', "not a pytest-benchmark result"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, base, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert run_cli("compare", base, str(bad))[0] == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simai-bench: error: ") and message in err
    assert "Traceback" not in err


def test_unknown_schema_and_no_match_exit_2(tmp_path, base, micro, capsys):
    future = json.loads(json.dumps(micro))
    future["benchmarks"][0]["extra_info"]["simai"]["schema"] = 2
    assert run_cli("show", _write(tmp_path / "future.json", future))[0] == 2
    assert "schema is 2, this simai-bench reads schema 1 only" in capsys.readouterr().err
    mini = _write(tmp_path / "mini.json", samples.mini_run())
    assert run_cli("compare", base, mini)[0] == 2
    err = capsys.readouterr().err
    assert "no benchmark of" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "base.json", "nowhere.json"], "nowhere.json: no such file"),
        (["compare", "base.json", "base.json", "--threshold", "lots"], "not a percentage"),
        (["compare", "base.json", "base.json", "--fail-on", "5%"], "expected FOM:PCT"),
        (["compare", "base.json", "base.json", "--alpha", "2"], "alpha must be between 0 and 1"),
        (["compare", "base.json", "base.json", "--floor", "final_skill"], "expected FOM:VALUE"),
        (["gate-check", "base.json"], "two or more runs"),
        (["frobnicate"], "invalid choice"),
        (["report", "base.json"], "-o/--output"),
        (["predict"], "required: MICRO"),
        (["predict", "base.json", "--contention", "lots"], "invalid choice"),
        (["predict", "base.json"], "measured no put/get"),  # a sweep without the suite's per-op times
        ([], "required"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path, base, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_storage_run_ids(tmp_path, micro, capsys):
    storage = tmp_path / ".benchmarks"
    _write(storage / MACHINE_DIR / "0001_abc_20240501_120000.json", micro)
    _write(storage / MACHINE_DIR / "0002_def_20240502_120000.json", samples.worsen(micro, "put_GBps", 50))
    assert run_cli("compare", "0001", "2", "--storage", str(storage), "--gate-untested")[0] == 1
    assert run_cli("compare", "0001", "latest", "--storage", str(storage), "--gate-untested")[0] == 1
    assert run_cli("compare", f"{MACHINE_DIR}/0001", "0001", "--storage", str(storage))[0] == 0
    assert run_cli("compare", str(storage / MACHINE_DIR / "0001_abc_20240501_120000.json"), "0001",
                   "--storage", str(storage))[0] == 0
    capsys.readouterr()
    assert run_cli("show", "0003", "--storage", str(storage))[0] == 2
    assert "no such file or run in" in capsys.readouterr().err
    _write(storage / "Darwin-CPython-3.11-64bit" / "0001_xyz_20240503_120000.json", micro)
    assert run_cli("show", "0001", "--storage", str(storage))[0] == 2
    assert "several runs" in capsys.readouterr().err


def test_storage_defaults_to_dot_benchmarks_in_cwd(tmp_path, micro, monkeypatch):
    _write(tmp_path / ".benchmarks" / MACHINE_DIR / "0001_abc_20240501_120000.json", micro)
    monkeypatch.chdir(tmp_path)
    code, out = run_cli("show", "1")
    assert code == 0 and "test_put_get" in out and "size=1MiB" in out


def test_report_and_show(tmp_path, base):
    mini = _write(tmp_path / "mini.json", samples.mini_run(tmp_path))
    code, out = run_cli("report", base, mini, "-o", str(tmp_path / "out"))
    assert code == 0 and "with 4 plot(s)" in out
    assert "](micro_throughput.png)" in (tmp_path / "out" / "report.md").read_text()
    code, out = run_cli("show", base)
    assert code == 0
    assert "base.json on node-a, local: 8 benchmarks" in out and "GB/s" in out


def test_report_into_an_unwritable_place_exits_2(tmp_path, base, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_cli("report", base, "-o", str(blocker / "out"))[0] == 2
    assert "cannot write the report" in capsys.readouterr().err


def test_python_dash_m_entry_point(base):
    proc = subprocess.run([sys.executable, "-m", "simai_core.cli", "compare", base, base],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "unchanged" in proc.stdout


@pytest.mark.timeout(320)  # above the two runs' own limits, so a slow run fails with its output
def test_two_real_mini_runs_are_compared_benchmark_by_benchmark(tmp_path: Path) -> None:
    """A mini benchmark's params hold only what was measured, never a result: two runs must match."""
    pytest.importorskip("torch")
    pytest.importorskip("mpipartition")
    paths = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/mini", "-q", "-m", "mini and nodelocal",
                               "-k", "clustered and mlp", "--simai-problem-size", "debug", "--simai-step-time", "0.05",
                               "--benchmark-json", str(out)],
                              capture_output=True, text=True, timeout=140, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        paths.append(str(out))
    code, text = run_cli("compare", *paths)
    # 0 or 1: a mini run's figures are measured once (untested) and its time to solution swings by tens of
    # percent between identical runs; 2 would be "nothing matched" or "not comparable".
    assert code in (0, 1), text
    assert "test_online_training[nodelocal-clustered-mlp]" in text and "time_to_solution_s" in text


def test_summary_names_the_best_and_worst_ratio_and_writes_the_report(tmp_path, base):
    code, out = run_cli("summary", base, "--report", str(tmp_path / "rep"))
    assert code == 0
    assert "benchmarks on filesystem, redis" in out
    best = next(line for line in out.splitlines() if line.startswith("closest to the raw limit:"))
    worst = next(line for line in out.splitlines() if line.startswith("furthest from it:"))
    assert _ratio(best) >= _ratio(worst)
    assert (tmp_path / "rep" / "report.html").is_file() and "report.html" in out


def _ratio(line: str) -> float:
    """``... redis get 1MiB: 0.93x of raw (...)`` -> 0.93."""
    return float(line.split(": ")[-1].split("x of raw")[0])


def test_gate_check_measures_the_between_run_noise_for_compare(tmp_path):
    micro = samples.micro_run(backends=("redis",), sizes=(1024,))
    runs = [_write(tmp_path / f"run{i}.json", samples.with_samples(micro, n=10, scatter=0.03, seed=i))
            for i in range(6)]
    noise = tmp_path / "noise.json"
    code, out = run_cli("gate-check", *runs, "--calibrate", "3", "--write-noise", str(noise))
    assert "between-run noise measured on runs 1-3" in out and "of 3 pairs" in out
    assert code in (0, 1) and json.loads(noise.read_text())[0]["df"] == 5
    worse = _write(tmp_path / "worse.json", samples.worsen(json.loads(Path(runs[1]).read_text()), "put_GBps", 40))
    code, out = run_cli("compare", runs[0], worse, "--noise", str(noise))
    assert code == 1 and "REGRESSION test_put_get[redis-put-1KiB] put_GBps" in out
    assert run_cli("gate-check", *runs, "--calibrate", "5")[0] == 2

"""The regression gate: matching, FOM directions, thresholds, noise, machine warnings."""

from __future__ import annotations

import copy
import math

import pytest
from rich.console import Console

from simai_core.report import samples
from simai_core.report.compare import compare_runs, relative_change, threshold_for
from simai_core.report.loading import ReportInputError


@pytest.fixture(scope="module")
def micro() -> dict:
    return samples.micro_run(backends=("redis",), sizes=(1024, 2**20))


def _bench(run: dict, i: int = 0) -> dict:
    return run["benchmarks"][i]


def _rows(comp, metric: str) -> list:
    return [r for r in comp.rows if r.metric == metric]


def test_a_run_compared_with_itself_is_all_unchanged(micro):
    comp = compare_runs(micro, copy.deepcopy(micro))
    # 4 benchmarks x (3 FOMs + median + mean)
    assert len(comp.rows) == 4 * 5
    assert {r.status for r in comp.rows} == {"same"}
    assert comp.ok and not comp.regressions and not comp.improvements and not comp.warnings
    assert all(r.change_pct == 0 for r in comp.rows)


@pytest.mark.parametrize(("fom", "factor"), [("put_GBps", 0.5), ("put_latency_s", 1.5)])
def test_fifty_percent_worse_in_its_direction_is_a_regression(micro, fom, factor):
    new = samples.worsen(micro, fom, 50)
    before, after = (_bench(r)["extra_info"]["fom"][fom]["value"] for r in (micro, new))
    assert after == pytest.approx(factor * before)
    comp = compare_runs(micro, new)
    assert not comp.ok
    [reg] = comp.regressions
    assert reg.metric == fom and reg.benchmark == _bench(micro)["name"] == "test_put_get[redis-put-1KiB]"
    assert reg.worse_pct == pytest.approx(50)
    assert reg.change_pct == pytest.approx(-50 if fom.endswith("GBps") else 50)


@pytest.mark.parametrize("fom", ["put_GBps", "put_latency_s"])
def test_fifty_percent_better_is_an_improvement_not_a_failure(micro, fom):
    comp = compare_runs(micro, samples.worsen(micro, fom, -50))
    assert comp.ok
    [imp] = comp.improvements
    assert imp.metric == fom and imp.status == "better" and imp.worse_pct == pytest.approx(-50)


def test_threshold_and_per_fom_overrides(micro):
    new = samples.worsen(samples.worsen(micro, "put_GBps", 8), "put_latency_s", 8)
    assert compare_runs(micro, new).ok  # 8 % < default 10 %
    assert {r.metric for r in compare_runs(micro, new, threshold_pct=5).regressions} == {"put_GBps", "put_latency_s"}
    only_gbps = compare_runs(micro, new, fail_on={"put_GBps": 5.0})
    assert [r.metric for r in only_gbps.regressions] == ["put_GBps"]
    assert _rows(only_gbps, "put_GBps")[0].threshold_pct == 5.0
    by_glob = compare_runs(micro, new, fail_on={"*_latency_s": 5.0})
    assert [r.metric for r in by_glob.regressions] == ["put_latency_s"]
    # A loose override lets a FOM through that the default threshold would fail.
    assert compare_runs(micro, samples.worsen(micro, "put_GBps", 50), fail_on={"put_GBps": 60}).ok


def test_threshold_lookup_prefers_exact_name_then_strictest_glob():
    fail_on = {"get_GBps": 20.0, "*_GBps": 5.0, "get_*": 3.0}
    assert threshold_for("get_GBps", 10, fail_on) == 20.0
    assert threshold_for("put_GBps", 10, fail_on) == 5.0
    assert threshold_for("get_latency_s", 10, fail_on) == 3.0
    assert threshold_for("sim_data_pct", 10, fail_on) == 10
    assert threshold_for("x", 7, None) == 7


def test_overlapping_rank_spreads_are_noise_not_regressions(micro):
    new = samples.worsen(micro, "put_latency_s", 30)
    # Slowest and fastest rank 40 % apart in the base run: a 30 % change is inside that spread.
    base = copy.deepcopy(micro)
    f = _bench(base)["extra_info"]["fom"]["put_latency_s"]
    f["ranks"]["max"] = f["value"] * 1.4
    comp = compare_runs(base, new)
    [row] = [r for r in _rows(comp, "put_latency_s") if r.benchmark.endswith("put-1KiB]")]
    assert row.status == "noise" and "rank spreads overlap" in row.note
    assert comp.ok and row in comp.noise
    assert not compare_runs(micro, new).ok  # without the spread it fails
    assert not compare_runs(base, new, noise_aware=False).ok  # unless noise is not asked about


def test_round_scatter_makes_a_fom_change_noise(micro):
    new = samples.worsen(micro, "put_latency_s", 12)
    assert not compare_runs(micro, new).ok
    noisy = copy.deepcopy(new)
    s = _bench(noisy)["stats"]
    s["iqr"] = 0.2 * s["median"]  # rounds scatter by 20 %: a 12 % change is not telling
    comp = compare_runs(micro, noisy)
    assert comp.ok
    assert "rounds scatter" in _rows(comp, "put_latency_s")[0].note


def test_round_times_compared_by_median_and_mean_with_iqr_and_stddev(micro):
    new = copy.deepcopy(micro)
    s = _bench(new)["stats"]
    s["median"] *= 1.3
    s["mean"] *= 1.3
    comp = compare_runs(micro, new)
    assert {r.metric for r in comp.regressions} == {"time.median", "time.mean"}
    assert all(r.unit == "s" and r.better == "lower" for r in comp.regressions)
    # Scatter as large as the difference: within noise for both.
    s["iqr"] = s["stddev"] = s["median"]
    comp = compare_runs(micro, new)
    assert comp.ok and {r.metric for r in comp.noise} == {"time.median", "time.mean"}
    assert "iqr" in _rows(comp, "time.median")[0].note and "stddev" in _rows(comp, "time.mean")[0].note


def test_round_times_can_be_shown_without_gating(micro):
    new = copy.deepcopy(micro)
    _bench(new)["stats"]["median"] *= 2
    comp = compare_runs(micro, new, gate_stats=False)
    assert comp.ok
    assert _rows(comp, "time.median")[0].status == "worse"


def test_matching_by_fullname_backend_and_params(micro):
    new = copy.deepcopy(micro)
    del new["benchmarks"][0]  # gone from the new run
    extra = copy.deepcopy(_bench(micro, 1))
    extra["extra_info"]["simai"]["params"]["nbytes"] = 4096  # same fullname, other params: a different benchmark
    new["benchmarks"].append(extra)
    comp = compare_runs(micro, new)
    assert comp.only_base == ["test_put_get[redis-put-1KiB]"]
    assert comp.only_new == ["test_put_get[redis-put-1MiB]"]
    assert len({r.benchmark for r in comp.rows}) == 3


def test_more_rounds_or_another_raw_description_still_match(micro):
    new = copy.deepcopy(micro)
    for b in new["benchmarks"]:
        b["extra_info"]["simai"]["params"].update(rounds=99, raw="another reference")
    comp = compare_runs(micro, new)
    assert not comp.only_base and not comp.only_new and len(comp.rows) == 20


def test_other_backend_does_not_match_unless_asked():
    redis = samples.micro_run(backends=("redis",), sizes=(1024,))
    files = samples.micro_run(backends=("filesystem",), sizes=(1024,))
    with pytest.raises(ReportInputError, match="no benchmark"):
        compare_runs(redis, files)
    comp = compare_runs(redis, files, ignore_backend=True)
    assert len({r.benchmark for r in comp.rows}) == 2
    assert comp.rows[0].benchmark == "test_put_get[redis-put-1KiB] -> test_put_get[filesystem-put-1KiB]"
    # filesystem has the higher per-op overhead at 1 KiB: its latency is worse.
    assert "put_latency_s" in {r.metric for r in comp.regressions}
    both = samples.micro_run(sizes=(1024,))
    with pytest.raises(ReportInputError, match="two benchmarks match"):
        compare_runs(both, both, ignore_backend=True)


def test_machine_warnings_name_the_difference(micro):
    other = copy.deepcopy(micro)
    other["machine_info"]["node"] = "node-b"
    other["machine_info"]["simai"]["profile"] = "polaris"
    [warning] = compare_runs(micro, other).warnings
    assert "node-a" in warning and "node-b" in warning and "polaris" in warning
    # A measured number (memcpy bandwidth) differing alone is not another machine.
    same = copy.deepcopy(micro)
    same["machine_info"]["simai"]["memcpy_GBps"] = 7.5
    assert compare_runs(micro, same).warnings == []


def test_nan_and_zero_values():
    assert relative_change(0, 0) == 0
    assert relative_change(0, 2) == math.inf
    assert relative_change(4, 2) == -50
    base = samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",))
    new = copy.deepcopy(base)
    _bench(new)["extra_info"]["fom"]["put_vs_raw"]["value"] = float("nan")
    comp = compare_runs(base, new)
    assert _rows(comp, "put_vs_raw")[0].status == "n/a" and comp.ok


def test_a_fom_on_one_side_only_is_listed_not_gated(micro):
    new = copy.deepcopy(micro)
    foms = _bench(new)["extra_info"]["fom"]
    foms["put_ops"] = foms.pop("put_vs_raw")
    comp = compare_runs(micro, new)
    assert comp.ok
    notes = {r.metric: r.note for r in comp.rows if r.status == "n/a"}
    assert notes == {"put_vs_raw": "only in the base run", "put_ops": "only in the new run"}


def test_render_prints_an_asv_style_table_and_the_verdict(micro):
    comp = compare_runs(micro, samples.worsen(micro, "put_GBps", 50))
    console = Console(record=True, width=200, color_system=None)
    comp.render(console)
    text = console.export_text()
    assert "test_put_get[redis-put-1KiB]" in text  # brackets survive (not taken as markup)
    row = next(line for line in text.splitlines() if "put_GBps" in line and "-50.0 %" in line)
    assert row.lstrip("│ ").startswith("+")
    assert "REGRESSION test_put_get[redis-put-1KiB] put_GBps" in text
    assert "FAIL: 1 regression(s)" in text
    console = Console(record=True, width=200, color_system=None)
    comp.render(console, only_changed=True)
    assert "put_latency_s" not in console.export_text()

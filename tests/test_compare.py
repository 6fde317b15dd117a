"""The regression gate: matching and comparability, FOM directions, thresholds and floors, the test, warnings.

Tests of the threshold and matching logic use JSON without samples and ``gate_untested=True`` (untested
rows then gate on the threshold); the earlier pooled Mann-Whitney rule's own tests use ``test="rounds"``.
The run-level test's statistics are tested in tests/test_gate_runlevel.py.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
from rich.console import Console

from simai_core.report import samples
from simai_core.report.compare import compare_runs, holm, min_p_value, relative_change, threshold_for
from simai_core.report.loading import ReportInputError

compare = compare_runs


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
    # JSON from before FOMs carried samples: untested, shown as worse but not gated by default.
    [shown] = [r for r in compare_runs(micro, new).rows if r.status == "worse"]
    assert compare_runs(micro, new).ok and not shown.gating
    assert shown.note == "worse by more than 10 %, untested: no samples (not gated)"
    comp = compare_runs(micro, new, gate_untested=True)
    assert not comp.ok
    [reg] = comp.regressions
    assert reg.metric == fom and reg.benchmark == _bench(micro)["name"] == "test_put_get[redis-put-1KiB]"
    assert reg.worse_pct == pytest.approx(50)
    assert reg.change_pct == pytest.approx(-50 if fom.endswith("GBps") else 50)
    assert not reg.tested and reg.note == "worse by more than 10 %, untested: no samples"


@pytest.mark.parametrize("fom", ["put_GBps", "put_latency_s"])
def test_fifty_percent_better_is_an_improvement_not_a_failure(micro, fom):
    comp = compare_runs(micro, samples.worsen(micro, fom, -50))
    assert comp.ok
    [imp] = comp.improvements
    assert imp.metric == fom and imp.status == "better" and imp.worse_pct == pytest.approx(-50)


def test_threshold_and_per_fom_overrides(micro):
    compare_runs = functools.partial(compare, gate_untested=True)
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


def test_overlapping_rank_spreads_no_longer_hide_a_change(micro):
    """The old rule called any change noise when the rank spreads overlapped: a 30 % drop passed."""
    new = samples.worsen(micro, "put_latency_s", 30)
    base = copy.deepcopy(micro)
    f = _bench(base)["extra_info"]["fom"]["put_latency_s"]
    f["ranks"]["max"] = f["value"] * 1.4
    comp = compare_runs(base, new, gate_untested=True)
    [row] = [r for r in _rows(comp, "put_latency_s") if r.benchmark.endswith("put-1KiB]")]
    assert row.status == "worse" and not row.tested and "untested: no samples" in row.note
    assert not comp.ok


def test_a_25_percent_drop_with_tight_scatter_is_flagged(micro):
    base = samples.with_samples(micro, n=10, scatter=0.03, seed=1)
    new = samples.worsen(samples.with_samples(micro, n=10, scatter=0.03, seed=2), "put_GBps", 25)
    comp = compare_runs(base, new)
    [reg] = comp.regressions
    assert reg.metric == "put_GBps" and reg.tested and reg.n_samples == (10, 10)
    assert reg.p_value is not None and reg.p_value < 1e-3 and "p=" in reg.note
    assert reg.worse_pct == pytest.approx(25, abs=3)


def test_samples_from_one_distribution_are_not_flagged(micro):
    # Wide scatter (30 %): the two runs' values differ by chance, by more than the threshold here and there.
    base = samples.with_samples(micro, n=10, scatter=0.3, seed=1)
    new = samples.with_samples(micro, n=10, scatter=0.3, seed=2)
    for run in (base, new):  # the value a run reports is its samples' median, as the suite's are
        for b in run["benchmarks"]:
            for f in b["extra_info"]["fom"].values():
                f["value"] = float(np.median(f["samples"]))
            b["stats"]["median"] = float(np.median(b["stats"]["data"]))
    comp = compare_runs(base, new)
    assert comp.ok and not comp.improvements
    assert comp.noise, "the seeds should give some change past 10 % that the test calls noise"
    assert all(r.tested and r.p_value is not None and r.p_value > 0.01 for r in comp.noise)
    assert all("within noise (p=" in r.note for r in comp.noise)
    # Without the test, the same chance differences fail the gate.
    assert not compare_runs(base, new, noise_aware=False).ok


def test_a_shifted_copy_of_wide_samples_is_noise():
    base = samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",))
    f = _bench(base)["extra_info"]["fom"]["put_latency_s"]
    f["samples"] = [f["value"] * k for k in (0.5, 0.7, 0.9, 1.1, 1.3, 1.5)]
    new = samples.worsen(base, "put_latency_s", 15)
    [row] = _rows(compare_runs(base, new), "put_latency_s")
    assert row.status == "noise" and row.p_value is not None and row.p_value > 0.5


def test_too_few_samples_are_untested_and_judged_by_the_threshold(micro):
    # One sample per rank from 2 ranks: no Mann-Whitney test can reach 1 % (its smallest p is 1/3).
    assert min_p_value(2, 2) == pytest.approx(1 / 3)
    assert min_p_value(10, 10) < 1e-4 and min_p_value(0, 5) == 1.0
    base = samples.with_samples(micro, n=2, scatter=0.01)
    comp = compare_runs(base, samples.worsen(base, "put_GBps", 25), test="rounds")
    [reg] = comp.regressions
    assert reg.metric == "put_GBps" and not reg.tested and "untested: 2 vs 2 samples cannot reach alpha" in reg.note
    assert "1 verdict(s) untested" in comp.summary()
    # The run-level test needs 4 observations a run; fewer: untested and, by default, not gated.
    comp = compare_runs(base, samples.worsen(base, "put_GBps", 25))
    [row] = [r for r in comp.rows if r.status == "worse"]
    assert comp.ok and not row.gating and "2 vs 2 observations, fewer than 4" in row.note


def test_holm_rejects_step_down():
    assert holm([0.001, 0.04, 0.03, 0.2], 0.05) == [True, False, False, False]
    assert holm([0.001, 0.012, 0.02, 0.04], 0.05) == [True, True, True, True]
    assert holm([], 0.05) == []


def test_many_compared_metrics_raise_the_bar_of_each(micro):
    """A p-value that passes alone does not when many metrics are tested (Holm over the comparison)."""
    base = samples.with_samples(micro, n=6, scatter=0.02, seed=1)
    new = samples.with_samples(micro, n=6, scatter=0.02, seed=2)
    f = _bench(new)["extra_info"]["fom"]["put_GBps"]
    f["samples"] = sorted(f["samples"])
    base_f = _bench(base)["extra_info"]["fom"]["put_GBps"]
    # Interleave so that the two sample sets overlap a little: p is small, but not tiny.
    base_f["samples"] = [v * 1.3 for v in sorted(base_f["samples"])]
    base_f["samples"][0] = (f["samples"][-1] + f["samples"][-2]) / 2  # one pair out of order: U = 1, p = 4/924
    base_f["value"] = float(np.median(base_f["samples"]))
    f["value"] = float(np.median(f["samples"]))
    row = _rows(compare_runs(base, new, null="zero", test="rounds"), "put_GBps")[0]
    assert row.p_value == pytest.approx(4 / 924)
    assert row.status == "noise"  # 20 tested metrics: Holm's first level is 0.01 / 20
    alone = [copy.deepcopy(_bench(r)) for r in (base, new)]
    for b in alone:  # the one tested metric of its comparison: its level is 0.01
        b["extra_info"]["fom"] = {"put_GBps": b["extra_info"]["fom"]["put_GBps"]}
        del b["stats"]["data"]
    assert _rows(compare_runs(*(samples.run_doc([b]) for b in alone), null="zero", test="rounds"),
                 "put_GBps")[0].status == "worse"


@pytest.mark.parametrize(("pct", "margin_null", "zero_null"), [(12, "noise", "worse"), (25, "worse", "worse"),
                                                                 (5, "same", "same")])
def test_the_null_is_a_change_within_the_threshold(pct, margin_null, zero_null):
    """Tight rounds 12 % apart differ for sure, but not surely by more than 10 %: noise by default."""
    base = samples.with_samples(samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",)), n=10,
                                scatter=0.03, seed=1)
    new = samples.worsen(samples.with_samples(base, n=10, scatter=0.03, seed=2), "put_latency_s", pct)
    for null, status in (("margin", margin_null), ("zero", zero_null)):
        [row] = _rows(compare_runs(base, new, null=null), "put_latency_s")
        assert row.status == status, (null, row)


def test_round_times_tested_on_stats_data(micro):
    new = copy.deepcopy(micro)
    s = _bench(new)["stats"]
    s["median"] *= 1.3
    s["mean"] *= 1.3
    comp = compare_runs(micro, new, gate_untested=True)  # no stats.data: judged on the threshold alone
    assert {r.metric for r in comp.regressions} == {"time.median", "time.mean"}
    assert all(r.unit == "s" and r.better == "lower" and not r.tested for r in comp.regressions)
    # Rounds that scatter as much as the difference: within noise for both.
    base, new = copy.deepcopy(micro), copy.deepcopy(new)
    _bench(base)["stats"]["data"] = [_bench(micro)["stats"]["median"] * k for k in (0.5, 0.8, 1.0, 1.2, 1.5, 2.0)]
    _bench(new)["stats"]["data"] = [v * 1.1 for v in _bench(base)["stats"]["data"]]
    comp = compare_runs(base, new)
    assert comp.ok and {r.metric for r in comp.noise} == {"time.median", "time.mean"}
    # Tight rounds, 30 % apart: tested and flagged.
    _bench(base)["stats"]["data"] = samples.scattered(_bench(micro)["stats"]["median"], 20, 0.02, 1)
    _bench(new)["stats"]["data"] = [v * 1.3 for v in samples.scattered(_bench(micro)["stats"]["median"], 20, 0.02, 2)]
    comp = compare_runs(base, new)
    assert {r.metric for r in comp.regressions} == {"time.median", "time.mean"}
    assert all(r.tested for r in comp.regressions)


def test_near_zero_skill_and_shares_are_judged_in_their_unit():
    compare_runs = functools.partial(compare, gate_untested=True)  # one value each: the threshold decides
    base = samples.mini_run()
    new = copy.deepcopy(base)
    fb, fn = (_bench(r)["extra_info"]["fom"] for r in (base, new))
    fb["final_skill"]["value"], fn["final_skill"]["value"] = 0.01, -0.01  # -200 %, but 0.02 in skill
    fb["sim_unaccounted_pct"]["value"], fn["sim_unaccounted_pct"]["value"] = 0.5, 1.2  # +140 %, 0.7 points
    comp = compare_runs(base, new)
    bench = _bench(base)["name"]
    skill, share = (next(r for r in comp.rows if r.benchmark == bench and r.metric == m)
                    for m in ("final_skill", "sim_unaccounted_pct"))
    assert skill.status == share.status == "same" and comp.ok
    assert skill.change_pct == pytest.approx(-200) and skill.margin == pytest.approx(0.1)
    assert share.margin == pytest.approx(1.0)
    # A skill that falls by 0.15 (0.6 -> 0.45, -25 %) and a share that grows by 3 points are worse.
    fn["final_skill"]["value"], fn["sim_unaccounted_pct"]["value"] = 0.45, 3.5
    fb["final_skill"]["value"] = 0.6
    comp = compare_runs(base, new)
    assert {(r.benchmark, r.metric) for r in comp.regressions} == {(bench, "final_skill"), (bench, "sim_unaccounted_pct")}
    console = Console(record=True, width=220, color_system=None)
    comp.render(console)
    text = console.export_text()
    assert "+3.00 pt" in text and "-0.150" in text and "by more than 1.00 pt" in text
    # The floors are settings: a 0.01 floor for ratios makes the small skill change count.
    fn["final_skill"]["value"], fb["final_skill"]["value"] = -0.01, 0.01
    assert "final_skill" in {r.metric for r in compare_runs(base, new, floors={"final_skill": 0.01}).regressions}


def test_round_times_can_be_shown_without_gating(micro):
    new = copy.deepcopy(micro)
    _bench(new)["stats"]["median"] *= 2
    comp = compare_runs(micro, new, gate_stats=False)
    assert comp.ok
    assert _rows(comp, "time.median")[0].status == "worse"


def test_matching_by_fullname_and_backend(micro):
    new = copy.deepcopy(micro)
    del new["benchmarks"][0]  # gone from the new run
    extra = copy.deepcopy(_bench(micro, 1))
    extra["name"] = extra["name"].replace("1MiB", "2MiB")
    extra["fullname"] = extra["fullname"].replace("1MiB", "2MiB")
    new["benchmarks"].append(extra)
    comp = compare_runs(micro, new)
    assert comp.only_base == ["test_put_get[redis-put-1KiB]"]
    assert comp.only_new == ["test_put_get[redis-put-2MiB]"]
    assert len({r.benchmark for r in comp.rows}) == 3 and not comp.not_comparable


@pytest.mark.parametrize(("field", "value", "why"), [
    ("world_size", 4, "world_size 2 vs 4"),
    ("machine", "polaris", "machine 'local' vs 'polaris'"),
])
def test_another_world_size_or_machine_is_not_comparable(micro, field, value, why):
    new = copy.deepcopy(micro)
    for b in new["benchmarks"]:
        b["extra_info"]["simai"][field] = value
    comp = compare_runs(micro, samples.worsen(new, "put_GBps", 50))
    assert not comp.rows and not comp.regressions  # never compared, so never a regression...
    assert not comp.comparable and not comp.ok  # ...but not a pass either
    assert len(comp.not_comparable) == 4 and all(w == why for _, w in comp.not_comparable)
    assert "NOT COMPARABLE" in comp.summary()


def test_other_params_are_not_comparable_and_the_rest_is_compared(micro):
    new = copy.deepcopy(micro)
    _bench(new, 1)["extra_info"]["simai"]["params"]["nbytes"] = 4096  # same test id, another message size
    comp = compare_runs(micro, new)
    assert comp.not_comparable == [("test_put_get[redis-put-1MiB]", "nbytes 1048576 vs 4096")]
    assert len({r.benchmark for r in comp.rows}) == 3 and comp.comparable and comp.ok
    assert any("1 benchmark(s) not comparable" in w for w in comp.warnings)
    console = Console(record=True, width=200, color_system=None)
    comp.render(console)
    assert "not comparable: test_put_get[redis-put-1MiB] (nbytes 1048576 vs 4096)" in console.export_text()


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
    comp = compare_runs(redis, files, ignore_backend=True, gate_untested=True)
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
    comp = compare_runs(micro, samples.worsen(micro, "put_GBps", 50), gate_untested=True)
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


def test_a_sum_over_ranks_is_tested_in_its_samples_scale():
    """A FOM summed over 4 ranks with per-rank samples: the margin moves the samples by a quarter of it."""
    base = samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",))
    f = _bench(base)["extra_info"]["fom"]["put_GBps"]
    f["value"], f["samples"] = 4.0, samples.scattered(1.0, 20, 0.03, 1)
    new = copy.deepcopy(base)
    g = _bench(new)["extra_info"]["fom"]["put_GBps"]
    g["value"], g["samples"] = 3.0, [0.75 * x for x in samples.scattered(1.0, 20, 0.03, 2)]
    [row] = _rows(compare_runs(base, new), "put_GBps")
    assert row.status == "worse" and row.p_value is not None and row.p_value < 1e-4


def test_gate_check_injects_the_change_in_each_figures_bad_direction():
    from simai_core.report.gate_check import inject
    from simai_core.report.loading import parse_run

    run = parse_run(samples.with_samples(samples.micro_run(backends=("redis",), sizes=(1024,), ops=("put",)), n=4))
    worse = inject(run, 25)
    [b], [w] = run.benches, worse.benches
    for name in ("put_latency_s", "put_GBps"):
        k = 1.25 if b.foms[name].better == "lower" else 0.75
        assert w.foms[name].value == pytest.approx(k * b.foms[name].value)
        assert w.foms[name].samples == pytest.approx([k * x for x in b.foms[name].samples or []])
        assert w.foms[name].ranks.max == pytest.approx(k * b.foms[name].ranks.max)
    assert w.stats["median"] == pytest.approx(1.25 * b.stats["median"])
    assert w.round_times == pytest.approx([1.25 * x for x in b.round_times or []])
    alone = inject(run, 25, (b.name, "put_GBps")).benches[0]
    assert alone.foms["put_latency_s"] == b.foms["put_latency_s"] and alone.stats == b.stats
    assert alone.foms["put_GBps"].value == pytest.approx(0.75 * b.foms["put_GBps"].value)
    assert run.benches[0].foms["put_GBps"].value == b.foms["put_GBps"].value  # the run itself is untouched

"""The gate's run-level test: runs as the unit, a between-run noise term, per-event figures of mini runs.

Simulated runs carry a *run effect* (every figure of a run moved by one random factor, as a busy
machine moves them) on top of round-to-round scatter: the rounds of two runs are then not
exchangeable, which is what made the earlier pooled test false-alarm on identical real runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from simai_core.fom import Fom
from simai_core.report import samples
from simai_core.report.compare import (
    ABS_FLOORS,
    bench_estimates,
    compare_runs,
    event_foms,
    observations,
    run_estimate,
    run_level_p,
    with_event_foms,
)
from simai_core.report.gate_check import between_run_noise, gate_check, read_noise, write_noise
from simai_core.report.loading import ReportInputError, parse_run


def _micro(n: int, scatter: float, seed: int, run_sd: float) -> dict:
    """One simulated micro run: rounds scattered by ``scatter`` around values moved by a run effect of ``run_sd``."""
    run = samples.with_samples(samples.micro_run(backends=("redis",), sizes=(2**20,)), n=n, scatter=scatter, seed=seed)
    factor = float(np.exp(np.random.default_rng(10_000 + seed).normal(0.0, run_sd)))
    for bench in run["benchmarks"]:
        for fom in bench["extra_info"]["fom"].values():
            fom["samples"] = [x * factor for x in fom["samples"]]
            fom["value"] = float(np.median(fom["samples"]))
            fom["samples_layout"] = "rounds"
        bench["stats"]["data"] = [x * factor for x in bench["stats"]["data"]]
        bench["stats"]["median"] = float(np.median(bench["stats"]["data"]))
        bench["stats"]["mean"] = float(np.mean(bench["stats"]["data"]))
    return run


def test_ranks_x_rounds_samples_fold_into_one_observation_per_round():
    fom = samples.micro_run(backends=("redis",), sizes=(1024,))["benchmarks"][0]["extra_info"]["fom"]["put_latency_s"]
    f = Fom.model_validate({**fom, "samples": [1.0, 2.0, 3.0, 11.0, 12.0, 13.0], "samples_layout": "ranks_x_rounds"})
    assert observations(f, 2) == [6.0, 7.0, 8.0]  # rank-major: rank 0's 3 rounds, then rank 1's
    assert observations(f.model_copy(update={"samples_layout": "rounds"}), 2) == [1.0, 2.0, 3.0, 11.0, 12.0, 13.0]
    assert observations(f.model_copy(update={"samples_layout": "ranks"}), 2) is None  # one value per rank: no series


def test_a_run_is_cut_into_contiguous_blocks():
    estimate = run_estimate([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0], log=False)
    assert estimate is not None and estimate.blocks == 5
    assert estimate.value == pytest.approx(3.0) and estimate.block_var == pytest.approx(2.5)
    assert run_estimate([1.0, 2.0, 3.0], log=False) is None  # fewer than 4 observations
    assert run_estimate([1.0, 2.0, 3.0, 4.0], log=True) is not None
    # A drift inside the run shows in the blocks' spread, though each block is tight.
    drifting = run_estimate([float(x) for x in np.repeat(np.linspace(1, 2, 8), 4)], log=True)
    assert drifting is not None and drifting.block_var > 0.05


def test_run_level_p_of_the_margin_null():
    same = run_estimate([1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.0], log=True)
    far = run_estimate([1.5, 1.51, 1.49, 1.5, 1.52, 1.48, 1.5, 1.5], log=True)
    assert same is not None and far is not None
    margin = float(np.log(1.1))
    assert run_level_p(same, same, margin, None) == 1.0
    assert run_level_p(same, far, margin, None) < 1e-4
    # A measured between-run noise as large as the change makes it not significant.
    assert run_level_p(same, far, margin, (0.4, 4.0)) > 0.05


def _false_alarms(runs: list[dict], **options) -> int:
    return sum(not compare_runs(runs[i], runs[i + 1], **options).ok for i in range(0, len(runs) - 1, 2))


def test_a_run_effect_makes_the_pooled_test_false_alarm_and_the_run_level_test_does_not():
    """40 pairs of identical runs whose figures move together by a 15 % run effect (3 % scatter in a run)."""
    runs = [_micro(20, 0.03, seed, 0.15) for seed in range(80)]
    pooled = _false_alarms(runs, test="rounds")
    assert pooled >= 15, f"the pooled test should false-alarm in many of 40 pairs, got {pooled}"
    # Noise measured on 10 other runs of the same kind: at alpha 1 %, about 0.4 false alarms in 40 pairs.
    noise = between_run_noise([parse_run(_micro(20, 0.03, 1000 + s, 0.15)) for s in range(10)])
    assert 0.08 < noise[("test_put_get[redis-put-1MiB]", "put_GBps")][0] < 0.25
    assert _false_alarms(runs, noise=noise) <= 3


def test_with_measured_noise_a_large_change_is_detected():
    noise = between_run_noise([parse_run(_micro(20, 0.03, 2000 + s, 0.03)) for s in range(10)])
    pairs = [(_micro(20, 0.03, 3000 + s, 0.03), _micro(20, 0.03, 4000 + s, 0.03)) for s in range(10)]
    detected = sum("put_GBps" in {r.metric for r in compare_runs(b, samples.worsen(n, "put_GBps", 40),
                                                                    noise=noise).regressions} for b, n in pairs)
    assert detected >= 9


def test_noise_files_round_trip(tmp_path: Path):
    noise = {("b[x]", "put_GBps"): (0.12, 4.0), ("b[x]", "time.median"): (0.0, 4.0)}
    write_noise(tmp_path / "noise.json", noise)
    assert read_noise(tmp_path / "noise.json") == noise
    (tmp_path / "bad.json").write_text(json.dumps([{"benchmark": "b"}]))
    with pytest.raises(ReportInputError, match="not a noise file"):
        read_noise(tmp_path / "bad.json")


def test_gate_check_calibrates_on_the_first_runs_and_counts_the_others():
    runs = [parse_run(_micro(20, 0.03, s, 0.03), label=f"r{s}") for s in range(7)]
    report = gate_check(runs, 40.0, calibrate=4)
    assert len(report.pairs) == 3 and report.pairs[0] == ("r4", "r5")
    assert any("between-run noise measured on runs 1-4" in note for note in report.notes)
    assert report.false_alarm_pairs == 0 and report.detected_pairs == 3
    with pytest.raises(ValueError, match="too few"):
        gate_check(runs, 25.0, calibrate=6)


def test_gate_check_tests_each_metric_alone_as_a_whole_comparison_would():
    """The per-metric detection reuses the measured rows' p-values for Holm's level: it must agree with a
    full comparison of the run with that one metric moved."""
    from simai_core.report.gate_check import MetricCount, inject

    runs = [parse_run(_micro(10, 0.05, s, 0.05), label=f"r{s}") for s in range(2)]
    report = gate_check(runs, 30.0)
    for (bench, metric), count in report.metrics.items():
        assert isinstance(count, MetricCount)
        if count.below_margin:
            continue
        full = compare_runs(runs[0], inject(runs[1], 30.0, (bench, metric)))
        [row] = [r for r in full.rows if (r.benchmark, r.metric) == (bench, metric)]
        assert count.detected == (row.status == "worse"), (bench, metric)


def test_mini_runs_are_compared_on_their_per_event_durations(tmp_path: Path):
    base_dir, new_dir = tmp_path / "base", tmp_path / "new"
    base = samples.mini_run(base_dir)
    (base_dir / "run.json").write_text(json.dumps(base))
    slow = samples.mini_events()
    for e in slow:
        if e["component"] == "sim" and e["kind"] == "data":
            e["dt_s"] *= 1.5
    new_dir.mkdir()
    (new_dir / "events").mkdir()
    (new_dir / "run.json").write_text(json.dumps(base))
    from simai_core.events import write_events

    write_events(new_dir / "events" / "mini-redis-colocated.jsonl", slow)
    load = lambda d: parse_run(json.loads((d / "run.json").read_text()), label=d.name, path=d / "run.json")  # noqa: E731
    with_events = with_event_foms(load(base_dir)).benches[0]
    assert {"events.sim.step_s", "events.sim.data_s", "events.train.epoch_s"} <= set(with_events.foms)
    assert with_events.foms["events.sim.data_s"].samples_layout == "rounds"
    assert len(with_events.foms["events.sim.data_s"].samples or []) == 40  # 2 ranks x 20 steps
    inference = with_events.foms.get("events.sim.inference_s")
    assert inference is None or len(inference.samples or []) >= 8
    comp = compare_runs(load(base_dir), load(new_dir))
    assert [(r.metric, r.tested) for r in comp.regressions] == [("events.sim.data_s", True)]
    assert compare_runs(load(base_dir), load(base_dir)).ok


def test_event_foms_need_enough_events():
    events = [{"component": "sim", "rank": 0, "kind": "step", "t0_s": float(i), "dt_s": 0.1, "nbytes": None}
              for i in range(7)]
    assert event_foms(events) == {}
    foms = event_foms([*events, {**events[0], "t0_s": 7.0}])
    assert list(foms) == ["events.sim.step_s"] and foms["events.sim.step_s"]["value"] == pytest.approx(0.1)


def test_bench_estimates_use_the_comparisons_scale():
    run = parse_run(samples.with_samples(samples.mini_run(), n=10, scatter=0.05))
    bench = run.benches[0]
    estimates = bench_estimates(bench, ABS_FLOORS)
    # A *_pct FOM (absolute floor) is estimated in its unit, a time on a log scale.
    pct = bench.foms["sim_data_pct"].value
    assert estimates["sim_data_pct"].value == pytest.approx(pct, rel=0.1)
    assert estimates["workflow_s"].value == pytest.approx(np.log(bench.foms["workflow_s"].value), abs=0.1)
    assert copy.deepcopy(estimates) == estimates

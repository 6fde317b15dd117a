"""Workflow building blocks: time accounting, rank layout, the training window, peer monitoring."""

from __future__ import annotations

import time

import numpy as np
import pytest

from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.layout import LayoutError, _role_from_table, split_count
from simai_core.workflow.protocol import Heartbeat, Keys, PeerFailedError, PeerMonitor, PeerTimeoutError, publish_error
from simai_core.workflow.report import MOTIF6_FOMS, ComponentReport, local_foms
from simai_core.workflow.timers import Accounting


@pytest.fixture
def files(file_staging):
    return file_staging[0]


def test_accounting_adds_up_and_records_events():
    acc = Accounting("sim", 3, start_epoch_s=time.time())
    acc.start()
    with acc.section("compute", step=0):
        time.sleep(0.02)
    with acc.section("data", nbytes=1000) as ev:
        time.sleep(0.01)
        ev["key"] = "x"
    with acc.section("meta") as ev:
        ev["nbytes"] = 8
    acc.stop()
    assert acc.seconds["compute"] >= 0.02 and acc.seconds["data"] >= 0.01
    assert 0 <= acc.unaccounted_s < 0.05  # only bookkeeping between sections (generous: a busy machine)
    assert acc.transfer_bytes["data"] == 1000 and acc.transfer_bytes["meta"] == 8
    kinds = [e["kind"] for e in acc.events]
    assert kinds == ["step", "data", "meta"]
    assert acc.events[1]["key"] == "x" and acc.events[1]["nbytes"] == 1000 and acc.events[0]["rank"] == 3
    assert acc.events[0]["t0_s"] >= 0


def test_a_section_hands_its_waiting_part_to_wait():
    acc = Accounting("sim", 0, start_epoch_s=time.time())
    acc.start()
    with acc.section("data", nbytes=1000) as ev:
        time.sleep(0.05)
        ev["waited_s"] = 0.03  # e.g. a sync stream writer blocked on a full queue
    acc.stop()
    assert acc.seconds["wait"] == pytest.approx(0.03)
    assert 0.02 <= acc.seconds["data"] == acc.transfer_seconds["data"] < 0.05
    assert acc.events[0]["dt_s"] >= 0.05 and acc.events[0]["waited_s"] == 0.03


def test_sections_must_not_nest():
    acc = Accounting("train", 0, time.time())
    with acc.section("compute"), pytest.raises(RuntimeError, match="must not nest"), acc.section("data"):
        pass
    with pytest.raises(ValueError, match="unknown category"), acc.section("io"):
        pass


def test_split_count():
    assert [split_count(n, 0.5) for n in (2, 3, 8)] == [1, 2, 4]
    assert split_count(8, 0.99) == 7 and split_count(8, 0.01) == 1
    with pytest.raises(LayoutError):
        split_count(1, 0.5)


def test_trainers_own_disjoint_sim_ranks_per_scope():
    # Two nodes (scopes), each with 3 simulation ranks and 2 trainer ranks.
    table = []
    for scope in range(2):
        table += [("sim", scope, 3 * scope + i) for i in range(3)] + [("train", scope, 2 * scope + i) for i in range(2)]
    roles = [_role_from_table(table, w, None, 0) for w in range(len(table))]
    trainers = [r for r in roles if r.component == "train"]
    assert [r.owned for r in trainers] == [(0, 2), (1,), (3, 5), (4,)]
    assert all(r.max_owned == 2 for r in roles)
    assert [r.is_head for r in roles] == [True, False, False, True, False] * 2
    assert {r.sim_size for r in roles} == {6}


def test_more_trainers_than_sim_ranks_is_refused():
    table = [("sim", 0, 0), ("train", 0, 0), ("train", 0, 1)]
    with pytest.raises(LayoutError, match="lower the trainer share"):
        _role_from_table(table, 1, None, 0)


def test_window_keeps_the_newest_steps_and_batches_agree():
    torch = pytest.importorskip("torch")
    from simai_core.workflow.dataset import PointBatches, SnapshotWindow

    window = SnapshotWindow((0, 1), n_in=1, window=2)
    for step in (0, 5, 10):
        evicted = window.add_step(step, {r: np.full((10, 2), step + r, float) for r in (0, 1)})
    assert list(window.steps) == [5, 10] and evicted == [0] and len(window.arrays) == 4
    # This rank owns 2 of the largest share of 3: it still runs the batches of the largest share.
    batches = PointBatches(window, batch=4, max_owned=3, device=torch.device("cpu"), seed=0)
    got = list(batches.epoch(2))
    assert len(got) == batches.n_batches(2) == 15  # ceil(3 ranks * 2 steps * 10 points / 4)
    x, _, _, y = got[0]
    assert x.shape == (4, 1) and torch.equal(x, y)
    # Another rank's window holds a step more: this one runs that many batches too.
    assert len(list(batches.epoch(3))) == 23  # ceil(3 * 3 * 10 / 4)
    capped = PointBatches(window, batch=4, max_owned=3, device=torch.device("cpu"), seed=0, epoch_batches=6)
    assert len(list(capped.epoch(3))) == capped.n_batches(3) == 6  # a random draw from the window


def test_graph_patches_cover_every_node_with_the_edges_inside():
    torch = pytest.importorskip("torch")
    from simai_core.workflow.dataset import GraphBatches, SnapshotWindow, split_graph
    from simai_core.workflow.graph import knn_graph

    pos = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1).reshape(-1, 2)
    edges, _ = knn_graph(pos, 4, "scipy")
    parts = split_graph(pos, edges, 3)
    assert [(a, b) for a, b, _, _ in parts] == [(0, 21), (21, 43), (43, 64)]
    kept = sum(e.shape[1] for _, _, e, _ in parts)
    crossing = sum(1 for s, r in edges.T if (s < 21) != (r < 21) or (s < 43) != (r < 43))
    assert kept + crossing == edges.shape[1]
    for a, b, e, p in parts:
        assert e.min() >= 0 and e.max() < b - a and np.array_equal(p, pos[a:b])
    window = SnapshotWindow((0,), n_in=1, window=None)
    window.add_step(0, {0: np.arange(128, dtype=float).reshape(64, 2)})
    batches = GraphBatches(window, {0: (pos, edges)}, batch=2, max_owned=1, device=torch.device("cpu"), seed=0,
                           epoch_batches=None, patches=3)
    got = list(batches.epoch(1))
    assert len(got) == batches.n_batches(1) == 2  # ceil(1 rank * 1 step * 3 patches / 2)
    x, e, p, y = got[0]
    assert len(x) == len(p) == len(y) in (42, 43) and int(e.max()) < len(x)


def test_window_takes_a_step_whose_snapshots_arrive_apart():
    """Streamed data: one owned rank's snapshot of a step may come a poll later, or never (async discard)."""
    from simai_core.workflow.dataset import SnapshotWindow

    window = SnapshotWindow((0, 1), n_in=1, window=None)
    window.add_step(0, {0: np.zeros((3, 2))})
    window.add_step(5, {0: np.ones((3, 2)), 1: np.ones((3, 2))})
    window.add_step(0, {1: np.zeros((3, 2))})
    window.add_step(10, {1: np.full((3, 2), 2.0)})  # rank 0's step 10 was discarded
    assert list(window.steps) == [0, 5, 10]
    assert [(rank, float(a[0, 0])) for rank, a in window.samples()] == [(0, 0.0), (1, 0.0), (0, 1.0), (1, 1.0), (1, 2.0)]


def test_window_drops_a_snapshot_of_a_step_it_already_evicted():
    from simai_core.workflow.dataset import SnapshotWindow

    window = SnapshotWindow((0, 1), n_in=1, window=2)
    for step in (0, 5, 10):
        window.add_step(step, {0: np.full((3, 2), float(step))})
    assert window.add_step(0, {1: np.zeros((3, 2))}) == [] and list(window.steps) == [5, 10]
    assert (1, 0) not in window.arrays
    window.add_step(20, {0: np.ones((3, 2))})
    window.add_step(15, {1: np.ones((3, 2))})  # late but still in the window: kept in order, 20 stays
    assert list(window.steps) == [15, 20]


def test_heartbeat_and_monitor(files):
    keys = Keys("t1")
    beat = Heartbeat(files, keys.sim_status, interval_s=0.0)
    monitor = PeerMonitor(files, keys, "sim", 2, startup_timeout_s=0.2, peer_timeout_s=0.2)
    assert monitor.read() is None  # nothing yet, still within the start-up deadline
    beat.write([4, 0])
    np.testing.assert_array_equal(monitor.read(), [4, 0, 1])
    time.sleep(0.3)
    with pytest.raises(PeerTimeoutError, match="silent"):
        monitor.read()
    beat.write([5, 0])
    assert monitor.read()[2] == 2


def test_monitor_reports_a_peer_that_never_started(files):
    monitor = PeerMonitor(files, Keys("t2"), "train", 3, startup_timeout_s=0.1, peer_timeout_s=5)
    time.sleep(0.15)
    with pytest.raises(PeerTimeoutError, match="no sign of life"):
        monitor.read()


def test_monitor_reports_a_published_failure(files):
    keys = Keys("t3")
    publish_error(files, keys, "train", "RuntimeError on train rank 1: out of memory")
    with pytest.raises(PeerFailedError, match="out of memory"):
        PeerMonitor(files, keys, "train", 3, 10, 10).read()


def test_local_foms_cover_the_spec():
    sim = ComponentReport(component="sim", rank=0, wall_s=10.0, unaccounted_s=0.1,
                          seconds={"compute": 8.0, "meta": 0.4, "data": 0.2, "checkpoint": 0.1, "inference": 0.1,
                                   "checkpoint_load": 0.3, "graph_build": 0.6, "wait": 0.2},
                          transfer_bytes={"data": 2_000_000, "checkpoint": 30_000},
                          transfer_seconds={"data": 0.1, "checkpoint": 0.01}, steps=40)
    train = ComponentReport(component="train", rank=0, wall_s=11.0, epochs=50,
                            seconds={"compute": 10.0, "process_group": 0.55, "checkpoint_serialize": 0.22})
    foms = local_foms(sim) | local_foms(train)
    assert foms["sim_overhead_pct"] == pytest.approx(7.0)  # traffic only: meta + data + checkpoint transfer
    assert foms["sim_coupling_compute_pct"] == pytest.approx(10.0)  # graph build + checkpoint load + inference
    assert foms["sim_graph_build_pct"] == pytest.approx(6.0)
    assert foms["train_overhead_pct"] == 0.0 and foms["train_coupling_compute_pct"] == pytest.approx(7.0)
    assert foms["sim_unaccounted_pct"] == pytest.approx(1.0)
    assert foms["sim_data_GBps_per_rank"] == pytest.approx(0.02)
    assert "train_data_GBps_per_rank" not in foms and "final_loss" not in foms  # never measured: null, not 0
    assert foms["time_to_solution_s"] == 10.0 and foms["trainer_time_s"] == 11.0
    assert set(foms) <= set(MOTIF6_FOMS)


def test_workflow_config_round_trips_through_json():
    cfg = WorkflowConfig.model_validate({"trainer": {"model": {"kind": "gnn", "hidden_channels": 8}}})
    again = WorkflowConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg and again.model_kind == "gnn" and again.cadence().mini_batch == 1
    with pytest.raises(ValueError):
        WorkflowConfig.model_validate({"simulation": {"tolerence": 0.1}})


@pytest.mark.parametrize(("size", "model", "expected"), [
    ("small", "mlp", (64, 64, 1)), ("medium", "mlp", (4096, 16, 1)), ("large", "mlp", (8192, 8, 1)),
    ("small", "gnn", (1, 4, 1)), ("medium", "gnn", (1, 4, 64)), ("large", "gnn", (1, 4, 977)),
])
def test_trainer_cadence_scales_with_the_problem(size, model, expected):
    cfg = WorkflowConfig.model_validate({"problem": {"size": size}, "trainer": {"model": {"kind": model}}})
    c = cfg.cadence()
    assert (c.mini_batch, c.epoch_batches, c.graph_patches) == expected and c.checkpoint_every == 10


def _staged_steps(files, keys: Keys, last: int, interval: int) -> None:
    for step in range(0, last + 1, interval):
        files.put_tensor(keys.data(0, step), np.full((4, 2), float(step)))


def test_staged_source_fetches_a_bounded_number_of_steps_per_call(files):
    from simai_core.workflow.snapshots import StagedSource

    keys = Keys("cap")
    _staged_steps(files, keys, 200, 5)
    source = StagedSource(files, 5, True, owned=(0,), shape=(4, 2), dtype="float64",
                          acc=Accounting("train", 0, time.time()), keys=keys)
    first = source.receive(200)
    assert sorted(first) == list(range(0, 5 * StagedSource.MAX_STEPS_PER_RECEIVE, 5))
    rest = source.receive(200)
    assert min(rest) == 5 * StagedSource.MAX_STEPS_PER_RECEIVE and all(a[0][0, 0] == s for s, a in rest.items())


def test_staged_source_with_a_window_skips_and_deletes_steps_older_than_it(files):
    from simai_core.workflow.snapshots import StagedSource

    keys = Keys("window")
    _staged_steps(files, keys, 200, 5)
    source = StagedSource(files, 5, True, window=3, owned=(0,), shape=(4, 2), dtype="float64",
                          acc=Accounting("train", 0, time.time()), keys=keys)
    got = source.receive(200)
    assert sorted(got) == [190, 195, 200] and got[200][0][0, 0] == 200.0
    assert source.finish(1.0) == {"staged_steps_skipped": 38}
    assert not files.exists(keys.data(0, 0)) and not files.exists(keys.data(0, 185))

"""ADIOS2 streams: SST producer -> consumer steps (sync and async) and BP5 files, each against a raw baseline.

Pairs: under ``mpiexec -n 2k`` rank 2i writes and rank 2i+1 reads (one stream per pair: the
PyPI ADIOS2 has no MPI); serially the test process reads and a peer process it starts
(``python -m simai_core.streaming.peer``, same Python) writes. A round is a burst of steps
(``steps_per_round``: 32 small ones down to 4 of 16 MiB and more); before each round the pair
meets, times the raw baseline on the same bytes and meets again (:mod:`simai_core.streaming.harness`).

Every GB/s FOM is one pair's own rate, averaged over pairs (``*_GBps_per_pair``): pairs do not
time their bursts on one clock, so no aggregate over pairs is claimed.

FOMs of ``test_stream`` (reader ranks unless noted):
``stream_GBps_per_pair`` (bytes received per burst over the time to the last of them),
``step_latency_s`` (the first step of a burst: writer's begin_step to data in the reader's buffer),
``step_interval_s`` (between steps inside a burst), ``discarded_steps`` (steps written in the
timed rounds that never arrived: 0 in sync mode), ``raw_GBps_per_pair`` (TCP socket, same bytes, same
processes), ``stream_vs_raw``, and on the writer ranks ``producer_GBps_per_pair`` (burst over the
writer's time: in async mode the writer never waits).

FOMs of ``test_bp5``: ``bp5_write_GBps_per_pair`` (writer: open, steps, close),
``bp5_read_GBps_per_pair`` (reader, from the page cache), the plain file's
``raw_write_GBps_per_pair``/``raw_read_GBps_per_pair`` and the ratios.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simai_core import mpi
from simai_core.bench.measure import default_rounds, sync_ranks
from simai_core.bench.record import LATENCY, record
from simai_core.fom import FomSpec, RunInfo
from simai_core.private import private_dir
from simai_core.profiles import MachineProfile
from simai_core.sizes import format_size
from simai_core.streaming import STREAM_MODES
from simai_core.streaming.adios2_sst import stream_detail, unavailable_reason
from simai_core.streaming.harness import RAW_FILE, RAW_TCP, Plan, RoundSetup, Side, steps_per_round, writer_foms
from simai_core.streaming.pair import PairLink, mpi_pair, peer_log, spawn_peer, stop_peer
from simai_core.streaming.sides import make_side

pytestmark = [pytest.mark.micro, pytest.mark.adios2]

MAX_SST_BYTES = 64 * 2**20  # the SST sweep stops here whatever --simai-max-size says
LINK_TIMEOUT_S = 120.0  # every wait on the pair link
DISCARDS = FomSpec(unit="count", better="lower", combine="sum")
# A pair's own rate, averaged over pairs: pairs do not start their bursts on one clock, so no
# measured aggregate over pairs is claimed (the names say ``_per_pair``).
PER_PAIR_GBPS = FomSpec(unit="GB/s", better="higher", combine="mean")
LATENCY_DEF = "first step of a burst: writer's begin_step to data in the reader's buffer (wall clock)"


class StreamPair:
    """This process's end of a writer/reader pair: an MPI neighbour, or a peer process it (re)starts."""

    def __init__(self, profile: MachineProfile, workdir: Path, watchdog_fd: int | None) -> None:
        self.interface = profile.staging.network_interface
        # An optional profile field (auto, WAN, RDMA, UCX, MPI); until profiles have it, auto picks by interface.
        self.data_plane = profile.staging.stream_data_plane
        self.shared = profile.staging.shared_path
        self.workdir = workdir
        self.watchdog_fd = watchdog_fd
        self.peer: Any = None
        self.link: PairLink | None = None
        self.writer, self.index, self.same_node = False, 0, True
        if mpi.size() > 1:
            self.link, self.writer, self.index = mpi_pair(self.interface, LINK_TIMEOUT_S)
            self.same_node = self._same_node()

    def _same_node(self) -> bool:
        assert self.link is not None
        if self.writer:
            self.link.send({"host": socket.gethostname()})
            return bool(self.link.recv()["same"])
        same = self.link.recv()["host"] == socket.gethostname()
        self.link.send({"same": same})
        return same

    @property
    def layout(self) -> str:
        """How the pair was formed, for the JSON."""
        if mpi.size() > 1:
            return f"pairs: rank 2i writes, rank 2i+1 reads ({mpi.size() // 2} streams)"
        return "serial: a peer process writes, the test process reads"

    @contextlib.contextmanager
    def directory(self, tmp_path: Path) -> Iterator[Path]:
        """Where the SST contact file and BP5 files go: the profile's shared path (removed after), else the test dir."""
        if self.shared is None:
            yield tmp_path
            return
        path = private_dir(Path(self.shared) / f"simai-adios2-{getpass.getuser()}-{uuid.uuid4().hex[:8]}")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def run(self, benchmark: Any, plan: Plan) -> tuple[Side, dict[str, Any]]:
        """Run ``plan`` on both ends (the reader's plan is sent to the writer); return this end and the writer's results."""
        link = self._link()
        try:
            if self.writer:
                plan = Plan(**link.recv()["plan"])
            else:
                link.send({"op": "plan", "plan": plan.message()})
            side = make_side(link, plan, self.writer, self.watchdog_fd)
            side.open()
            benchmark.pedantic(side.round, setup=RoundSetup(side, sync_ranks), rounds=plan.rounds, warmup_rounds=plan.warmup)
            results = side.close()
        except Exception as exc:
            log = peer_log(self.workdir) if mpi.size() == 1 else ""
            with contextlib.suppress(Exception):
                self.stop(grace_s=2.0)  # the link is out of step now: the next test starts a fresh peer
            if log:
                raise RuntimeError(f"{exc}\n--- stream peer log ---\n{log}") from exc
            raise
        return side, results

    def _link(self) -> PairLink:
        if self.link is None:
            if mpi.size() > 1:
                raise RuntimeError("the pair link broke in an earlier benchmark")
            self.peer, self.link = spawn_peer(self.workdir, self.interface, LINK_TIMEOUT_S)
        return self.link

    def stop(self, grace_s: float = 30.0) -> None:
        """Tell the peer to quit and wait for it (up to ``grace_s``, then kill it), or close the link (MPI)."""
        link, self.link = self.link, None
        if link is not None and self.peer is not None:
            with contextlib.suppress(OSError):  # the peer may be gone already
                link.send({"op": "quit"})
        if link is not None:
            link.close()
        if self.peer is not None:
            peer, self.peer = self.peer, None
            code = stop_peer(peer, self.workdir, grace_s)
            assert code == 0, f"the stream peer exited with {code}:\n{peer_log(self.workdir)}"


def _watchdog_fd(config: pytest.Config) -> int | None:
    """The copy of the real stderr pytest keeps, so a fired deadline's traceback is not lost in the capture."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        return config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        return None


@pytest.fixture(scope="module")
def stream_pair(pytestconfig: pytest.Config, simai_profile: MachineProfile,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamPair]:
    """The pair for every benchmark of this module; skipped when adios2 is missing or the world size is odd."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if mpi.size() % 2 and mpi.size() > 1:
        pytest.skip(f"ADIOS2 stream pairs need an even number of ranks, not {mpi.size()}")
    workdir = tmp_path_factory.mktemp("adios2-peer")
    pair = StreamPair(simai_profile, workdir, _watchdog_fd(pytestconfig))
    try:
        yield pair
    finally:
        pair.stop()
    left = [p.name for p in workdir.iterdir()]
    assert not left, f"the stream peer left {left} in {workdir}"


def _plan(kind: str, mode: str, nbytes: int, pair: StreamPair, directory: Path, config: pytest.Config) -> Plan:
    if nbytes > MAX_SST_BYTES:
        pytest.skip(f"the ADIOS2 sweep stops at {format_size(MAX_SST_BYTES)}")
    rounds = config.getoption("--simai-rounds") or min(default_rounds(nbytes), 10)  # each round is a burst of steps
    return Plan(kind=kind, mode=mode, nbytes=nbytes, steps=steps_per_round(nbytes), rounds=rounds,  # type: ignore[arg-type]
                directory=str(directory), name=f"{kind}-{mode}-{format_size(nbytes)}-{pair.index}", seed=pair.index,
                interface=pair.interface, data_plane=pair.data_plane, open_timeout_s=LINK_TIMEOUT_S,
                step_timeout_s=LINK_TIMEOUT_S)


def _run_info(profile: MachineProfile, detail: dict[str, Any], params: dict[str, Any]) -> RunInfo:
    return RunInfo(level="micro", backend="adios2", backend_detail=detail, world_size=mpi.size(), machine=profile.name,
                   params=params)


def _nothing_left(directory: Path, plan: Plan) -> None:
    left = [p.name for p in directory.iterdir() if p.name.startswith(plan.name)] if directory.is_dir() else []
    assert not left, f"left behind in {directory}: {left}"
    assert not list(Path("/tmp").glob(f"{plan.name}*_profiling.json")), "a BP5 profiling file was left in /tmp"


def _run_checked(benchmark: Any, stream_pair: StreamPair, plan: Plan, directory: Path) -> dict[str, float]:
    """Run ``plan``: the FOMs this rank measured, once the reader checked the data and that nothing is left."""
    side, results = stream_pair.run(benchmark, plan)
    local = writer_foms(plan, results) if stream_pair.writer or mpi.size() == 1 else {}
    if not stream_pair.writer:
        side.check()  # the transfer must be right, not only fast
        local |= side.foms()
        _nothing_left(directory, plan)
    return local


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_stream(benchmark: Any, stream_pair: StreamPair, simai_profile: MachineProfile, pytestconfig: pytest.Config,
                tmp_path: Path, nbytes: int, mode: str) -> None:
    with stream_pair.directory(tmp_path) as directory:
        plan = _plan("stream", mode, nbytes, stream_pair, directory, pytestconfig)
        local = _run_checked(benchmark, stream_pair, plan, directory)
    assert stream_pair.writer or mode == "async" or local["discarded_steps"] == 0, "sync mode lost steps"
    specs = {"stream_GBps_per_pair": PER_PAIR_GBPS, "step_latency_s": LATENCY, "step_interval_s": LATENCY,
             "discarded_steps": DISCARDS, "raw_GBps_per_pair": PER_PAIR_GBPS, "producer_GBps_per_pair": PER_PAIR_GBPS}
    detail = stream_detail(plan.config(), "SST") | {"raw": RAW_TCP, "pairs": stream_pair.layout}
    params = {"mode": mode, "nbytes": nbytes, "steps_per_round": plan.steps, "rounds": plan.rounds,
              "queue_limit": plan.queue_limit, "raw": RAW_TCP, "latency": LATENCY_DEF, "same_node": stream_pair.same_node}
    record(benchmark, _run_info(simai_profile, detail, params), local, specs,
           ratios={"stream_vs_raw": ("stream_GBps_per_pair", "raw_GBps_per_pair")})


def test_bp5(benchmark: Any, stream_pair: StreamPair, simai_profile: MachineProfile, pytestconfig: pytest.Config,
             tmp_path: Path, nbytes: int) -> None:
    with stream_pair.directory(tmp_path) as directory:
        plan = _plan("bp5", "sync", nbytes, stream_pair, directory, pytestconfig)
        local = _run_checked(benchmark, stream_pair, plan, directory)
    specs = {f"{name}_per_pair": PER_PAIR_GBPS for name in ("bp5_write_GBps", "raw_write_GBps", "bp5_read_GBps",
                                                           "raw_read_GBps")}
    detail = stream_detail(plan.config(), "BP5") | {"raw": RAW_FILE, "pairs": stream_pair.layout}
    params = {"nbytes": nbytes, "steps_per_round": plan.steps, "rounds": plan.rounds, "raw": RAW_FILE,
              "read": "right after the write, from the page cache", "directory": "shared_path" if stream_pair.shared else "tmp"}
    record(benchmark, _run_info(simai_profile, detail, params), local, specs,
           ratios={"bp5_write_vs_raw": ("bp5_write_GBps_per_pair", "raw_write_GBps_per_pair"),
                   "bp5_read_vs_raw": ("bp5_read_GBps_per_pair", "raw_read_GBps_per_pair")})

"""The pytest plugin behind the suite (loaded by the root ``conftest.py``).

It makes pytest and pytest-benchmark MPI-aware: the launcher's world size is checked,
each rank gets its own temp dir, only rank 0 writes the JSON, and a failing rank
aborts the job with its traceback instead of leaving the others in a collective.
It also owns the suite's options, the backend parametrisation and the staging fixtures.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simai_core import mpi
from simai_core.bench.measure import memcpy_GBps
from simai_core.bench.pool import StagingPool
from simai_core.errors import SimaiError
from simai_core.fom import RunInfo
from simai_core.private import NotPrivateError, private_dir
from simai_core.profiles import MachineProfile, load_profile
from simai_core.sizes import parse_size, size_sweep
from simai_core.staging import registry
from simai_core.workflow.layout import LayoutError, NodeInfo, node_info, set_virtual_nodes

LEVELS = ("micro", "mini", "full")
MOTIFS = ("motif6", "steering")
_MARKERS = {
    "micro": "micro benchmark: one staging operation at a time",
    "mini": "mini benchmark: a whole workflow with emulated or cheap components",
    "full": "full benchmark: a workflow coupled to a real solver",
    "motif6": "motif 6: online training of a surrogate from a running simulation",
    "steering": "steering: an AI learner chooses the next simulations of an ensemble",
    "backends(*names)": "run this test only on the named staging backends",
    "adios2": "runs on ADIOS2 streams (SST) and files (BP5)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """The suite's command-line options (see ``pytest --help``, group SimAI-Bench)."""
    group = parser.getgroup("simai", "SimAI-Bench")
    group.addoption("--simai-backend", action="append", default=[], metavar="NAME[,NAME]",
                    help=f"staging backend(s) to run (repeatable; default: every installed one; "
                         f"known: {', '.join(registry.backend_names())}); naming one that is not installed is an error")
    group.addoption("--simai-profile", default=os.environ.get("SIMAI_PROFILE", "local"), metavar="NAME|PATH",
                    help="machine profile from machine_profiles/ or a YAML path (default: local, or $SIMAI_PROFILE)")
    group.addoption("--simai-sizes", default=None, metavar="SIZE[,SIZE]",
                    help="message sizes of the put/get sweep, e.g. 1KiB,1MiB,64MiB (default: the profile's sweep)")
    group.addoption("--simai-max-size", default=None, metavar="SIZE",
                    help="extend or cut the put/get sweep at this size, e.g. 1GiB")
    group.addoption("--simai-rounds", type=int, default=None, metavar="N",
                    help="timed rounds per benchmark (default: by message size, 6 to 50); one more warm-up round is run")
    group.addoption("--simai-staging-path", default=None, metavar="DIR",
                    help="directory for the filesystem/nodelocal backends (default: from the profile)")
    group.addoption("--simai-redis-shards", type=int, default=None, metavar="N",
                    help="redis backend: a Redis Cluster of N shards instead of one server (default: the profile's "
                         "staging.shards, 1)")
    group.addoption("--simai-dragon-ranks", type=int, default=None, metavar="N",
                    help="dragon backend, mini benchmarks: run each workflow on N MPI ranks that the Dragon runtime "
                         "starts (an mpiexec launched as a Dragon process; default: serially)")
    group.addoption("--simai-virtual-nodes", type=int, default=None, metavar="N",
                    help="split each node's ranks into N virtual nodes of equal size: node-local servers, "
                         "directories, head ranks and colocated placement follow them (default: the profile's, 1)")
    group.addoption("--simai-compare", default=None, metavar="BASE.json",
                    help="at the end, compare this run's FOMs with a saved run and fail on regression")
    group.addoption("--simai-threshold", default="10%", metavar="PCT",
                    help="regression threshold for --simai-compare (default 10%%)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register markers, check the MPI world, load the profile and the backend selection."""
    for name, text in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    for spec in registry.BACKENDS.values():
        config.addinivalue_line("markers", f"{spec.name}: runs on the {spec.name} staging backend ({spec.summary})")
    try:
        mpi.check_world_size()
    except RuntimeError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_PROFILE] = _load_profile(config)
    config.stash[_BACKENDS] = _selected_backends(config)
    config.stash[_NODES] = _node_layout(config)
    shards = config.getoption("--simai-redis-shards")
    if shards is not None and not 1 <= shards <= 64:
        raise pytest.UsageError(f"--simai-redis-shards {shards}: between 1 and 64")
    dragon_ranks = config.getoption("--simai-dragon-ranks")
    if dragon_ranks is not None and (dragon_ranks < 2 or mpi.size() > 1):
        raise pytest.UsageError(f"--simai-dragon-ranks {dragon_ranks}: at least 2 ranks (a simulation and a trainer), "
                                "given to a serial pytest (the Dragon runtime starts the ranks itself)")
    if mpi.size() > 1:
        _configure_mpi(config)


_PROFILE = pytest.StashKey[MachineProfile]()
_BACKENDS = pytest.StashKey[list[str]]()
_NODES = pytest.StashKey[NodeInfo]()


def _node_layout(config: pytest.Config) -> NodeInfo:
    """Set the virtual-node split (option, else profile) and learn this rank's node (collective)."""
    n = config.getoption("--simai-virtual-nodes") or config.stash[_PROFILE].virtual_nodes
    try:
        set_virtual_nodes(n)
        return node_info(mpi.world())
    except LayoutError as exc:
        raise pytest.UsageError(f"--simai-virtual-nodes {n}: {exc}") from None


def _load_profile(config: pytest.Config) -> MachineProfile:
    try:
        return load_profile(config.getoption("--simai-profile"))
    except SimaiError as exc:
        raise pytest.UsageError(str(exc)) from None


def _selected_backends(config: pytest.Config) -> list[str]:
    """Backends named with --simai-backend (each must be installed) or every registered one."""
    named = [n.strip() for arg in config.getoption("--simai-backend") for n in arg.split(",") if n.strip()]
    for name in named:
        try:
            registry.load(name)
        except SimaiError as exc:
            raise pytest.UsageError(f"--simai-backend {name}: {exc}") from None
    return named or registry.backend_names()


def _configure_mpi(config: pytest.Config) -> None:
    """Per-rank temp dirs and timeouts; rank 0 alone writes results."""
    rank = mpi.rank()
    job = mpi.world().bcast(os.getpid() if rank == 0 else None, root=0)
    if config.option.basetemp is None:
        config.option.basetemp = str(_rank_basetemp(job, rank))
    # A signal cannot interrupt a rank blocked inside MPI; the thread method exits the process, and
    # mpiexec then ends the whole job.
    if hasattr(config.option, "timeout_method"):
        config.option.timeout_method = "thread"
    if rank != 0:
        # One report, from rank 0: the others would print N copies of the same tables. Their
        # failures still reach stderr through the abort hook.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
        atexit.register(sys.stdout.close)  # closed, not collected: no ResourceWarning at exit
        for option in ("benchmark_json", "benchmark_save", "benchmark_compare"):
            if hasattr(config.option, option):
                setattr(config.option, option, None)
        if hasattr(config.option, "benchmark_autosave"):
            config.option.benchmark_autosave = False


def _rank_basetemp(job: int, rank: int) -> Path:
    """``<tmp>/pytest-of-<user>/simai-mpi-<job>/rank<rank>``, its parents private (0700, owner-checked, as pytest's).

    A usage error (the :class:`~simai_core.private.NotPrivateError` message) when another user made or opened them.
    """
    try:
        root = private_dir(Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}")
        if rank == 0:
            _prune_old_job_dirs(root)
        return private_dir(root / f"simai-mpi-{job}") / f"rank{rank}"  # pytest makes the rank's own dir, 0700
    except NotPrivateError as exc:
        raise pytest.UsageError(f"per-rank temp dir: {exc}") from None


def _prune_old_job_dirs(root: Path, keep: int = 3) -> None:
    """Keep the newest ``keep`` finished jobs' temp dirs; never touch a running job's."""
    finished = [p for p in root.glob("simai-mpi-*") if not Path(f"/proc/{p.name.rsplit('-', 1)[-1]}").exists()]
    for old in sorted(finished, key=lambda p: p.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Leave a benchmark that timed no round out of the JSON instead of losing the whole JSON.

    pytest-benchmark marks a benchmark as failed only on an ``Exception``; one ended by ``pytest.fail``
    or ``pytest.skip``, a timeout or Ctrl-C inside its timed code keeps empty statistics, on which its
    JSON writer raises at the end of the session, and no benchmark of the session is saved.
    """
    yield
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    metadata = getattr(fixture, "stats", None)
    if fixture is not None and metadata is not None and not metadata.stats.data:
        fixture.has_error = True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under MPI, a failure on any rank ends the job at once, with its traceback on stderr."""
    if report.failed and mpi.size() > 1:
        mpi.abort(f"{report.nodeid} failed during {report.when}; aborting all ranks\n{report.longreprtext}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Under MPI, a collection error on any rank ends the job too."""
    if report.failed and mpi.size() > 1:
        mpi.abort(f"collecting {report.nodeid} failed; aborting all ranks\n{report.longreprtext}")


def pytest_keyboard_interrupt() -> None:
    """Remember Ctrl-C: teardown then stops servers without waiting for other ranks."""
    _INTERRUPTED.append(True)


_INTERRUPTED: list[bool] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that takes ``backend`` on each selected backend, marked with its name."""
    if "backend" in metafunc.fixturenames:
        names = metafunc.config.stash[_BACKENDS]
        only = metafunc.definition.get_closest_marker("backends")
        if only is not None:
            names = [n for n in names if n in only.args]
        params = [pytest.param(n, marks=getattr(pytest.mark, n), id=n) for n in names]
        metafunc.parametrize("backend", params, scope="session")


@pytest.fixture(scope="session")
def simai_profile(pytestconfig: pytest.Config) -> MachineProfile:
    """The machine profile of this run."""
    return pytestconfig.stash[_PROFILE]


@pytest.fixture(scope="session")
def staging_pool(pytestconfig: pytest.Config, simai_profile: MachineProfile,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[StagingPool]:
    """Every staging server of the session; stopped at the end, whatever happened."""
    path = pytestconfig.getoption("--simai-staging-path")
    shards = pytestconfig.getoption("--simai-redis-shards")
    pool = StagingPool(simai_profile, tmp_path_factory.mktemp("staging"), Path(path) if path else None, shards)
    try:
        yield pool
    finally:
        if _INTERRUPTED:
            pool.stop_servers_now()
        else:
            pool.close()


@pytest.fixture
def staging(backend: str, staging_pool: StagingPool) -> Any:
    """This rank's client of the backend under test (skipped with the reason if not installed)."""
    reason = registry.unavailable_reason(backend)
    if reason is not None:
        pytest.skip(reason)
    return staging_pool.client(backend)


@pytest.fixture
def simai_run(request: pytest.FixtureRequest, simai_profile: MachineProfile, staging_pool: StagingPool) -> Any:
    """Build the ``simai`` block of a benchmark: ``simai_run(backend, params, deployment=None)``.

    Level and motif come from the test's markers.
    """
    node = request.node
    level = next((m for m in LEVELS if node.get_closest_marker(m)), "micro")
    motif = next((m for m in MOTIFS if node.get_closest_marker(m)), None)

    nodes = request.config.stash[_NODES]

    def build(backend: str, params: dict[str, Any], deployment: str | None = None, **extra: Any) -> RunInfo:
        # world_size may be given: ranks a Dragon runtime started for a serial pytest are not its world
        extra.setdefault("world_size", mpi.size())
        return RunInfo(level=level, motif=motif, backend=backend, backend_detail=staging_pool.detail(backend),
                       deployment=deployment, machine=simai_profile.name, params=params,
                       nodes=nodes.count, virtual_nodes=nodes.virtual, **extra)

    return build


def sweep_sizes(config: pytest.Config) -> list[int]:
    """Message sizes of the put/get sweep from the options, or the profile's defaults."""
    profile = config.stash[_PROFILE]
    explicit = config.getoption("--simai-sizes")
    sizes = ([parse_size(s) for s in explicit.split(",")] if explicit
             else size_sweep(profile.micro.min_bytes, profile.micro.max_bytes, profile.micro.factor))
    cap = config.getoption("--simai-max-size")
    if cap:
        cap_bytes = parse_size(cap)
        if not explicit:
            sizes = size_sweep(profile.micro.min_bytes, cap_bytes, profile.micro.factor)
        sizes = [s for s in sizes if s <= cap_bytes]
    return sizes


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Add the machine profile, the MPI library and a memory-copy reference to ``machine_info``."""
    from mpi4py import MPI

    profile = config.stash[_PROFILE]
    machine_info["simai"] = {
        "schema": 1,
        "profile": profile.name,
        "cores_per_node": profile.resolved_cores(),
        "gpus_per_node": profile.resolved_gpus(),
        "world_size": mpi.size(),
        "nodes": config.stash[_NODES].count,
        "virtual_nodes": config.stash[_NODES].virtual,
        "mpi_library": MPI.Get_library_version().splitlines()[0].strip(),
        "memcpy_GBps": round(memcpy_GBps(), 3),
    }


def _session_run(config: pytest.Config) -> dict[str, Any] | None:
    """This session's benchmarks as a JSON-like run (rank 0; None when nothing was benchmarked)."""
    session = getattr(config, "_benchmarksession", None)
    if mpi.rank() != 0 or session is None or not session.benchmarks:
        return None
    return {"benchmarks": [b.as_dict(include_data=False) for b in session.benchmarks if not b.has_error]}


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's timing table, so the FOMs end the report
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the FOM table of the session (rank 0)."""
    run = _session_run(config)
    if run is not None:
        from simai_core.report.table import print_fom_table

        print_fom_table(run)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With --simai-compare, fail the session when a FOM regressed against the baseline run."""
    base_path = session.config.getoption("--simai-compare")
    run = _session_run(session.config)
    if not base_path or run is None:
        return
    from rich.console import Console

    from simai_core.report.compare import compare_runs
    from simai_core.report.loading import load_run

    threshold = float(session.config.getoption("--simai-threshold").rstrip("%"))
    comparison = compare_runs(load_run(base_path), run, threshold_pct=threshold)
    comparison.render(Console())
    if not comparison.ok and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

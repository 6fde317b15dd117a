"""Run the whole online-training workflow: under ``mpiexec`` (roles from a rank split) or serially.

* ``run_mpi``: every rank of ``world`` learns its role from the split
  (:func:`~simai_core.workflow.layout.plan_layout`), runs its component, and all ranks
  meet in one final all-gather of the reports (so a failed component never leaves the
  other in a collective: failures travel through the staging area first).
* ``run_serial``: one process. The trainer runs as a separate OS process
  (:class:`~simai_core.workflow.launch.ComponentProcess`), the simulation in this one.

The deployment decides the staging scope: ``clustered`` uses one server for all ranks,
``colocated`` a node-local one per node (the caller passes each rank its own address;
:func:`colocated_address` starts per-node servers where the backend has none).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from simai_core import mpi
from simai_core.staging import registry
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.launch import ComponentProcess, run_component
from simai_core.workflow.layout import node_comm, plan_layout, serial_role
from simai_core.workflow.protocol import Keys, PeerTimeoutError, WorkflowError
from simai_core.workflow.report import ComponentReport, Outcome, local_foms


class WorkflowResult(BaseModel):
    """Every component rank's report and what follows from them."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["mpi", "serial"] = Field(description="mpi: roles from a rank split; serial: trainer subprocess")
    world_size: int = Field(description="Ranks of the MPI job (1 when serial)")
    reports: list[ComponentReport] = Field(description="One per component rank, simulation first")
    local_world_rank: int = Field(0, description="The world rank this result object lives on")

    @property
    def errors(self) -> list[str]:
        """Failure messages of every component rank that failed."""
        return [f"{r.component} rank {r.rank}: {r.error}" for r in self.reports if r.error]

    def raise_for_errors(self) -> None:
        """Raise :class:`WorkflowError` listing every failed component rank."""
        if self.errors:
            raise WorkflowError("the workflow failed:\n  " + "\n  ".join(self.errors))

    @property
    def outcome(self) -> Outcome:
        """How the simulation ended (from simulation rank 0)."""
        sim0 = next(r for r in self.reports if r.component == "sim" and r.rank == 0)
        if sim0.outcome is None:
            raise WorkflowError(f"simulation rank 0 has no outcome: {sim0.error}")
        return sim0.outcome

    def local_foms(self) -> dict[str, float]:
        """FOM values of the component ranks living on this world rank (both of them when serial)."""
        mine = [r for r in self.reports if self.mode == "serial" or r.world_rank == self.local_world_rank]
        out: dict[str, float] = {}
        for report in mine:
            out |= local_foms(report)
        return out

    def per_rank_foms(self) -> list[dict[str, float]]:
        """Every world rank's FOM values (its component ranks' together), in world-rank order."""
        out: dict[int, dict[str, float]] = {}
        for report in self.reports:
            out.setdefault(report.world_rank, {}).update(local_foms(report))
        return [out[rank] for rank in sorted(out)]

    def events(self) -> list[dict[str, Any]]:
        """All per-event samples, in time order."""
        return sorted((e for r in self.reports for e in r.events), key=lambda e: e["t0_s"])

    def detail(self) -> dict[str, Any]:
        """What ran, for ``simai.params``: graph builder, trainer device and backend, rank counts, data path.

        Only facts fixed by the configuration and the machine: params identify a benchmark when
        two runs are compared, so nothing here may change from one run to the next.
        """
        sims = [r for r in self.reports if r.component == "sim"]
        trainers = [r for r in self.reports if r.component == "train"]
        out: dict[str, Any] = {"mode": self.mode, "sim_ranks": len(sims), "trainer_ranks": len(trainers),
                               "staging_scopes": len({r.scope for r in self.reports}),
                               "trainer_process": "subprocess" if self.mode == "serial" else "mpi_ranks"}
        for key in ("graph_builder", "graph_edges", "data_path"):
            if key in sims[0].detail:
                out[key] = sims[0].detail[key]
        for key in ("check_nodes", "check_subgraph_nodes"):  # the surrogate check's sample, over all simulation ranks
            if key in sims[0].detail:
                out[key] = sum(int(r.detail[key]) for r in sims)
        for key in ("device", "dist_backend", "n_parameters"):
            if trainers and key in trainers[0].detail:
                out[key] = trainers[0].detail[key]
        return out

    def discarded_from_events(self) -> int:
        """Streamed data path: snapshots the simulation ranks sent that no trainer read, from the events alone.

        Sent: the simulation's ``data`` events (rank, step); read: the payload step of every
        snapshot a trainer read (``data`` events with ``what="stream_step"``) or drained after
        the stop (``stream_late``). Independent of the stream's step ids and of the count the
        writers publish, which :meth:`stream_counts` uses.
        """
        events = self.events()
        sent = {(e["rank"], e["step"]) for e in events if e["component"] == "sim" and e["kind"] == "data"}
        read = {(e["sim_rank"], e["step"]) for e in events if e["component"] == "train"
                and (e.get("what") == "stream_step" or e["kind"] == "stream_late")}
        if not read <= sent:
            raise WorkflowError(f"trainers read snapshots no simulation rank sent: {sorted(read - sent)[:5]}")
        return len(sent - read)

    def stream_counts(self) -> dict[str, int]:
        """Streamed data path: steps written, received, late and discarded, summed over every stream."""
        trainers = [r for r in self.reports if r.component == "train"]
        names = sorted({k for r in trainers for k in r.detail if k.startswith("stream_")})
        return {name.removeprefix("stream_"): sum(int(r.detail.get(name, 0)) for r in trainers) for name in names}


def with_stream_directory(cfg: WorkflowConfig, workdir: Path) -> WorkflowConfig:
    """``cfg`` with the streams' contact-file directory set (``workdir/streams`` unless it is set) and created."""
    data = cfg.streamed_data
    if data is None:
        return cfg
    directory = Path(data.directory) if data.directory is not None else workdir / "streams"
    directory.mkdir(parents=True, exist_ok=True)
    return cfg.model_copy(update={"streamed_data": data.model_copy(update={"directory": str(directory)})})


def run_mpi(cfg: WorkflowConfig, backend: str, address: str, world: Any, profile_backend: str | None = None,
            workdir: Path | None = None) -> WorkflowResult:
    """Run the workflow over every rank of ``world`` (collective); ``address`` is this rank's staging server.

    Streams meet in rank 0's ``workdir`` unless the configuration names a directory (on several
    nodes it must be one that every node sees).
    """
    if world.Get_rank() == 0 and workdir is not None:
        cfg = with_stream_directory(cfg, workdir)
    cfg = world.bcast(cfg, root=0)  # one configuration (and run_id) for every rank
    role = plan_layout(world, cfg.deployment, cfg.sim_fraction)
    start = world.bcast(time.time(), root=0)
    client = registry.connect(backend, address)
    try:
        report = run_component(cfg, role, client, start, profile_backend)
        if report.error is not None and report.error.startswith(PeerTimeoutError.__name__):
            # The other component went silent (killed, stopped, hung): its ranks may never reach the all-gather.
            mpi.abort(f"{report.error}\nThe {'train' if role.component == 'sim' else 'sim'} ranks may never reach "
                      "the end of the run: aborting all ranks")
        reports = world.allgather(report.model_dump())
        if role.is_head and role.component == "sim":  # everyone is done with the keys now
            clean_keys(client, cfg.run_id, failed=any(r["error"] for r in reports))
    finally:
        client.close()
        role.comm.Free()
    ordered = sorted((ComponentReport.model_validate(r) for r in reports), key=lambda r: (r.component != "sim", r.rank))
    return WorkflowResult(mode="mpi", world_size=world.Get_size(), reports=ordered, local_world_rank=world.Get_rank())


def run_serial(cfg: WorkflowConfig, backend: str, address: str, workdir: Path,
               profile_backend: str | None = None) -> WorkflowResult:
    """Run the simulation here and the trainer as a child process, both on ``address``."""
    from mpi4py import MPI

    start = time.time()
    cfg = with_stream_directory(cfg, workdir)
    trainer = ComponentProcess("train", cfg, backend, address, workdir, start, profile_backend)
    client = registry.connect(backend, address)
    try:
        sim = run_component(cfg, serial_role("sim", MPI.COMM_SELF), client, start)
        train = trainer.wait(cfg.finish_timeout_s + (cfg.peer_timeout_s if sim.error else 0.0))
        clean_keys(client, cfg.run_id, failed=bool(sim.error or train.error))
    finally:
        trainer.kill()
        client.close()
    return WorkflowResult(mode="serial", world_size=1, reports=[sim, train])


def clean_keys(client: Any, run_id: str, failed: bool) -> None:
    """Remove the run's staging keys (collective-free: one rank or the serial driver).

    After a failed run the staging area may be what failed (a dead server, a removed directory):
    then a failing clean-up is ignored, so that it never hides the components' own errors.
    """
    try:
        client.clean(Keys(run_id).prefix)
    except Exception:
        if not failed:
            raise


def run_workflow(cfg: WorkflowConfig, backend: str, address: str, workdir: Path, world: Any = None,
                 profile_backend: str | None = None) -> WorkflowResult:
    """``run_mpi`` when ``world`` has several ranks, else ``run_serial``."""
    if world is not None and world.Get_size() > 1:
        return run_mpi(cfg, backend, address, world, profile_backend, workdir)
    return run_serial(cfg, backend, address, workdir, profile_backend)


@contextmanager
def colocated_address(backend: str, shared_address: str, world: Any, profile: Any, workdir: Path,
                      force_per_node: bool = False) -> Iterator[str]:
    """This rank's node-local staging address for a colocated run.

    A node-scoped backend's servers are already node-local, and on a one-node job the
    shared server is node-local too: ``shared_address`` is used. Otherwise (or with
    ``force_per_node``) the first rank of every node starts a server of ``backend``
    for its node, and it is stopped when the block ends (collective over ``world``).
    """
    node = node_comm(world)  # virtual nodes when set
    leaders = world.allreduce(1 if node.Get_rank() == 0 else 0)
    server = None
    try:
        if registry.get_spec(backend).scope == "node" or (leaders == 1 and not force_per_node):
            yield shared_address
            return

        def start() -> str:
            nonlocal server
            server = registry.make_server(backend, profile, workdir / f"colocated-{backend}")
            server.start()
            return server.address

        address = mpi.bcast_result(start, comm=node)
        yield address
        node.Barrier()  # every client of this node is done before its server stops
    finally:
        if server is not None:
            server.stop()
        node.Free()

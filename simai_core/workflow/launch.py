"""Run one workflow component as its own process: ``python -m simai_core.workflow.launch {sim,train} ...``.

Used when the workflow is not launched under ``mpiexec`` (a serial pytest run): the
other component then runs as a real separate OS process (not a thread), with its own
1-rank MPI world, talking to its peer only through the staging area. The component's
report is written as JSON; a failure is published to the peer (``error/<component>``),
written into the report, and ends the process with exit code 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import IO

from simai_core.staging import registry
from simai_core.staging.base import StagingClient
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.layout import Role, serial_role
from simai_core.workflow.protocol import Keys, publish_error
from simai_core.workflow.report import ComponentReport

# Launcher variables a child must not inherit: it would try to join the parent's MPI job.
_MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "PRTE_", "I_MPI_", "MPICH_")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def run_component(cfg: WorkflowConfig, role: Role, client: StagingClient, start_epoch_s: float,
                  profile_backend: str | None = None) -> ComponentReport:
    """Run the component of ``role``; a failure is published to the peer and returned as a report."""
    try:
        if role.component == "sim":
            from simai_core.workflow.simulation import run_simulation

            return run_simulation(cfg, role, client, start_epoch_s)
        from simai_core.workflow.trainer import run_trainer

        return run_trainer(cfg, role, client, start_epoch_s, profile_backend)
    except Exception as exc:
        message = f"{type(exc).__name__} on {role.component} rank {role.rank}: {exc}"
        publish_error(client, Keys(cfg.run_id), role.component, message)
        if role.comm.Get_size() > 1 and not getattr(exc, "agreed", False):
            # This rank failed alone (a dead server, say, met outside a collective decision): its siblings may
            # wait for it in a collective of the component, where no message reaches them. End the job instead.
            from simai_core import mpi

            mpi.abort(f"{message}\nThe other {role.component} ranks may be waiting for this one in a collective: "
                      "aborting all ranks", exc)
        detail = {"traceback": "".join(traceback.format_exception(exc))}
        return ComponentReport(component=role.component, rank=role.rank, world_rank=role.world_rank,
                               scope=role.scope, error=message, detail=detail)


ADDRESS_ENV = "SIMAI_STAGING_ADDRESS"


class ComponentProcess:
    """A component running in a child process; :meth:`wait` returns its report."""

    def __init__(self, component: str, cfg: WorkflowConfig, backend: str, address: str, workdir: Path,
                 start_epoch_s: float, profile_backend: str | None = None) -> None:
        self.component = component
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / f"{component}-config.json"
        config.write_text(cfg.model_dump_json())
        self.report_path = workdir / f"{component}-report.json"
        self.report_path.unlink(missing_ok=True)
        self.log_path = workdir / f"{component}.log"
        args = [sys.executable, "-m", "simai_core.workflow.launch", component, "--config", str(config),
                "--backend", backend, "--start-epoch", repr(start_epoch_s), "--report", str(self.report_path)]
        if profile_backend:
            args += ["--profile-backend", profile_backend]
        self._log: IO[bytes] = self.log_path.open("wb")
        # The address may hold the staging password: the environment (readable by this user only), never argv
        # (every user can read /proc/<pid>/cmdline).
        env = _child_env() | {ADDRESS_ENV: address}
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the child (no-op once it ended) and release its log file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._ended()

    def _ended(self) -> None:
        self._log.close()
        # A child that was killed (or ended by a watchdog) skipped MPI_Finalize, which leaves its singleton
        # MPICH shared-memory segment, named after its PID, in /dev/shm: nobody else maps it.
        for segment in Path("/dev/shm").glob(f"mpich_shm_{self.proc.pid:x}_*"):
            segment.unlink(missing_ok=True)

    def wait(self, timeout_s: float) -> ComponentReport:
        """Wait for the child; on the deadline kill it. A child that died without a report yields an error report."""
        try:
            code = self.proc.wait(timeout=timeout_s)
            why = f"exited with code {code}"
        except subprocess.TimeoutExpired:
            self.kill()
            why = f"did not finish within {timeout_s:g} s and was killed"
        finally:
            self._ended()
        if self.report_path.is_file():
            return ComponentReport.model_validate_json(self.report_path.read_text())
        tail = self.log_path.read_text(errors="replace")[-2000:]
        return ComponentReport(component=self.component, rank=0,
                               error=f"the {self.component} process {why} without a report; log tail:\n{tail}")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("component", choices=["sim", "train"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--start-epoch", type=float, default=None)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--profile-backend", default=None)
    args = parser.parse_args(argv)
    from mpi4py import MPI

    cfg = WorkflowConfig.model_validate_json(args.config.read_text())
    address = os.environ.pop(ADDRESS_ENV, None)  # not inherited by anything this process starts
    if not address:
        parser.error(f"${ADDRESS_ENV} is not set: the parent passes the staging address there")
    client = registry.connect(args.backend, address)
    try:
        start = args.start_epoch if args.start_epoch is not None else time.time()
        report = run_component(cfg, serial_role(args.component, MPI.COMM_WORLD), client, start, args.profile_backend)
    finally:
        client.close()
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(report.model_dump_json())
    tmp.replace(args.report)  # atomic: the parent never reads half a report
    return 1 if report.error else 0


if __name__ == "__main__":
    sys.exit(main())

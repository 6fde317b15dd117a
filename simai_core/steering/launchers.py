"""How the steerer starts simulations: one small interface, one class per launcher.

* ``pool``: persistent workers waiting for work (MPI ranks of the running job, or one
  ``mpiexec`` started once when there are none, or on the dragon backend one Dragon
  ``ProcessGroup``); a launch is one staged assignment.
* ``mpiexec``: a fresh ``mpiexec -n R`` (the venv's) per simulation.
* ``smartsim``: a SmartSim ``Model`` per simulation, started by an ``Experiment`` on the
  local launcher.
* ``dragon``: a Dragon ``Process`` per simulation in the runtime the Dragon backend started.
  Dragon simulations are stopped with SIGINT, SIGKILL only as a last resort (see
  :meth:`_DragonHandle.kill`), and no Dragon call is made once the runtime is gone.

A :class:`Handle` says whether its process ended and with what code; the steerer learns of
results from the staging area (``done`` keys), and of crashes from handles that ended
without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from simai_core.staging.base import StagingClient
from simai_core.steering.config import SteeringConfig
from simai_core.steering.worker import ADDRESS_ENV, SteerKeys, put_json

LAUNCHERS = ("pool", "mpiexec", "smartsim", "dragon")
# Launcher variables a child must not inherit: it would try to join the parent's MPI job.
_MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "PRTE_", "I_MPI_", "MPICH_")
_REPO_ROOT = Path(__file__).resolve().parents[2]


class Handle(Protocol):
    """One launched simulation."""

    def exit_code(self) -> int | None:
        """Its exit code once its process ended; None while it runs (a pool worker never ends)."""

    def kill(self) -> None:
        """End it now (no-op when it ended)."""


class Launcher(Protocol):
    """Starts simulations; ``describe`` is what the JSON says about it."""

    name: str
    describe: str

    def launch(self, sim: int) -> Handle:
        """Start simulation ``sim`` (its task is already staged)."""

    def finished(self, sim: int) -> None:
        """Simulation ``sim`` staged its result or was given up (frees a pool worker)."""

    def close(self) -> None:
        """Stop whatever the launcher keeps running; calling it twice is harmless."""


def child_env(address: str) -> dict[str, str]:
    """The environment of a simulation process: no MPI launcher variables, the address, this repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env[ADDRESS_ENV] = address
    return env


def worker_args(mode: str, backend: str, run_id: str, number: int, nprocs: int, ranks_per_sim: int,
                extra: tuple[str, ...] = ()) -> list[str]:
    """``mpiexec -n NPROCS python -m simai_core.steering.worker ...``."""
    return [mpiexec_path(), "-n", str(nprocs), sys.executable, "-m", "simai_core.steering.worker", mode, backend,
            run_id, str(number), "--ranks-per-sim", str(ranks_per_sim), *extra]


def bare_args(args: list[str]) -> list[str]:
    """``args`` without ``mpiexec -n 1`` in front (a one-rank simulation started by another launcher)."""
    return args[3:] if args[1:3] == ["-n", "1"] else args


def mpiexec_path() -> str:
    """The venv's ``mpiexec`` (the one that belongs to mpi4py's MPI)."""
    path = Path(sys.executable).with_name("mpiexec")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install the MPI extra (pip install -e '.[mpi]')")
    return str(path)


MPIEXEC_STOP_GRACE_S = 5.0  # a simulation's mpiexec asked to stop (SIGTERM) has this long before its session is SIGKILLed


class _ProcessHandle:
    """A child process in its own session, so that killing it kills its ranks too."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def exit_code(self) -> int | None:
        code = self.proc.poll()
        if code is not None and not self._log.closed:
            self._log.close()
        return code

    def wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for it to end by itself."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """End it: SIGTERM to ``mpiexec``, then SIGKILL to its session for whatever outlives the grace.

        Not SIGKILL at once: hydra, stopped by SIGTERM, stops its ranks and removes its
        ``/tmp/hydra_hwloc_xmlfile_*``, which a SIGKILLed hydra leaves behind.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            self.wait(MPIEXEC_STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):  # the session is gone (nothing outlived mpiexec)
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()
        # A killed rank skipped MPI_Finalize: its MPICH shared-memory segments, named after its pid, stay behind.
        for segment in Path("/dev/shm").glob(f"mpich_shm_{self.proc.pid:x}_*"):
            segment.unlink(missing_ok=True)


class MpiexecLauncher:
    """A fresh ``mpiexec -n R`` per simulation."""

    name = "mpiexec"

    def __init__(self, backend: str, address: str, run_id: str, ranks: int, workdir: Path) -> None:
        self.backend, self.run_id, self.ranks, self.workdir = backend, run_id, ranks, workdir
        self.env = child_env(address)
        self.describe = f"a new `{mpiexec_path()} -n {ranks}` (MPICH hydra) per simulation"
        self._handles: list[_ProcessHandle] = []

    def launch(self, sim: int) -> Handle:
        args = worker_args("run", self.backend, self.run_id, sim, self.ranks, self.ranks)
        handle = _ProcessHandle(args, self.env, self.workdir / f"sim{sim}.log")
        self._handles.append(handle)
        return handle

    def finished(self, sim: int) -> None:
        """Reap the simulations' processes that ended (no zombie piles up over a long run)."""
        self._handles = [h for h in self._handles if h.exit_code() is None]

    def close(self) -> None:
        for handle in self._handles:
            handle.kill()
        self._handles.clear()


class _PoolHandle:
    def exit_code(self) -> int | None:
        return None

    def kill(self) -> None:
        """A pool worker cannot be killed alone; the steerer gives the simulation up."""


class PoolLauncher:
    """Persistent workers ``0..W-1``, each polling its ``assign/<w>`` key; a launch is one put.

    ``external``: the workers started for the pool (a serial run), closed with it: one ``mpiexec``,
    or on the dragon backend one Dragon ``ProcessGroup``; None when they are ranks of the running MPI job.
    """

    name = "pool"

    def __init__(self, client: StagingClient, keys: SteerKeys, workers: int,
                 external: _ProcessHandle | _DragonGroup | None, describe: str) -> None:
        self.client, self.keys, self.external, self.describe = client, keys, external, describe
        self.free = list(range(workers))
        self.busy: dict[int, int] = {}
        self.seq = 0

    @classmethod
    def started(cls, client: StagingClient, backend: str, address: str, keys: SteerKeys, run_id: str, workers: int,
                ranks: int, workdir: Path, deadline: float) -> PoolLauncher:
        """A pool of its own started now: ``mpiexec -n workers*ranks``, or on the dragon backend a ProcessGroup."""
        extra = ("--deadline", repr(deadline))
        if backend == "dragon":
            if ranks != 1:
                raise ValueError("the dragon backend's pool workers are Dragon processes, one rank each: "
                                 f"--simai-steering-ranks-per-sim {ranks} needs the dragon launcher")
            commands = [bare_args(worker_args("pool", backend, run_id, w, 1, 1, extra)) for w in range(workers)]
            return cls(client, keys, workers, _DragonGroup(commands, child_env(address), workdir),
                       f"persistent workers: one Dragon ProcessGroup of {workers} processes started once "
                       "(dragon.native.process_group)")
        args = worker_args("pool", backend, run_id, 0, workers * ranks, ranks, extra)
        handle = _ProcessHandle(args, child_env(address), workdir / "pool.log")
        return cls(client, keys, workers, handle,
                   f"persistent workers: one `mpiexec -n {workers * ranks}` started once, {ranks} rank(s) each")

    def launch(self, sim: int) -> Handle:
        if self.external is not None and (code := self.external.exit_code()) is not None:
            raise RuntimeError(f"a worker of the pool ended (exit code {code})")
        worker = self.free.pop(0)
        self.busy[sim] = worker
        self.seq += 1
        put_json(self.client, self.keys.assign(worker), {"seq": self.seq, "sim": sim})
        return _PoolHandle()

    def finished(self, sim: int) -> None:
        worker = self.busy.pop(sim, None)
        if worker is not None:
            self.free.append(worker)

    def close(self) -> None:
        for worker in range(len(self.free) + len(self.busy)):
            put_json(self.client, self.keys.assign(worker), {"stop": True})
        external, self.external = self.external, None
        if external is not None:
            external.wait(30)
            external.kill()


class SmartSimLauncher:
    """A SmartSim ``Model`` per simulation, on an ``Experiment`` with the local launcher."""

    name = "smartsim"

    def __init__(self, backend: str, address: str, run_id: str, ranks: int, workdir: Path) -> None:
        os.environ["SMARTSIM_FLAG_TELEMETRY"] = "0"  # read when smartsim is imported
        os.environ.setdefault("SMARTSIM_JM_INTERVAL", "1")
        os.environ.setdefault("SMARTSIM_LOG_LEVEL", "warning")
        from smartsim import Experiment

        from simai_core.staging.smartsim import quiet_smartredis

        quiet_smartredis()
        self.backend, self.run_id, self.ranks, self.workdir = backend, run_id, ranks, workdir
        self.env = child_env(address)
        (workdir / "smartsim").mkdir(parents=True, exist_ok=True)
        self.exp = Experiment(f"steer-{run_id}", exp_path=str(workdir / "smartsim"), launcher="local")
        self.models: dict[int, Any] = {}
        self.launches = 0
        self.describe = "SmartSim 0.8 Experiment(launcher='local'): one Model per simulation, exp.start(block=False)"

    def launch(self, sim: int) -> Handle:
        args = bare_args(worker_args("run", self.backend, self.run_id, sim, self.ranks, self.ranks))
        # Every variable goes through env_vars (never the command line); the MPI ones are removed by `env -u`.
        unset = [a for k in os.environ if k.startswith(_MPI_ENV_PREFIXES) for a in ("-u", k)]
        env: dict[str, str | None] = dict(self.env)
        settings = self.exp.create_run_settings(exe="/usr/bin/env", exe_args=[*unset, *args], env_vars=env)
        self.launches += 1  # SmartSim refuses a second entity of the same name: a relaunch gets a new one
        name = f"sim{sim}-{self.launches}"
        model = self.exp.create_model(name, settings, path=str(self.workdir / "smartsim" / name))
        with _quiet():
            self.exp.start(model, block=False)
        self.models[sim] = model
        return _SmartSimHandle(self.exp, model)

    def finished(self, sim: int) -> None:
        self.models.pop(sim, None)

    def close(self) -> None:
        with _quiet():
            for model in self.models.values():
                with contextlib.suppress(Exception):  # already ended
                    self.exp.stop(model)
        self.models.clear()


class _SmartSimHandle:
    def __init__(self, exp: Any, model: Any) -> None:
        self.exp, self.model = exp, model

    def exit_code(self) -> int | None:
        from smartsim.status import SmartSimStatus

        with _quiet():
            status = self.exp.get_status(self.model)[0]
        if status == SmartSimStatus.STATUS_COMPLETED:
            return 0
        if status in (SmartSimStatus.STATUS_FAILED, SmartSimStatus.STATUS_CANCELLED):
            return 1
        return None

    def kill(self) -> None:
        with _quiet(), contextlib.suppress(Exception):  # already ended
            self.exp.stop(self.model)


DRAGON_STOP_GRACE_S = 30.0  # a Dragon simulation asked to stop (SIGINT) has this long before it is SIGKILLed


class DragonRuntimeEndedError(RuntimeError):
    """The Dragon runtime this process started has exited: no further Dragon call may be made."""


def check_dragon_runtime() -> None:
    """Raise :class:`DragonRuntimeEndedError` when the runtime the dragon backend started in this process is gone.

    Dragon's process and channel calls wait on its Local and Global Services with no timeout, so
    after the runtime's launcher exited they never return: every call the launcher makes asks
    first. (Under ``dragon python -m pytest`` the surrounding runtime is not ours to watch: no check.)
    """
    from simai_core.staging import dragon as backend

    code = backend.runtime_exit_code()
    if code is None:
        return
    why = (" (255: Dragon's abnormal termination, which its Local Services send when one of their services "
           "fails or their memory monitor finds the node's memory or /dev/shm 98 % used)" if code == 255 else "")
    raise DragonRuntimeEndedError(f"the Dragon runtime ended during the run: its launcher exited with code {code}{why}")


class DragonLauncher:
    """A Dragon ``Process`` per simulation, in the runtime this process is attached to."""

    name = "dragon"

    def __init__(self, backend: str, address: str, run_id: str, ranks: int, workdir: Path) -> None:
        self.backend, self.run_id, self.ranks, self.workdir = backend, run_id, ranks, workdir
        self.env = child_env(address)
        self.procs: dict[int, Any] = {}
        self.describe = ("dragon.native.process.Process per simulation in the runtime the dragon backend started"
                         + (f" (running `mpiexec -n {ranks}`: its ranks are not Dragon-managed)" if ranks > 1 else ""))

    def launch(self, sim: int) -> Handle:
        from dragon.native.process import Process

        check_dragon_runtime()
        args = bare_args(worker_args("run", self.backend, self.run_id, sim, self.ranks, self.ranks))
        proc = Process(target=args[0], args=tuple(args[1:]), env=self.env, cwd=str(self.workdir))
        proc.start()
        self.procs[sim] = proc
        return _DragonHandle(proc)

    def finished(self, sim: int) -> None:
        self.procs.pop(sim, None)

    def close(self) -> None:
        """Kill what still runs; raises :class:`DragonRuntimeEndedError` when the runtime is gone (nothing can be asked)."""
        procs, self.procs = list(self.procs.values()), {}
        for proc in procs:
            _DragonHandle(proc).kill()
        check_dragon_runtime()


class _DragonHandle:
    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def exit_code(self) -> int | None:
        check_dragon_runtime()
        if self.proc.is_alive:
            return None
        code = self.proc.returncode
        return None if code is None else int(code)

    def kill(self) -> None:
        """End it: SIGINT, SIGKILL only if it outlives ``DRAGON_STOP_GRACE_S`` (no-op when it ended or the runtime is gone).

        Not SIGKILL at once: a Dragon process killed inside a channel operation keeps that channel's
        lock for ever, and Local Services, destroying the dead process's channels, then spin on it
        and serve nobody again (every later attach, launch and key listing hangs). SIGINT lets the
        simulation leave its Dragon calls first (Python raises KeyboardInterrupt between them).
        """
        with contextlib.suppress(DragonRuntimeEndedError):
            check_dragon_runtime()
            if not self.proc.is_alive:
                return
            self.proc.send_signal(signal.SIGINT)
            self.proc.join(timeout=DRAGON_STOP_GRACE_S)
            if self.proc.is_alive:
                self.proc.kill()
                self.proc.join(timeout=30)


class _DragonGroup:
    """Processes started once as one Dragon ``ProcessGroup``, each with its own command (the pool's workers)."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], cwd: Path) -> None:
        from dragon.native.process import ProcessTemplate
        from dragon.native.process_group import ProcessGroup

        check_dragon_runtime()
        self.group = ProcessGroup(restart=False, ignore_error_on_exit=True)
        for args in commands:
            self.group.add_process(nproc=1, template=ProcessTemplate(target=args[0], args=tuple(args[1:]), env=env,
                                                                     cwd=str(cwd)))
        self.group.init()
        self.group.start()
        self.closed = False

    def exit_code(self) -> int | None:
        """The exit code of a member that ended; None while every member runs."""
        check_dragon_runtime()
        ended = self.group.exit_status
        return int(ended[0][1]) if ended else None

    def wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every member to end by itself."""
        with contextlib.suppress(TimeoutError, DragonRuntimeEndedError):
            check_dragon_runtime()
            self.group.join(timeout=timeout_s)

    def kill(self) -> None:
        """Stop what still runs (SIGINT, SIGTERM, then SIGKILL, 15 s apart) and end the group's manager (15 s for each)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(DragonRuntimeEndedError):
            check_dragon_runtime()
            self.group.close(patience=15.0)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """SmartSim's local launcher leaves job files open: a ResourceWarning, an error under this suite's pytest."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield


def wait_ended(handles: list[Handle], timeout_s: float) -> None:
    """Wait until every handle's process ended (pool handles excepted), killing what is left at the deadline."""
    deadline = time.monotonic() + timeout_s
    for handle in handles:
        while not isinstance(handle, _PoolHandle) and handle.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        handle.kill()


def make_launcher(cfg: SteeringConfig, client: StagingClient, backend: str, address: str, workdir: Path,
                  pool_ranks: bool = False) -> Launcher:
    """The launcher ``cfg.launcher`` names; ``pool_ranks``: the pool's workers are ranks 1.. of the running job."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = SteerKeys(cfg.run_id)
    if cfg.launcher == "pool":
        if pool_ranks:
            return PoolLauncher(client, keys, cfg.workers, None,
                                f"persistent workers: ranks 1..{cfg.workers * cfg.ranks_per_sim} of this MPI job, "
                                f"{cfg.ranks_per_sim} rank(s) each")
        return PoolLauncher.started(client, backend, address, keys, cfg.run_id, cfg.workers, cfg.ranks_per_sim,
                                    workdir, time.time() + cfg.deadline_s + 60)
    if cfg.launcher == "mpiexec":
        return MpiexecLauncher(backend, address, cfg.run_id, cfg.ranks_per_sim, workdir)
    if cfg.launcher == "smartsim":
        return SmartSimLauncher(backend, address, cfg.run_id, cfg.ranks_per_sim, workdir)
    return DragonLauncher(backend, address, cfg.run_id, cfg.ranks_per_sim, workdir)

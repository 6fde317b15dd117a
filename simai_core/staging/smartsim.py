"""SmartSim backend: a real SmartSim Orchestrator (or colocated DB) and the real SmartRedis client.

Server: ``Experiment`` + ``Orchestrator`` ("clustered") or a ``Model`` with ``colocate_db_uds``
("colocated": a DB beside a node's ranks, started by its first rank); launcher and interface from
the profile. On one node (interface ``lo``, and every colocated DB) the DB has no TCP port: it
listens on a Unix socket in this user's 0700 directory (:func:`socket_dir`), so no other local
user can connect (SmartRedis cannot send a password). Another interface gets TCP and a
:class:`~simai_core.private.SharedMachineWarning`. SmartSim always loads a RedisAI module: a real
one when installed, else the stand-in ``native/sstensor`` (storage only); ``detail()["redisai"]``
says which. Traps handled (see /work/shared/notes/platform-smartsim.md): binaries *copied* into
``smartsim/_core/bin`` (Debian's redis-server is a symlink SmartSim resolves to redis-check-rdb),
telemetry off, Redis >= 7, numpy < 2, SmartSim's leaked log files, a colocated DB that survives
``exp.stop``, SmartSim's TCP-only check of a started DB.

Client: ``smartredis.Client(address=..., cluster=False)``, ``address`` ``unix://PATH`` or
``host:port``. What SmartRedis carries (8 dtypes, >= 1 dim, non-empty, <= CHUNK_BYTES) is one
``put_tensor``/``get_tensor``; anything else is a SmartRedis Dataset of uint8 chunks with dtype
and shape as metadata. Blobs are uint8 tensors, not ``set_model`` (a real RedisAI would try to
load a checkpoint as a model). ``clean`` uses redis-py SCAN on the same server: SmartRedis cannot
list keys.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cache, partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from simai_core.errors import BackendUnavailableError, StagingFullError
from simai_core.net import free_port
from simai_core.private import SharedMachineWarning, is_own_file, private_dir, write_private
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy, check_out
from simai_core.staging.redis import CHUNK_BYTES, glob_escape
from simai_core.staging.resp import (
    UNIX_SCHEME,
    RedisPyRaw,
    RespConnection,
    RespRaw,
    expect_ok,
    read_bulk_into,
    unix_socket_path,
)

SSTENSOR_DIR = Path(__file__).resolve().parents[2] / "native" / "sstensor"
SSTENSOR_SO = SSTENSOR_DIR / "build" / "sstensor.so"
INSTALL_HINT = "install it with `pip install -e '.[smartsim]'` (smartsim==0.8.0, smartredis==0.6.1) or `make setup`"
_NATIVE = {np.dtype(d) for d in ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16")}
_START_TIMEOUT_S = 60.0
SR_RETRY_S = 20  # SmartRedis's retry window on I/O errors (SR_CMD_TIMEOUT, SR_CONN_TIMEOUT), seconds
AUTH_NOTE = ("no password: SmartRedis 0.6.1 cannot send one (its connection options carry host and port only), "
             "so a DB that required one would refuse the client")
UNIX_ACCESS = ("no TCP port; a Unix socket (mode 0700) in a 0700 directory of this user's: the kernel refuses "
               "every other local user at the directory")
TCP_ACCESS = "a TCP port with protected mode off: anyone who can reach the address can read and overwrite staged data"
SOCKET_PERM = "700"  # the socket's mode, as Redis's unixsocketperm reads it (octal)
_LOCK_NAME = re.compile(r"smartsim-[0-9a-f]{7}\.lock")  # SmartSim's create_lockfile_name()
_SOCKET_CHARS = re.compile(r"[A-Za-z0-9.:,_\-/]+")  # what SmartSim accepts in a socket path (colocate_db_uds)
_MAX_SOCKET_PATH = 100  # sun_path holds 107 bytes; Redis cuts a longer path short without a word


# ---------------------------------------------------------------- availability and environment
def check_available(name: str = "smartsim") -> None:
    """Raise :class:`BackendUnavailableError` naming what to install when anything is missing."""
    try:
        import smartredis  # noqa: F401
        import smartsim  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"Backend {name!r} needs {exc.name or exc}: {INSTALL_HINT}") from None
    if int(np.__version__.split(".")[0]) >= 2:
        raise BackendUnavailableError(f"Backend {name!r}: SmartSim 0.8.0 needs numpy < 2 (found {np.__version__}): "
                                      "pip install 'numpy<2'")
    server = shutil.which("redis-server")
    if server is None:
        raise BackendUnavailableError(f"Backend {name!r} needs redis-server >= 7: apt-get install redis-server "
                                      "(`make setup` does it as root)")
    if int(redis_version(str(Path(server).resolve())).split(".")[0]) < 7:
        raise BackendUnavailableError(f"Backend {name!r}: SmartSim passes --bind-source-addr, which needs "
                                      f"redis-server >= 7 ({server} is older)")
    if redisai_path() is None and not SSTENSOR_SO.is_file() and shutil.which(os.environ.get("CC", "gcc")) is None:
        raise BackendUnavailableError(f"Backend {name!r} needs RedisAI or the sstensor stand-in, built with gcc: "
                                      "apt-get install gcc; bash native/sstensor/build.sh")


@cache
def redis_version(server: str) -> str:
    """Version of a redis-server binary, run as argv[0] redis-server (Redis picks its mode from it)."""
    out = subprocess.run(["redis-server", "--version"], executable=server, capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "0")


def core_dir() -> Path:
    """SmartSim's ``_core`` directory (bin/, lib/, config/)."""
    import smartsim

    return Path(smartsim.__file__).resolve().parent / "_core"


def redisai_path() -> Path | None:
    """A real RedisAI: $RAI_PATH (unless it is the stand-in) or the one `smart build` installs."""
    env = os.environ.get("RAI_PATH")
    if env and Path(env).is_file() and Path(env).resolve() != SSTENSOR_SO.resolve():
        return Path(env)
    installed = core_dir() / "lib" / "redisai.so"
    return installed if installed.is_file() else None


def build_sstensor() -> Path:
    """Build the stand-in module when stale (build.sh is idempotent) and return its path."""
    result = subprocess.run(["bash", str(SSTENSOR_DIR / "build.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise BackendUnavailableError(f"Building the sstensor stand-in failed:\n{result.stderr.strip()}")
    return SSTENSOR_SO


def install_redis_binaries() -> Path:
    """Copy redis-server and redis-cli, as regular files under those names, into SmartSim's _core/bin."""
    bin_dir = core_dir() / "bin"
    try:
        bin_dir.mkdir(exist_ok=True)
        for name in ("redis-server", "redis-cli"):
            source = Path(shutil.which(name) or f"/usr/bin/{name}").resolve()  # Debian: a symlink
            target = bin_dir / name
            if target.is_file() and not target.is_symlink() and target.stat().st_size == source.stat().st_size:
                continue
            tmp = bin_dir / f".{name}.{os.getpid()}"
            shutil.copy2(source, tmp)
            os.replace(tmp, target)  # atomic: concurrent ranks never run half a binary
    except OSError as exc:
        raise BackendUnavailableError(f"Cannot install redis binaries into {bin_dir}: {exc}. {INSTALL_HINT}") from None
    return bin_dir


def prepare_environment() -> tuple[Path, str]:
    """Set what SmartSim and SmartRedis read from the environment; return (RedisAI module, kind)."""
    os.environ["SMARTSIM_FLAG_TELEMETRY"] = "0"  # the monitor outlives runs: never wanted in a benchmark
    os.environ.setdefault("SMARTSIM_JM_INTERVAL", "1")  # job-manager polling period (default 10 s)
    os.environ.setdefault("SMARTSIM_LOG_LEVEL", "warning")
    quiet_smartredis()
    install_redis_binaries()
    real = redisai_path()
    module, kind = (real, "redisai") if real else (build_sstensor(), "stand-in")
    os.environ["RAI_PATH"] = str(module)  # read by Orchestrator() and colocate_db_tcp()
    return module, kind


def quiet_smartredis() -> None:
    """Quiet SmartRedis, and give its retries a deadline that a run notices.

    SmartRedis logs every error it raises (a missing key, say) to stdout unless told otherwise,
    and retries a command or a connection that fails on I/O for 100 s by default: a killed DB
    would leave every rank retrying that long before any error. Each is kept when already set.
    """
    for name, value in (("SR_LOG_LEVEL", "QUIET"), ("SR_LOG_FILE", os.devnull),
                        ("SR_CMD_TIMEOUT", str(SR_RETRY_S)), ("SR_CONN_TIMEOUT", str(SR_RETRY_S))):
        os.environ.setdefault(name, value)


# ---------------------------------------------------------------- registry entry points
def make_server(name: str, profile: MachineProfile, workdir: Path, deployment: str = "clustered",
                db_nodes: int = 1) -> SmartSimServer:
    """A (not started) server for this profile's launcher, interface and memory limit.

    ``deployment``: "clustered" (an Orchestrator) or "colocated" (a DB beside this node's ranks).
    """
    return SmartSimServer(Path(workdir), launcher=profile.launcher, interface=profile.staging.network_interface,
                          memory_bytes=profile.staging.memory_bytes, deployment=deployment, db_nodes=db_nodes)


def connect(name: str, address: str) -> SmartSimClient:
    """A SmartRedis client for ``unix://PATH`` or ``host:port``."""
    return SmartSimClient(address)


def raw_reference(name: str, address: str) -> RawReference:
    """Plain RESP SET/GET of the raw buffer on the same DB and transport: the protocol's limit from Python."""
    return RespRaw(resp_address(address))


def second_references(name: str, address: str) -> dict[str, RawReference]:
    """Further named paths the put/get sweep reports: the tensor module without SmartRedis, and redis-py."""
    return {"module": TensorRespRaw(address), "redispy": RedisPyRaw(resp_address(address))}


def resp_address(address: str) -> str:
    """A SmartRedis address (``unix://PATH`` or ``host:port``) as :mod:`~simai_core.staging.resp` takes it."""
    return address if unix_socket_path(address) is not None else f"redis://{address}"


class TensorRespRaw(RawReference):
    """The tensor module's own path without SmartRedis: AI.TENSORSET/AI.TENSORGET BLOB in plain RESP.

    The bytes go out as :class:`RespRaw` sends them (header, then the buffer itself) as a UINT8
    tensor, and the BLOB reply is read straight into ``out``. Against :class:`RespRaw` on the same
    server it measures the module (sstensor or RedisAI); a SmartRedis client against it, the client.
    """

    description = ("AI.TENSORSET/AI.TENSORGET BLOB (uint8) in plain RESP on a TCP_NODELAY socket: the "
                   "tensor module's path without SmartRedis, the reply read into the preallocated buffer")

    def __init__(self, address: str) -> None:
        self._conn = RespConnection(resp_address(address))
        if unix_socket_path(address) is not None:
            self.description = self.description.replace("on a TCP_NODELAY socket", "on a Unix domain socket")

    def put(self, key: str, data: memoryview) -> None:
        expect_ok(self._conn.command("AI.TENSORSET", key, "UINT8", data.nbytes, "BLOB", data), f"AI.TENSORSET {key}")

    def get(self, key: str, out: memoryview) -> None:
        self._conn.send("AI.TENSORGET", key, "BLOB")
        read_bulk_into(self._conn, key, out)

    def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------- server
@contextmanager
def _smartsim_calls() -> Iterator[None]:
    # SmartSim's local launcher opens each job's .out/.err and never closes them: a ResourceWarning
    # as the call returns, which this project's pytest settings turn into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextmanager
def _quiet_db_shutdown() -> Iterator[None]:
    # Stopping a socket-only DB, SmartSim's `redis-cli -p 0 shutdown` fails and logs two errors (its
    # output, empty, then the failure) before SmartSim ends the DB's job: expected, so dropped. Its
    # logger is "SmartSim", or the module's name at log level "developer".
    loggers = [logging.getLogger(name) for name in ("SmartSim", "smartsim._core.utils.redis")]

    def keep(record: logging.LogRecord) -> bool:
        return not (record.msg == "" or str(record.msg).startswith("Error while shutting down DB node"))

    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(keep)


def socket_dir() -> Path:
    """This user's directory for DB sockets, ``$TMPDIR/simai-smartsim-<user>``: made 0700, else owner- and mode-checked.

    Raises :class:`~simai_core.private.NotPrivateError` when another user made it, or it is a link.
    """
    return private_dir(Path(tempfile.gettempdir()) / f"simai-smartsim-{getpass.getuser()}")


def _socket_path(name: str) -> Path:
    path = socket_dir() / f"{name}.sock"
    if not _SOCKET_CHARS.fullmatch(str(path)) or len(str(path)) > _MAX_SOCKET_PATH:
        raise BackendUnavailableError(f"The SmartSim DB's socket path {path} is longer than {_MAX_SOCKET_PATH} bytes or "
                                      "has characters SmartSim refuses: set TMPDIR to a short plain path")
    return path


class SmartSimServer(StagingServer):
    """A SmartSim-launched DB with the RedisAI module (or the stand-in); ``stop`` leaves nothing behind.

    On interface ``lo``, and always when colocated, the DB listens on the Unix socket ``socket``
    only (TCP port 0); elsewhere on a TCP ``port`` of that interface.
    """

    backend = "smartsim"

    def __init__(self, workdir: Path, launcher: str = "local", interface: str = "lo", memory_bytes: int = 4 * 2**30,
                 deployment: str = "clustered", db_nodes: int = 1) -> None:
        if deployment not in ("clustered", "colocated"):
            raise ValueError(f"deployment must be 'clustered' or 'colocated', not {deployment!r}")
        self.workdir, self.launcher, self.interface = Path(workdir), launcher, interface
        self.memory_bytes, self.deployment, self.db_nodes = memory_bytes, deployment, db_nodes
        self.transport = "unix" if deployment == "colocated" or interface == "lo" else "tcp"
        self.port, self._address = 0, ""
        self.socket: Path | None = None
        self.protected_mode = False
        self._access: dict[str, Any] = {"transport": self.transport}
        self._exp: Any = None
        self._entity: Any = None
        self._module: tuple[Path, str] | None = None
        self.exp_path = self.workdir / "smartsim"  # the SmartSim experiment directory

    @property
    def address(self) -> str:
        return self._address

    def start(self) -> None:
        try:
            with _smartsim_calls():
                self._launch()
        except BaseException:  # KeyboardInterrupt too: a half-started DB must not survive
            self.stop()
            raise

    def _launch(self) -> None:
        self._module = prepare_environment()
        from smartsim import Experiment

        self.exp_path.mkdir(parents=True, exist_ok=True)
        name = f"simai-{os.getpid()}-{secrets.token_hex(4)}"
        if self.transport == "unix":
            self.socket = _socket_path(name)
            self._address = f"{UNIX_SCHEME}{self.socket}"
        else:
            from smartsim._core.utils.network import get_ip_from_interface

            host = str(get_ip_from_interface(self.interface))
            self.port = free_port(host)
            self._address = f"{host}:{self.port}"
        self._exp = Experiment(name, exp_path=str(self.exp_path), launcher=self.launcher)
        if self.deployment == "clustered":
            self._start_orchestrator()
        else:
            self._start_colocated()
        self._configure()
        self._guard_access()

    def _configure(self) -> None:
        settings = {"maxmemory": str(self.memory_bytes), "maxmemory-policy": "noeviction"}
        if self.socket is not None:  # no TCP port to protect; a guard should one ever be opened
            settings["protected-mode"] = "yes"
        for name, value in settings.items():
            if not _redis_call(self._address, "config_set", name=name, value=value):
                raise RuntimeError(f"The SmartSim DB at {self._address} did not take CONFIG SET {name} {value}")

    def _guard_access(self) -> None:
        """Check and record what keeps other users out: the socket and no TCP port, or (TCP) warn."""
        if self.socket is not None:
            config = _redis_call(self._address, "config_get", pattern="*") or {}
            sock, folder = os.lstat(self.socket), os.lstat(self.socket.parent)
            mode = stat.S_IMODE(sock.st_mode)
            if config.get("port") != "0" or not stat.S_ISSOCK(sock.st_mode) or mode & 0o077:
                raise RuntimeError(f"The SmartSim DB at {self._address} is open to other users: TCP port "
                                   f"{config.get('port')}, socket mode {mode:04o}")
            self.protected_mode = config.get("protected-mode") == "yes"
            self._access = {"transport": "unix", "socket": str(self.socket), "tcp_port": int(config["port"]),
                            "bind": None, "socket_mode": f"{mode:04o}", "socket_owner_uid": sock.st_uid,
                            "socket_dir_mode": f"{stat.S_IMODE(folder.st_mode):04o}", "access": UNIX_ACCESS}
            return
        host, port = self._address.rsplit(":", 1)
        self._access = {"transport": "tcp", "socket": None, "tcp_port": int(port), "bind": host, "access": TCP_ACCESS}
        with warnings.catch_warnings():  # advice on every run of such a profile: never an error (-W error, pytest's)
            warnings.simplefilter("always", SharedMachineWarning)
            warnings.warn(SharedMachineWarning(
                f"The SmartSim DB at {self._address} (interface {self.interface}, from the machine profile) has "
                f"{AUTH_NOTE}: anyone who can reach that address can read and overwrite staged data. Use the "
                "profile's loopback interface (lo) on a one-node run (the DB then has a private Unix socket and no "
                "TCP port), or the redis backend, which has a password"), stacklevel=3)

    def _start_orchestrator(self) -> None:
        from smartsim.database import Orchestrator

        db: Any  # its is_active is replaced below
        try:
            if self.socket is None:
                db = Orchestrator(path=str(self.exp_path / "db"), port=self.port, interface=self.interface,
                                  launcher=self.launcher, db_nodes=self.db_nodes)
            else:
                db = self._unix_orchestrator(Orchestrator)
        except Exception as exc:
            if "multiple database shards" not in str(exc):
                raise
            raise BackendUnavailableError(
                f"SmartSim's local launcher starts single-shard Orchestrators only (db_nodes={self.db_nodes} asked): "
                "use db_nodes=1 here, or a batch launcher (pbs/slurm/pals) in the machine profile") from exc
        # SmartSim checks a DB (and answers get_address) with a TCP PING to host:port, which a DB without a
        # TCP port cannot answer: the check PINGs our address instead (a partial: SmartSim pickles the DB).
        # Its start-up check is one PING a job-manager interval after the launch, which can come before the
        # DB (started by a Python wrapper) listens: until the start returns, the check waits for an answer.
        db.is_active = partial(_answers_within, self._address, _START_TIMEOUT_S)
        self._entity = db
        self._exp.start(db, block=True)
        db.is_active = partial(_answers, self._address)  # started: a check no longer waits

    def _unix_orchestrator(self, orchestrator: type[Any]) -> Any:
        """An Orchestrator whose DB has the Unix socket and no TCP port (port 0), via SmartSim's REDIS_CONF."""
        from smartsim._core.config import CONFIG

        assert self.socket is not None
        conf = self.socket.with_suffix(".conf")
        write_private(conf, Path(CONFIG.database_conf).read_text()
                      + f"\n# simai: a Unix socket only\nunixsocket {self.socket}\nunixsocketperm {SOCKET_PERM}\n")
        with _env("REDIS_CONF", str(conf)):  # read as the Orchestrator builds the DB's command line
            db: Any = orchestrator(path=str(self.exp_path / "db"), port=0, interface=self.interface,
                                   launcher=self.launcher, db_nodes=self.db_nodes)
        return db

    def _start_colocated(self) -> None:
        # SmartSim colocates a DB with a Model it launches. This node's ranks are started by
        # mpiexec, not by SmartSim, so the Model is a placeholder process that holds the node's DB.
        settings = self._exp.create_run_settings(exe=shutil.which("sleep") or "sleep", exe_args=["infinity"])
        model = self._exp.create_model("node_db_holder", settings, path=str(self.exp_path / "holder"))
        model.colocate_db_uds(unix_socket=str(self.socket), socket_permissions=int(SOCKET_PERM), db_cpus=1)
        self._entity = model
        self._exp.start(model, block=False)
        from smartsim.status import TERMINAL_STATUSES

        exp = self._exp

        def ended() -> bool:
            return exp.get_status(model)[0] in TERMINAL_STATUSES

        if not _answers_within(self._address, _START_TIMEOUT_S, ended):
            err = self.exp_path / "holder" / "node_db_holder.err"
            raise RuntimeError(f"SmartSim's colocated DB did not answer on {self._address} within "
                               f"{_START_TIMEOUT_S:g} s: {err.read_text() if err.exists() else ''}")

    def stop(self) -> None:
        exp, entity, self._exp, self._entity = self._exp, self._entity, None, None
        if exp is None:
            return
        lock = _entrypoint_lock(self.processes())
        try:
            if self.socket is not None or self.deployment == "colocated":
                _redis_call(self._address, "shutdown", nosave=True)  # exp.stop kills the holder, not its DB
            if entity is not None:
                with _smartsim_calls(), _quiet_db_shutdown():
                    exp.stop(entity)
        except Exception:  # whatever SmartSim says, the sweep below still runs
            pass
        finally:
            terminate(self.processes())
            if self.socket is not None:  # Redis removes its socket on shutdown; not after a SIGKILL
                self.socket.unlink(missing_ok=True)
                self.socket.with_suffix(".conf").unlink(missing_ok=True)
            if lock is not None:
                with suppress(FileNotFoundError):
                    if is_own_file(lock):  # never a link or another user's file
                        lock.unlink()

    def processes(self) -> list[int]:
        """Live processes of this user that SmartSim started for this DB: the DB and its entrypoint."""
        if self.socket is not None:
            return our_processes(self.socket.with_suffix(""))
        return our_processes(self.port) if self.port else []

    def detail(self) -> dict[str, Any]:
        import smartsim

        module, kind = self._module or (None, "unknown")
        store = "RedisAI" if kind == "redisai" else "sstensor stand-in, not RedisAI (no server-side inference)"
        return {"redisai": kind, "tensor_store": store, "rai_path": str(module) if module else None,
                "smartsim": smartsim.__version__, "smartredis": metadata.version("smartredis"),
                "redis_server": redis_version(str(core_dir() / "bin" / "redis-server")),
                "launcher": self.launcher, "interface": self.interface,
                "deployment": self.deployment, "db_nodes": self.db_nodes, "maxmemory_bytes": self.memory_bytes,
                "telemetry": os.environ.get("SMARTSIM_FLAG_TELEMETRY") == "1",
                "auth": False, "auth_note": AUTH_NOTE, **self._access, "protected_mode": self.protected_mode,
                "client": "smartredis.Client(cluster=False); clean() via redis-py SCAN"}


def _answers(address: str) -> bool:
    """Whether the DB at ``address`` answers a PING now."""
    return bool(_redis_call(address, "ping"))


def _answers_within(address: str, timeout_s: float, ended: Callable[[], bool] | None = None) -> bool:
    """Whether the DB at ``address`` answers a PING within ``timeout_s`` (asked every 50 ms).

    False at once when ``ended()`` says the DB's process is gone.
    """
    deadline = time.monotonic() + timeout_s
    while not _answers(address):
        if time.monotonic() > deadline or (ended is not None and ended()):
            return False
        time.sleep(0.05)
    return True


def redis_kwargs(address: str) -> dict[str, Any]:
    """redis-py's connection arguments for a SmartRedis address (``unix://PATH`` or ``host:port``)."""
    if (path := unix_socket_path(address)) is not None:
        return {"unix_socket_path": path}
    host, port = address.rsplit(":", 1)
    return {"host": host, "port": int(port)}


def _redis_call(address: str, method: str, **kwargs: Any) -> Any:
    """One redis-py call to ``address``; None when the server does not answer."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:  # no retries: a refused connection (not up yet, or shut down) is an answer here
        with redis.Redis(**redis_kwargs(address), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)) as r:
            return getattr(r, method)(**kwargs)
    except redis.RedisError:
        return None


def our_processes(marker: int | Path) -> list[int]:
    """Live processes of this user that SmartSim started for one DB: the DB and its entrypoint.

    ``marker``: the DB's TCP port, or for a socket-only DB the path of its socket without the
    suffix (the socket and its config share it), which both command lines name.
    """
    if marker == 0:  # no TCP port names no DB (a socket-only DB is found by its path)
        return []
    if isinstance(marker, int):
        needles = {"redis-server": f":{marker} ", "smartsim": f"+port={marker} "}
    else:
        needles = {"redis-server": str(marker), "smartsim": str(marker)}
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid != os.getuid() or not _alive(int(proc.name)):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") + " "
        except (OSError, ValueError):
            continue
        if any(program in cmd and needle in cmd for program, needle in needles.items()):
            pids.append(int(proc.name))
    return pids


def _entrypoint_lock(pids: list[int]) -> Path | None:
    """The lock file a colocated DB's SmartSim entrypoint holds in the temp dir (``+lockfile NAME``).

    The entrypoint removes it only when it is signalled, not when its DB shuts down. The name comes
    from a process's command line, so only SmartSim's own pattern is accepted.
    """
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "+lockfile" in args[:-1] and _LOCK_NAME.fullmatch(name := args[args.index("+lockfile") + 1]):
            return Path(tempfile.gettempdir()) / name
    return None


def terminate(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, the given processes (ours, found by port)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.02)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:  # a zombie (state Z, after the pid's name in parentheses) has already exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------- client
def _missing(exc: Exception) -> bool:
    return "key is empty" in str(exc) or "does not exist" in str(exc)


@cache
def _put_contiguous() -> Callable[[Any, str, np.ndarray], None]:
    """SmartRedis's ``Client.put_tensor`` for a C-contiguous array, without its extra copy of views.

    ``Client.put_tensor`` copies every array that is a view (``data.base is not None``: a slice,
    ``np.frombuffer``, a torch tensor's ``.numpy()``) before the C++ client copies it again; the
    binding it calls reads any C-contiguous buffer as it is. Errors surface as from ``put_tensor``.
    """
    from smartredis.util import Dtypes, exception_handler

    @exception_handler
    def put_tensor(client: Any, key: str, arr: np.ndarray) -> None:  # errors name "Client.put_tensor"
        arr = np.ascontiguousarray(arr)  # the binding reads the buffer as C-ordered: never hand it strides
        client._client.put_tensor(key, Dtypes.tensor_from_numpy(arr), arr)

    return put_tensor  # type: ignore[no-any-return]


class SmartSimClient(StagingClient):
    """Staging client over one SmartRedis connection (plus redis-py for ``clean``)."""

    backend = "smartsim"

    def __init__(self, address: str) -> None:
        quiet_smartredis()
        from smartredis import Client

        self.address = address
        self._sr: Any = Client(address=address, cluster=False, logger_name="simai")
        self._redis: Any = None

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        self._put(key, as_numpy(array))

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        arr = self._get(key)  # a view of SmartRedis's own copy of the reply: no copy here
        if arr is None or out is None:
            return arr
        check_out(key, out, arr.dtype, arr.shape)
        np.copyto(out, arr)  # SmartRedis 0.6.1's Python API has no unpack_tensor (C, C++ and Fortran do)
        return out

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self._put(key, np.frombuffer(memoryview(data).cast("B"), np.uint8))

    def get_bytes(self, key: str) -> bytes | None:
        arr = self._get(key)
        return None if arr is None else arr.tobytes()

    def exists(self, key: str) -> bool:
        return bool(self._sr.tensor_exists(key) or self._sr.dataset_exists(key))

    def poll(self, key: str, timeout_s: float, interval_s: float = 1e-3, max_interval_s: float = 0.05) -> bool:
        """Wait for ``key`` with SmartRedis ``poll_tensor``; False once ``timeout_s`` has passed.

        Polls in slices of at most ``max_interval_s`` (SmartRedis holds the GIL while it sleeps)
        with a growing interval, checking for a dataset-stored value between slices.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            freq_ms = max(1, int(min(interval_s, remaining) * 1000))
            tries = max(1, int(min(remaining, max_interval_s) * 1000) // freq_ms)
            if self._sr.poll_tensor(key, freq_ms, tries) or self._sr.dataset_exists(key):
                return True
            if time.monotonic() >= deadline:
                return False
            interval_s = min(interval_s * 2, max_interval_s)

    def delete(self, key: str) -> None:
        self._sr.delete_tensor(key)  # DEL: quiet when missing
        if self._sr.dataset_exists(key):
            self._sr.delete_dataset(key)

    def clean(self, prefix: str) -> int:
        """SCAN (redis-py: SmartRedis cannot list keys) for plain and dataset (``{key}.*``) keys."""
        if self._redis is None:
            import redis

            self._redis = redis.Redis(**redis_kwargs(self.address), socket_timeout=120)
        pattern = glob_escape(prefix)
        keys = {*self._redis.scan_iter(match=pattern + "*", count=1000),
                *self._redis.scan_iter(match="{" + pattern + "*", count=1000)}
        names = {k[1:k.rfind(b"}.")] if k.startswith(b"{") and b"}." in k else k for k in keys}
        if keys:
            self._redis.unlink(*keys)
        return sum(1 for n in names if n.startswith(prefix.encode()))

    def close(self) -> None:
        self._sr = None  # SmartRedis closes its connection when the Client is freed
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def _put(self, key: str, arr: np.ndarray) -> None:
        from smartredis.error import RedisReplyError

        try:
            if arr.dtype in _NATIVE and arr.dtype.isnative and arr.ndim and arr.size and arr.nbytes <= CHUNK_BYTES:
                _put_contiguous()(self._sr, key, arr)
            else:
                self._put_dataset(key, arr)
        except RedisReplyError as exc:
            if "OOM" not in str(exc):
                raise
            raise StagingFullError(f"The SmartSim DB refused {key!r} ({arr.nbytes} bytes): its memory limit is full. "
                                   "Delete old keys, or raise staging.memory_bytes in the machine profile") from None

    def _put_dataset(self, key: str, arr: np.ndarray) -> None:
        from smartredis import Dataset

        raw = arr.reshape(-1).view(np.uint8)
        nchunks = -(-raw.size // CHUNK_BYTES)
        ds = Dataset(key)
        meta = {"dtype": arr.dtype.str, "shape": json.dumps(list(arr.shape)), "nchunks": str(nchunks)}
        for field, value in meta.items():
            ds.add_meta_string(field, value)
        for i in range(nchunks):
            ds.add_tensor(f"c{i}", raw[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES])
        self._sr.delete_tensor(key)  # a plain tensor under the same key would shadow the dataset
        self._sr.put_dataset(ds)

    def _get(self, key: str) -> np.ndarray | None:
        from smartredis.error import RedisReplyError

        try:
            return self._sr.get_tensor(key)  # type: ignore[no-any-return]
        except RedisReplyError as exc:
            if not _missing(exc):
                raise
        try:
            ds = self._sr.get_dataset(key)
        except RedisReplyError as exc:
            if _missing(exc):
                return None
            raise
        dtype, shape = np.dtype(ds.get_meta_strings("dtype")[0]), tuple(json.loads(ds.get_meta_strings("shape")[0]))
        chunks = [ds.get_tensor(f"c{i}") for i in range(int(ds.get_meta_strings("nchunks")[0]))]
        raw = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
        return raw.view(dtype).reshape(shape)

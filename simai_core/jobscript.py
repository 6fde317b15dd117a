"""``simai-bench jobscript``: a batch script that runs the suite on N nodes (PBS Pro + PALS, or Slurm).

The script takes everything machine-specific from the profile: the scheduler (``launcher``:
``pbs``/``pals`` write PBS, ``slurm`` writes Slurm), account, queue, file systems, modules,
environment, the launcher command (``mpiexec``), CPU binding (``job.cpu_bind``: each rank
bound to ``cores_per_node / ranks_per_node`` cores) and GPU affinity (one device per rank,
``local rank % gpus_per_node``, through the vendor's visibility variable). It checks that the
scheduler gave it the nodes it asked for, writes the benchmark JSON and the pytest log to
``<results>/<job id>/`` and exits with pytest's status. ``$SIMAI_LAUNCHER`` and
``$SIMAI_PYTHON`` override the launcher and the interpreter at run time.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simai_core.errors import SimaiError
from simai_core.profiles import PROFILE_DIR, MachineProfile, load_profile

ROOT = PROFILE_DIR.parent
_WALLTIME = re.compile(r"^\d{1,3}:[0-5]\d:[0-5]\d$")
_GPU_VARS = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES", "intel": "ZE_AFFINITY_MASK"}
# The launchers' local-rank variables, first found wins: PALS, Slurm, MPICH's Hydra, Open MPI.
_LOCAL_RANK = "${PALS_LOCAL_RANKID:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}}}"


class JobScriptError(SimaiError):
    """A job script that cannot be written as asked (no scheduler, bad walltime, too many ranks per node)."""


@dataclass(frozen=True)
class JobRequest:
    """What to run where: the profile, the job's shape and the pytest arguments."""

    profile: MachineProfile
    profile_ref: str
    nodes: int
    ranks_per_node: int
    walltime: str
    pytest_args: tuple[str, ...]
    workdir: Path
    results: Path
    account: str | None = None
    queue: str | None = None
    name: str = "simai-bench"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``jobscript`` subcommand to ``simai-bench``'s subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "jobscript", help="write a PBS or Slurm script that runs the suite on N nodes",
        description="Write a batch script for the profile's scheduler. Arguments after -- go to pytest.")
    p.add_argument("--profile", required=True, metavar="NAME|PATH", help="machine profile (polaris, aurora, slurm, ...)")
    p.add_argument("--nodes", type=int, required=True, metavar="N", help="nodes to ask for")
    p.add_argument("--ranks-per-node", type=int, required=True, metavar="N", help="MPI ranks per node")
    p.add_argument("--walltime", required=True, metavar="HH:MM:SS", help="wall-clock limit")
    p.add_argument("--account", default=None, help="project to charge (default: the profile's job.account)")
    p.add_argument("--queue", default=None, help="queue or partition (default: the profile's job.queue)")
    p.add_argument("--name", default="simai-bench", help="job name (default simai-bench)")
    p.add_argument("--workdir", type=Path, default=ROOT, metavar="DIR",
                   help="the suite's checkout on the cluster (default: this one); its .venv runs the ranks")
    p.add_argument("--results", type=Path, default=None, metavar="DIR",
                   help="where each job writes <job id>/bench.json and pytest.log (default: WORKDIR/results/jobs)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="write here (default: stdout)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                   help="arguments for pytest, e.g. -- benchmarks/micro -m 'micro and redis'")
    return p


def run(args: argparse.Namespace, console: Any) -> int:
    """Write the job script (to ``--output`` or the console); 0 on success."""
    pytest_args = list(args.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    workdir = args.workdir.resolve() if args.workdir == ROOT else args.workdir
    request = JobRequest(profile=load_profile(args.profile), profile_ref=args.profile, nodes=args.nodes,
                         ranks_per_node=args.ranks_per_node, walltime=args.walltime, pytest_args=tuple(pytest_args),
                         workdir=workdir, results=args.results or workdir / "results" / "jobs",
                         account=args.account, queue=args.queue, name=args.name)
    text = render(request)
    if args.output is None:
        console.file.write(text)  # as it is: no wrapping, no markup
        return 0
    try:
        args.output.write_text(text)
        args.output.chmod(0o755)
    except OSError as exc:
        raise JobScriptError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    console.print(f"wrote {args.output} ({_scheduler(request.profile)}, {request.nodes} nodes x "
                  f"{request.ranks_per_node} ranks)", markup=False, highlight=False,
                  soft_wrap=True)  # a path to copy: never wrapped
    return 0


def render(req: JobRequest) -> str:
    """The job script's text for ``req`` (checked: the scheduler exists, the walltime parses, binding fits)."""
    scheduler = _scheduler(req.profile)
    _check(req)
    header = _pbs_header(req) if scheduler == "pbs" else _slurm_header(req)
    lines = ["#!/bin/bash", *header,
             f"# Written by simai-bench jobscript: profile {req.profile.name}, {req.nodes} nodes x "
             f"{req.ranks_per_node} ranks. Regenerate rather than edit.",
             "set -euo pipefail", ""]
    if req.profile.job.modules:
        lines += [*(f"module load {shlex.quote(m)}" for m in req.profile.job.modules), ""]
    lines += [f"NODES={req.nodes}", f"RANKS_PER_NODE={req.ranks_per_node}",
              f"WORKDIR={shlex.quote(str(req.workdir))}",
              f"RESULTS_ROOT={shlex.quote(str(req.results))}",
              'PYTHON="${SIMAI_PYTHON:-$WORKDIR/.venv/bin/python}"',
              f'LAUNCHER="${{SIMAI_LAUNCHER:-{_dq(req.profile.mpiexec)}}}"', ""]
    lines += _allocation(scheduler)
    lines += ['results="$RESULTS_ROOT/$job"', 'mkdir -p "$results"',
              f"export SIMAI_PROFILE={shlex.quote(req.profile_ref)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in req.profile.job.env.items()]
    lines += ['cd "$WORKDIR"', ""]
    lines += _gpu_wrapper(req.profile)
    lines += _launch(req, scheduler)
    lines += ['echo "simai-bench: results in $results (simai-bench show $results/bench.json)"', ""]
    return "\n".join(lines)


def _scheduler(profile: MachineProfile) -> str:
    if profile.launcher in ("pbs", "pals"):
        return "pbs"
    if profile.launcher == "slurm":
        return "slurm"
    raise JobScriptError(f"profile {profile.name!r} has launcher {profile.launcher!r}, which has no batch scheduler: "
                         "use a pbs, pals or slurm profile (e.g. polaris, aurora, slurm)")


def _check(req: JobRequest) -> None:
    if req.nodes < 1 or req.ranks_per_node < 1:
        raise JobScriptError(f"--nodes and --ranks-per-node must be at least 1 (got {req.nodes}, {req.ranks_per_node})")
    if not _WALLTIME.match(req.walltime):
        raise JobScriptError(f"--walltime {req.walltime!r}: expected HH:MM:SS, e.g. 01:00:00")
    if _depth(req) < 1:
        raise JobScriptError(f"{req.ranks_per_node} ranks per node do not fit {req.profile.resolved_cores()} cores "
                             f"(profile {req.profile.name}) with one core each")
    if _account(req) is None:
        raise JobScriptError(f"no account: give --account or set job.account in profile {req.profile.name!r}")


def _depth(req: JobRequest) -> int:
    return req.profile.resolved_cores() // req.ranks_per_node


def _account(req: JobRequest) -> str | None:
    return req.account or req.profile.job.account


def _safe(value: str, what: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.:@+/=,-]+$", value):
        raise JobScriptError(f"{what} {value!r}: only letters, digits and _.:@+/=,- fit a directive line")
    return value


def _pbs_header(req: JobRequest) -> list[str]:
    job = req.profile.job
    select = f"select={req.nodes}" + (f":{job.select}" if job.select else "")
    out = [f"#PBS -N {_safe(req.name, '--name')}", f"#PBS -A {_safe(str(_account(req)), 'account')}"]
    queue = req.queue or job.queue
    out += [f"#PBS -q {_safe(queue, 'queue')}"] if queue else []
    out += [f"#PBS -l {select}", f"#PBS -l walltime={req.walltime}"]
    out += [f"#PBS -l filesystems={':'.join(job.filesystems)}"] if job.filesystems else []
    out += [f"#PBS {d}" for d in job.directives]
    return [*out, "#PBS -j oe"]


def _slurm_header(req: JobRequest) -> list[str]:
    job = req.profile.job
    out = [f"#SBATCH --job-name={_safe(req.name, '--name')}", f"#SBATCH --account={_safe(str(_account(req)), 'account')}"]
    queue = req.queue or job.queue
    out += [f"#SBATCH --partition={_safe(queue, 'queue')}"] if queue else []
    out += [f"#SBATCH --nodes={req.nodes}", f"#SBATCH --ntasks-per-node={req.ranks_per_node}"]
    out += [f"#SBATCH --cpus-per-task={_depth(req)}"] if job.cpu_bind == "depth" else []
    out += [f"#SBATCH --time={req.walltime}"]
    out += [f"#SBATCH --licenses={','.join(job.filesystems)}"] if job.filesystems else []
    return out + [f"#SBATCH {d}" for d in job.directives]


def _allocation(scheduler: str) -> list[str]:
    """Shell lines that check the allocation's node count and name the job (``$job``)."""
    if scheduler == "pbs":
        return ['nodefile="${PBS_NODEFILE:?PBS_NODEFILE is not set: submit this script with qsub}"',
                'got=$(wc -l < "$nodefile")',
                'job="${PBS_JOBID:?PBS_JOBID is not set: submit this script with qsub}"', 'job="${job%%.*}"',
                *_node_check()]
    return ['got="${SLURM_JOB_NUM_NODES:?SLURM_JOB_NUM_NODES is not set: submit this script with sbatch}"',
            'job="${SLURM_JOB_ID:?SLURM_JOB_ID is not set: submit this script with sbatch}"', *_node_check()]


def _node_check() -> list[str]:
    return ['if [ "$got" -ne "$NODES" ]; then',
            '  echo "simai-bench: the job has $got nodes, the script was written for $NODES" >&2',
            "  exit 2", "fi"]


def _gpu_wrapper(profile: MachineProfile) -> list[str]:
    """``GPU=(...)``: a command prefix that gives each rank one device (empty without GPUs)."""
    gpus = profile.resolved_gpus()
    var = _GPU_VARS.get(profile.gpu_vendor)
    if not gpus or var is None:
        return ["GPU=()  # no accelerators in this profile", ""]
    body = f'local_rank={_LOCAL_RANK}; export {var}=$((local_rank % {gpus})); exec "$@"'
    return [f"# One device per rank: {var} = local rank % {gpus}.",
            "# shellcheck disable=SC2016  # expanded by each rank's shell, not here",
            f"GPU=(bash -c {shlex.quote(body)} simai-gpu-affinity)", ""]


def _launch(req: JobRequest, scheduler: str) -> list[str]:
    bind = req.profile.job.cpu_bind == "depth"
    if scheduler == "pbs":
        flags = ['-n "$((NODES * RANKS_PER_NODE))"', '--ppn "$RANKS_PER_NODE"']
        flags += [f"--depth {_depth(req)}", "--cpu-bind depth"] if bind else []
        flags += ['--hostfile "$nodefile"']
    else:
        flags = ['-N "$NODES"', '-n "$((NODES * RANKS_PER_NODE))"', '--ntasks-per-node "$RANKS_PER_NODE"']
        flags += [f"--cpus-per-task {_depth(req)}", "--cpu-bind=cores"] if bind else []
    command = ['"$PYTHON" -m pytest', *(shlex.quote(a) for a in req.pytest_args), '--benchmark-json "$results/bench.json"']
    literal = ["# shellcheck disable=SC2016  # the pytest arguments are meant literally"] if any(
        c in a for a in req.pytest_args for c in "$`") else []
    return ["status=0", *literal,
            f'"$LAUNCHER" {" ".join(flags)} \\',
            f'  "${{GPU[@]}}" {" ".join(command)} \\',
            '  2>&1 | tee "$results/pytest.log" || status=$?',
            'if [ "$status" -ne 0 ]; then',
            '  echo "simai-bench: pytest exited with $status; log: $results/pytest.log" >&2',
            '  exit "$status"', "fi"]


def _dq(text: str) -> str:
    """``text`` safe inside double quotes."""
    return re.sub(r'(["$`\\])', r"\\\1", text)

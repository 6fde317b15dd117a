"""The configuration of one steered-ensemble run, validated before anything starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from simai_core.steering.learner import Policy

Mode = Literal["batch", "streaming"]
LauncherName = Literal["pool", "mpiexec", "smartsim", "dragon"]
Failure = Literal["exit", "raise", "hang"]


class SteeringConfig(BaseModel):
    """What to run: the policy, how it is fed, how simulations start, the budget and the problem."""

    model_config = ConfigDict(extra="forbid")
    run_id: str = Field("steer", description="names this run's keys (steer/<run_id>/...)")
    policy: Policy = Field("ai", description="ai: Gaussian process + expected improvement; random: uniform points")
    mode: Mode = Field("streaming", description="batch: refit after every W results; streaming: after every result")
    launcher: LauncherName = Field("pool", description="how simulations start")
    workers: int = Field(4, ge=1, description="W: simulations running at once")
    ranks_per_sim: int = Field(1, ge=1, description="MPI ranks of one simulation")
    budget: int = Field(64, ge=1, description="most simulations that complete (failed ones are replaced, not counted)")
    seed: int = Field(0, description="picks the hidden parameters, the initial design and the learner's draws")
    tolerance: float = Field(0.05, gt=0, description="target: every normalised coordinate of the best point within this")
    field_bytes: int = Field(64 * 2**10, ge=2**9, description="size of a simulation's field (sets the grid)")
    rtol: float = Field(1e-10, gt=0, description="relative residual each solve reaches")
    sim_timeout_s: float = Field(120.0, gt=0, description="a simulation running longer is killed and replaced")
    deadline_s: float = Field(540.0, gt=0, description="the whole run ends by then, whatever is running")
    max_failures: int = Field(8, ge=0, description="failed simulations tolerated before the run gives up")
    fail: dict[int, Failure] = Field({}, description="tests: simulation id -> injected failure on its first attempt")
    release_after_s: float | None = Field(None, description="tests: a decision's simulations stage their results "
                                                            "together, this long after it")

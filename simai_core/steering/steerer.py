"""The steering loop: keep W simulations running on the learner's choices until the target or the budget.

One process (the learner) does everything that is not a simulation: it polls the ``done``
keys of the running simulations, reads each new result (field and sensor readings), refits
the surrogate (streaming: on every result; batch: once all W of a batch are in), chooses the
next parameters, writes their tasks and launches them. A simulation that ends without a
result, reports an error or runs past its timeout is recorded as failed and relaunched with
the same parameters. Every result is ingested exactly once: it is taken off the running set
when its ``done`` record is read, and results are kept by simulation id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simai_core.staging.base import StagingClient
from simai_core.steering.config import SteeringConfig
from simai_core.steering.launchers import Handle, Launcher
from simai_core.steering.learner import initial_design, make_chooser
from simai_core.steering.problem import InverseProblem
from simai_core.steering.worker import SteerKeys, get_json, put_json

# How often a running simulation's process is asked whether it ended (a crash is noticed this late at most);
# results are noticed on every poll of their done key. SmartSim's get_status is slow: not on every poll.
EXIT_CHECK_S = 0.25


@dataclass
class SimRecord:
    """One simulation: when it was launched, started and staged (epoch s), what it found and cost."""

    sim: int
    theta: np.ndarray
    decision: int
    launched: float = 0.0
    write_end: float = 0.0  # when its decision's tasks were all written
    started: float = 0.0
    staged: float = 0.0
    ingested: float = 0.0
    misfit: float = float("nan")
    read_s: float = 0.0
    read_bytes: int = 0
    write_s: float = 0.0
    solve_s: float = 0.0
    iterations: int = 0
    attempts: int = 1


@dataclass
class Decision:
    """One round of the learner: which results it saw, and how long each part took."""

    index: int
    trigger_staged: float | None  # newest result in the model (None: the initial design)
    model_size: int
    fit_s: float = 0.0
    choose_s: float = 0.0
    write_s: float = 0.0
    fit_start: float = 0.0
    chosen_at: float = 0.0
    sims: list[int] = field(default_factory=list)


@dataclass
class SteeringResult:
    """Everything a run measured; :mod:`simai_core.steering.report` turns it into FOMs."""

    config: SteeringConfig
    launcher: str
    launcher_detail: str
    start: float
    end: float
    reason: str
    reached_after: int | None  # completed simulations when the target was met
    reached_at: float | None
    best_error: float
    sims: dict[int, SimRecord]
    completed: list[int]  # simulation ids in the order their results were ingested
    decisions: list[Decision]
    failures: list[dict[str, Any]]
    cancelled: int

    @property
    def reached(self) -> bool:
        """Whether the target was met within the budget and the deadline."""
        return self.reached_after is not None


class Steerer:
    """Runs one steering loop (see the module docstring)."""

    def __init__(self, cfg: SteeringConfig, client: StagingClient, launcher: Launcher, problem: InverseProblem) -> None:
        self.cfg, self.client, self.launcher, self.problem = cfg, client, launcher, problem
        self.keys = SteerKeys(cfg.run_id)
        self.chooser = make_chooser(cfg.policy, cfg.seed)
        self.sims: dict[int, SimRecord] = {}
        self.running: dict[int, tuple[Handle, int]] = {}  # sim -> (handle, attempt)
        self.completed: list[int] = []
        self.decisions: list[Decision] = []
        self.failures: list[dict[str, Any]] = []
        self.buffer = np.empty((problem.n, problem.n))
        self.next_id = 0
        self._checked: dict[int, float] = {}  # sim -> when its process was last asked whether it ended

    # ------------------------------------------------------------------ the loop
    def run(self) -> SteeringResult:
        """Steer until the target, the budget or the deadline; always stops what it started."""
        start = time.time()
        deadline = start + self.cfg.deadline_s
        reason, reached_after, reached_at = "deadline", None, None
        try:
            self._decide(initial_design(min(self.cfg.workers, self.cfg.budget), self.cfg.seed), None)
            pause = 1e-3
            while time.time() < deadline:
                fresh = self._collect()
                if reached_after is None and self.completed and self.problem.reached(self._best()):
                    reached_after, reached_at, reason = len(self.completed), time.time(), "target"
                    break
                if len(self.completed) >= self.cfg.budget:
                    reason = "budget"
                    break
                if len(self.failures) > self.cfg.max_failures:
                    reason = "failures"
                    break
                decided = self._maybe_decide(fresh)
                pause = 1e-3 if fresh or decided else min(pause * 2, 0.01)
                if not (fresh or decided):
                    time.sleep(pause)
        finally:
            cancelled = self._stop()
        return SteeringResult(config=self.cfg, launcher=self.launcher.name, launcher_detail=self.launcher.describe,
                              start=start, end=time.time(), reason=reason, reached_after=reached_after,
                              reached_at=reached_at, best_error=self.problem.error(self._best()) if self.completed
                              else float("nan"), sims=self.sims, completed=self.completed, decisions=self.decisions,
                              failures=self.failures, cancelled=cancelled)

    def _maybe_decide(self, fresh: int) -> bool:
        free = self.cfg.workers - len(self.running)
        remaining = self.cfg.budget - len(self.completed) - len(self.running)
        count = min(free, remaining)
        ready = fresh > 0 if self.cfg.mode == "streaming" else not self.running
        if count <= 0 or not ready:
            return False
        self._fit_and_decide(count)
        return True

    def _best(self) -> np.ndarray:
        best = min(self.completed, key=lambda s: self.sims[s].misfit)
        return self.sims[best].theta

    # ------------------------------------------------------------------ learner
    def _fit_and_decide(self, count: int) -> None:
        done = [self.sims[s] for s in self.completed]
        decision = Decision(index=len(self.decisions), trigger_staged=max(r.staged for r in done),
                            model_size=len(done), fit_start=time.time())
        t0 = time.perf_counter()
        self.chooser.fit(np.array([r.theta for r in done]), np.array([r.misfit for r in done]))
        t1 = time.perf_counter()
        pending = np.array([self.sims[s].theta for s in self.running]).reshape(-1, len(done[0].theta))
        points = self.chooser.choose(count, pending)
        decision.fit_s, decision.choose_s = t1 - t0, time.perf_counter() - t1
        decision.chosen_at = time.time()
        self._launch_points(points, decision)

    def _decide(self, points: np.ndarray, trigger: float | None) -> None:
        decision = Decision(index=len(self.decisions), trigger_staged=trigger, model_size=len(self.completed),
                            fit_start=time.time(), chosen_at=time.time())
        self._launch_points(points, decision)

    def _launch_points(self, points: np.ndarray, decision: Decision) -> None:
        release = time.time() + self.cfg.release_after_s if self.cfg.release_after_s else None
        records = []
        t0 = time.perf_counter()
        for theta in points:
            record = SimRecord(sim=self.next_id, theta=np.asarray(theta), decision=decision.index)
            self.next_id += 1
            self._write_task(record, release, attempt=0)
            records.append(record)
        decision.write_s = time.perf_counter() - t0
        write_end = time.time()
        self.decisions.append(decision)
        for record in records:
            record.write_end = write_end
            self.sims[record.sim] = record
            decision.sims.append(record.sim)
            self._launch(record, attempt=0)

    def _write_task(self, record: SimRecord, release: float | None, attempt: int) -> None:
        task: dict[str, Any] = {"theta": record.theta.tolist(), "n": self.problem.n, "rtol": self.cfg.rtol}
        if attempt == 0 and record.sim in self.cfg.fail:
            task["fail"] = self.cfg.fail[record.sim]
        if release is not None:
            task["release_at"] = release
        put_json(self.client, self.keys.task(record.sim), task)

    def _launch(self, record: SimRecord, attempt: int) -> None:
        record.launched = time.time()
        self.running[record.sim] = (self.launcher.launch(record.sim), attempt)

    # ------------------------------------------------------------------ results
    def _collect(self) -> int:
        """Ingest every result staged since the last call; handle failures. Returns how many results came in."""
        fresh = 0
        for sim in list(self.running):
            handle, _ = self.running[sim]
            t0 = time.perf_counter()
            done = get_json(self.client, self.keys.done(sim))
            if done is None:
                if time.time() - self._checked.get(sim, 0.0) < EXIT_CHECK_S:
                    continue
                self._checked[sim] = time.time()
                code = handle.exit_code()
                if code is not None:  # it may have staged its result just before it ended
                    done = get_json(self.client, self.keys.done(sim))
                    if done is None:
                        self._failed(sim, f"process ended with exit code {code} and no result", kill=False)
                elif time.time() - self.sims[sim].launched > self.cfg.sim_timeout_s:
                    self._failed(sim, f"no result within {self.cfg.sim_timeout_s:g} s: killed", kill=True)
                if done is None:
                    continue
            if not done.get("ok"):
                self._failed(sim, str(done.get("error")), kill=False)
                continue
            self._ingest(sim, done, t0)
            fresh += 1
        return fresh

    def _ingest(self, sim: int, done: dict[str, Any], t0: float) -> None:
        record = self.sims[sim]
        field_ = self.client.get_tensor(self.keys.field(sim), out=self.buffer)
        qoi = self.client.get_tensor(self.keys.qoi(sim))
        record.read_s = time.perf_counter() - t0
        if field_ is None or qoi is None:
            raise RuntimeError(f"simulation {sim} staged its done record without its field or sensor readings")
        record.read_bytes = self.buffer.nbytes + qoi.nbytes
        record.ingested = time.time()
        record.started, record.staged = float(done["started"]), float(done["staged"])
        record.write_s, record.solve_s = float(done["write_s"]), float(done["solve_s"])
        record.iterations = int(done["iterations"])
        record.misfit = self.problem.misfit(qoi)
        del self.running[sim]
        self.launcher.finished(sim)
        self.completed.append(sim)
        for key in (self.keys.field(sim), self.keys.qoi(sim)):
            self.client.delete(key)

    def _failed(self, sim: int, why: str, kill: bool) -> None:
        handle, attempt = self.running.pop(sim)
        if kill:
            handle.kill()
        self.launcher.finished(sim)
        self.failures.append({"sim": sim, "attempt": attempt, "error": why, "at_s": time.time()})
        self.client.delete(self.keys.done(sim))
        if len(self.failures) <= self.cfg.max_failures:  # replaced: same parameters, a new attempt
            record = self.sims[sim]
            record.attempts += 1
            self._write_task(record, None, attempt + 1)
            record.launched = time.time()
            self.running[sim] = (self.launcher.launch(sim), attempt + 1)

    def _stop(self) -> int:
        """Kill or abandon what still runs; stop the launcher. Returns how many simulations were cancelled."""
        cancelled = len(self.running)
        for handle, _ in self.running.values():
            handle.kill()
        self.running.clear()
        self.launcher.close()
        return cancelled


def run_steering(cfg: SteeringConfig, client: StagingClient, backend: str, address: str, workdir: Any,
                 pool_ranks: bool = False) -> SteeringResult:
    """One whole run: the problem of ``cfg.seed``, the launcher, the loop; this run's keys are removed after."""
    from simai_core.steering.launchers import make_launcher
    from simai_core.steering.problem import make_problem
    from simai_core.steering.solver import grid_points

    problem = make_problem(cfg.seed, grid_points(cfg.field_bytes), cfg.tolerance)
    launcher = make_launcher(cfg, client, backend, address, workdir, pool_ranks=pool_ranks)
    try:
        return Steerer(cfg, client, launcher, problem).run()
    finally:
        launcher.close()
        if not pool_ranks:  # pool ranks may still stage a result: the caller cleans once they stopped
            client.clean(SteerKeys(cfg.run_id).prefix)

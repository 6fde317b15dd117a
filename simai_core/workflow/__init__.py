"""The online-training workflow of motif 6: a mock simulation streams snapshots to a DDP trainer.

Importing this package (or its config, problem, graph, layout, protocol, timers and
report modules) does not import torch; the simulation, trainer, checkpoint, dataset
and distributed modules do.
"""

from __future__ import annotations

from simai_core.workflow.config import (
    GraphConfig,
    ProblemConfig,
    SimulationConfig,
    TrainerConfig,
    WorkflowConfig,
)

__all__ = ["GraphConfig", "ProblemConfig", "SimulationConfig", "TrainerConfig", "WorkflowConfig"]

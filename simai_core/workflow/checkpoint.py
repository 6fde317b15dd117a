"""TorchScript checkpoints: serialise on the trainer, load on the simulation (imports torch).

torch 2.13 marks ``torch.jit`` as deprecated; the warning is silenced here (and only
here) because TorchScript is what lets the simulation run a model without the model's
Python code or torch_geometric.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecated", category=DeprecationWarning)
        yield


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """Script ``model``; the script module shares the model's parameters, so it tracks training."""
    with _quiet_jit():
        return torch.jit.script(model)


def to_bytes(scripted: torch.jit.ScriptModule) -> bytes:
    """Serialise a script module (weights included)."""
    buf = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(scripted, buf)
    return buf.getvalue()


def from_bytes(blob: bytes, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load a serialised script module onto ``device``, in eval mode; a damaged blob raises ``ValueError``."""
    try:
        with _quiet_jit():
            model = torch.jit.load(io.BytesIO(blob), map_location=device)
    except RuntimeError as exc:  # torch's readers raise RuntimeError on bad input
        raise ValueError(f"checkpoint of {len(blob)} bytes is not a loadable TorchScript module "
                         f"(truncated or corrupted on its way?): {exc}") from None
    model.eval()
    return model

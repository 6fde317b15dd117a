"""Checkpoint push/pull: rank 0 pushes a serialized surrogate, every rank pulls it.

Models are the motif-6 surrogates at their reference sizes (MLP 6.7k parameters, GNN
about 21k) in two formats: TorchScript (what the simulation loads for inference) and a
state_dict. FOMs: ``push_*`` from rank 0, ``pull_*`` over all ranks (aggregates measured over the
round's common window), ``*_vs_raw`` against the backend's raw path, and ``load_s``: deserialising the pulled bytes.
"""

from __future__ import annotations

import io
import time

import pytest

from simai_core import mpi
from simai_core.bench.measure import PairedRounds, median, sync_ranks
from simai_core.bench.record import paired_throughput, record
from simai_core.fom import FomSpec
from simai_core.staging import registry

torch = pytest.importorskip("torch", reason="checkpoint benchmarks need torch: make setup (or pip install -e .[gnn])")
pytest.importorskip("torch_geometric", reason="the GNN surrogate needs torch-geometric: pip install -e .[gnn]")

pytestmark = pytest.mark.micro
ROUNDS = 20


def serialize(model_name: str, fmt: str) -> bytes:
    """The checkpoint bytes of a reference-size surrogate (2-D small problem: 1 field in, 1 out)."""
    from simai_core.models import GNNConfig, MLPConfig, build_model

    torch.manual_seed(0)
    config = MLPConfig() if model_name == "mlp" else GNNConfig()
    model = build_model(config, n_in=1, n_out=1, spatial_dim=2)
    buf = io.BytesIO()
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(model), buf)
    else:
        torch.save(model.state_dict(), buf)
    return buf.getvalue()


def deserialize(blob: bytes, fmt: str) -> object:
    """What a consumer does with the pulled bytes before it can use them."""
    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(blob))
    return torch.load(io.BytesIO(blob), weights_only=True)


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
@pytest.mark.parametrize("model_name", ["mlp", "gnn"])
@pytest.mark.parametrize("op", ["push", "pull"])
def test_checkpoint(benchmark, backend, staging, staging_pool, simai_run, op, model_name, fmt, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or ROUNDS
    blob = mpi.bcast_result(lambda: serialize(model_name, fmt))  # TorchScript bytes differ between processes
    key = f"micro.checkpoint.{model_name}.{fmt}"
    raw = registry.raw_reference(backend, staging_pool.address(backend))
    mine = op == "pull" or mpi.rank() == 0  # pushing is rank 0's job; the others only keep in step
    out = bytearray(len(blob))
    try:
        if mpi.rank() == 0:
            raw.put(f"raw.{key}", memoryview(blob))
            staging.put_bytes(key, blob)
        sync_ranks()
        raw_op = (lambda: raw.put(f"raw.{key}", memoryview(blob))) if op == "push" \
            else (lambda: raw.get(f"raw.{key}", memoryview(out)))
        target = (lambda: staging.put_bytes(key, blob)) if op == "push" else (lambda: staging.get_bytes(key))
        timing = PairedRounds(target if mine else _idle, {"raw": raw_op if mine else _idle})
        benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
        timing.finish()
    finally:
        raw.close()

    pulled = staging.get_bytes(key)
    assert pulled == blob, "checkpoint bytes changed in transit"
    load_s = median([_timed(lambda: deserialize(pulled, fmt)) for _ in range(5)])

    fom_args = paired_throughput(op, timing, len(blob) / 1e9, moves=mine)
    fom_args["local"]["load_s"] = load_s
    fom_args["specs"]["load_s"] = FomSpec(unit="s", better="lower")
    params = {"op": op, "model": model_name, "format": fmt, "nbytes": len(blob), "rounds": rounds,
              "raw": raw.description}
    record(benchmark, simai_run(backend, params), **fom_args)


def _idle() -> None:
    """A rank with nothing to move in this round."""


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start

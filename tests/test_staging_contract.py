"""The contract every staging backend keeps, run against real servers through the suite's fixtures.

Under ``mpiexec -n N pytest --with-mpi`` every rank runs it on its own keys, and the
cross-rank test checks that what one rank puts, another rank gets.
"""

from __future__ import annotations

import numpy as np
import pytest

from simai_core import mpi
from simai_core.errors import StagingTimeoutError

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]
SHAPES = [(), (0,), (7,), (3, 5), (2, 3, 4), (1, 1, 1, 9)]


def key(name: str) -> str:
    return f"test.{mpi.rank()}.{name}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_round_trip_every_dtype(staging, dtype):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((4, 6)) * 100).astype(dtype)
    staging.put_tensor(key(dtype), array)
    got = staging.get_tensor(key(dtype))
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_round_trip_every_shape(staging, shape):
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    staging.put_tensor(key("shape"), array)
    out = np.empty_like(array)
    assert staging.get_tensor(key("shape"), out=out) is out
    np.testing.assert_array_equal(out, array)


def test_non_contiguous_and_torch_inputs(staging):
    array = np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2]
    staging.put_tensor(key("strided"), array)
    np.testing.assert_array_equal(staging.get_tensor(key("strided")), array)
    torch = pytest.importorskip("torch")
    tensor = torch.linspace(0, 1, 10, dtype=torch.float64)
    staging.put_tensor(key("torch"), tensor)
    np.testing.assert_array_equal(staging.get_tensor(key("torch")), tensor.numpy())


def test_overwrite_replaces_value(staging):
    staging.put_tensor(key("ow"), np.zeros(1000))
    staging.put_tensor(key("ow"), np.ones(3, dtype=np.int8))
    np.testing.assert_array_equal(staging.get_tensor(key("ow")), np.ones(3, dtype=np.int8))


def test_out_must_match(staging):
    staging.put_tensor(key("out"), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="float32"):
        staging.get_tensor(key("out"), out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="float32"):
        staging.get_tensor(key("out"), out=np.empty((2, 3), np.float64))


def test_bytes_round_trip(staging):
    blob = np.random.default_rng(2).bytes(100_003)
    staging.put_bytes(key("blob"), blob)
    assert staging.get_bytes(key("blob")) == blob
    staging.put_bytes(key("empty"), b"")
    assert staging.get_bytes(key("empty")) == b""


def test_missing_keys(staging):
    assert staging.get_tensor(key("missing")) is None
    assert staging.get_bytes(key("missing")) is None
    assert not staging.exists(key("missing"))
    staging.delete(key("missing"))  # quiet


def test_exists_delete_clean(staging):
    for i in range(5):
        staging.put_tensor(key(f"clean.{i}"), np.array([i]))
    staging.put_bytes(key("keep"), b"x")
    assert staging.exists(key("clean.3"))
    staging.delete(key("clean.3"))
    assert not staging.exists(key("clean.3"))
    assert staging.clean(key("clean.")) == 4
    assert not staging.exists(key("clean.0"))
    assert staging.exists(key("keep"))


def test_poll_and_deadline(staging):
    staging.put_tensor(key("here"), np.array([1]))
    assert staging.poll(key("here"), timeout_s=1.0)
    assert not staging.poll(key("never"), timeout_s=0.05)
    with pytest.raises(StagingTimeoutError, match="never"):
        staging.wait_for(key("never"), timeout_s=0.05)


def test_what_one_rank_puts_the_next_gets(staging, backend):
    rank, size = mpi.rank(), mpi.size()
    if backend == "nodelocal" and mpi.world().Split_type(__import__("mpi4py").MPI.COMM_TYPE_SHARED).Get_size() != size:
        pytest.skip("nodelocal staging is per node")
    staging.put_tensor(f"xrank.{rank}", np.full(16, rank, np.int32))
    mpi.barrier()
    source = (rank - 1) % size
    assert staging.poll(f"xrank.{source}", 10.0)
    np.testing.assert_array_equal(staging.get_tensor(f"xrank.{source}"), np.full(16, source, np.int32))
    mpi.barrier()  # nobody cleans before everyone has read
    staging.delete(f"xrank.{rank}")

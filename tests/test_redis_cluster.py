"""The redis backend on a Redis Cluster (``staging.shards: N``): real redis-servers in cluster mode.

A value's keys share one hash slot (``{key}`` hash tags), values spread over every shard, the
cluster is private (password, protected mode, config deleted once read), and everything it
started is gone after stop. The micro benchmarks run on 3 shards under ``mpiexec -n 4``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simai_core import mpi
from simai_core.profiles import load_profile
from simai_core.staging import redis as redis_backend
from simai_core.staging.registry import make_server, unavailable_reason
from simai_core.staging.resp import RedisPyRaw, RespConnection, RespError, RespRaw, key_slot, parse_address

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(unavailable_reason("redis") is not None, reason=str(unavailable_reason("redis")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with redis_backend.RedisClusterServer(tmp_path_factory.mktemp("cluster"), 3, maxmemory_bytes=192 * 2**20) as srv:
        yield srv


@pytest.fixture
def client(cluster):
    c = redis_backend.RedisClient(cluster.address)
    yield c
    c.clean("")
    c.close()


def test_slots_follow_redis_cluster_hash_tags():
    from redis.crc import key_slot as redispy_key_slot

    for key in ["a", "{a}x", "x{}y", "{}", "{a", "a}b{c}d", "foo{bar}{zap}", "{simai/r/data/3/5}\x1fmeta", "é"]:
        assert key_slot(key) == redispy_key_slot(key.encode()), key
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == 3443


def test_slot_ranges_cover_every_slot_once():
    for shards in (2, 3, 7):
        ranges = redis_backend.slot_ranges(shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == 16383
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))


def test_a_value_and_its_metadata_and_chunks_live_on_one_shard(client, monkeypatch):
    monkeypatch.setattr(redis_backend, "CHUNK_BYTES", 1000)
    array = np.arange(1001, dtype=np.float64)  # 9 chunks: one MSET and two MGETs, which must not cross slots
    client.put_tensor("big", array)
    np.testing.assert_array_equal(client.get_tensor("big", out=np.empty_like(array)), array)
    per_shard = [len(keys) for keys in client.command_all("KEYS", "*")]
    assert sorted(per_shard) == [0, 0, 10], per_shard
    client.delete("big")
    assert client.command_all("DBSIZE") == [0, 0, 0]


def test_values_spread_over_every_shard_and_clean_reaches_all(client):
    for i in range(60):
        client.put_tensor(f"simai/run/data/{i}/0", np.full(4, i))
        client.put_bytes(f"simai/run/blob/{i}", bytes([i]) * 3)
    assert all(n >= 20 for n in client.command_all("DBSIZE")), client.command_all("DBSIZE")
    assert client.get_bytes("simai/run/blob/7") == b"\x07" * 3 and client.get_tensor("simai/run/data/7/0")[0] == 7
    assert client.exists("simai/run/data/59/0") and not client.exists("simai/run/data/60/0")
    assert client.poll("simai/run/data/3/0", timeout_s=1)
    assert client.clean("simai/run/data/") == 60 and client.clean("simai/run/") == 60
    assert client.command_all("DBSIZE") == [0, 0, 0]


@pytest.mark.parametrize("reference", [RespRaw, RedisPyRaw])
def test_raw_paths_reach_the_keys_shard(cluster, reference):
    ref = reference(cluster.address)
    data = np.random.default_rng(1).integers(0, 256, 3 * 2**20 + 5, dtype=np.uint8)
    try:
        for key in ("a", "b", "c", "d"):
            out = np.zeros_like(data)
            ref.put(key, memoryview(data))
            ref.get(key, memoryview(out))
            assert np.array_equal(out, data)
    finally:
        ref.close()
    c = redis_backend.RedisClient(cluster.address)
    try:
        assert sum(c.command_all("DBSIZE")) == 4
        with pytest.raises(RespError, match="MOVED"):  # some shard does not own the key: routing is needed
            c.command_all("GET", "a")
    finally:
        c.command_all("FLUSHALL")
        c.close()


def test_every_shard_is_private_and_in_cluster_mode(cluster):
    for node in cluster.nodes:
        host, port, _ = parse_address(node.address)
        with pytest.raises(ConnectionError, match="refused the password"):
            RespConnection(f"redis://:wrong@{host}:{port}")
        anonymous = RespConnection(f"redis://{host}:{port}")
        with pytest.raises(RespError, match="NOAUTH"):
            anonymous.command("GET", "x")
        anonymous.close()
        conn = RespConnection(node.address)
        settings = dict(zip(*[iter(conn.command("CONFIG", "GET", "*"))] * 2, strict=True))
        conn.close()
        assert settings[b"protected-mode"] == b"yes" and settings[b"cluster-enabled"] == b"yes"
        assert settings[b"masterauth"] and settings[b"bind"] == host.encode()
        assert int(settings[b"maxmemory"]) == 64 * 2**20  # the profile's memory shared by the shards
    assert not list(cluster.nodes[0].workdir.glob("redis-*.conf")), "a config holding the password stayed on disk"
    assert cluster.detail()["shards"] == 3 and cluster.detail()["maxmemory_bytes"] == 192 * 2**20


def test_stop_leaves_nothing_behind(tmp_path):
    profile = load_profile("local")
    profile = profile.model_copy(update={"staging": profile.staging.model_copy(update={"shards": 2})})
    server = make_server("redis", profile, tmp_path)
    assert isinstance(server, redis_backend.RedisClusterServer)
    server.start()
    pids, ports = server.pids, [p for n in server.nodes for p in (n.port, n.bus_port)]
    assert len(list(tmp_path.glob("nodes-*.conf"))) == 2
    server.stop()
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec in the venv: make setup (installs the mpich wheel)")
@pytest.mark.skipif(mpi.size() > 1, reason="launches its own mpiexec job")
def test_micro_benchmarks_run_on_three_shards_under_mpi(tmp_path):
    out = tmp_path / "cluster.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    proc = subprocess.run([str(MPIEXEC), "-n", "4", sys.executable, "-m", "pytest", "benchmarks/micro",
                           "-m", "micro and redis", "--simai-redis-shards", "3", "--simai-sizes", "1KiB,1MiB",
                           "--simai-rounds", "3", "--simai-idle", "0.1",
                           "-q", "-p", "no:cacheprovider", "--benchmark-json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    benches = json.loads(out.read_text())["benchmarks"]
    assert benches and all(b["extra_info"]["simai"]["backend_detail"]["shards"] == 3 for b in benches)
    names = {b["name"].split("[")[0] for b in benches}
    assert {"test_tensor", "test_checkpoint", "test_metadata"} <= names


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec in the venv: make setup (installs the mpich wheel)")
@pytest.mark.skipif(mpi.size() > 1, reason="launches its own mpiexec job")
def test_mini_benchmark_runs_clustered_on_three_shards_under_mpi(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mpipartition")
    out = tmp_path / "mini.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    proc = subprocess.run([str(MPIEXEC), "-n", "4", sys.executable, "-m", "pytest", "benchmarks/mini",
                           "-m", "mini and redis", "-k", "clustered and mlp and not streamed",
                           "--simai-redis-shards", "3", "--simai-problem-size", "debug", "--simai-step-time", "0.05",
                           "--simai-max-steps", "30", "--simai-allow-unconverged", "-q", "-p", "no:cacheprovider",
                           "--benchmark-json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    [bench] = json.loads(out.read_text())["benchmarks"]
    simai, fom = bench["extra_info"]["simai"], bench["extra_info"]["fom"]
    assert simai["backend_detail"]["shards"] == 3 and simai["deployment"] == "clustered"
    # Snapshots went through the cluster for every step; whether the trainer finished an epoch in 30 short
    # steps depends on how busy the machine is, so it is not asserted.
    assert fom["sim_data_GBps_per_rank"]["value"] > 0 and fom["steps"]["value"] == 30

"""Run explicitly by tests/test_faults.py under mpiexec: the last rank never arrives in a collective.

The others wait in a blocking ``allgather`` that only the job's timeout (pytest-timeout) can end.
Rank 0 records the world's pids, the MPICH segments they map and the staging server's port.
"""

import json
import os
import time

import pytest

from simai_core import mpi


@pytest.mark.backends("redis")
def test_last_rank_never_arrives(staging, staging_pool, backend):
    pids, mapped = mpi.gather_to_all(os.getpid()), mpi.gather_to_all(mpi.mapped_shm_segments())
    shm = sorted({segment for segments in mapped for segment in segments})
    if mpi.rank() == 0:
        record = {"pids": pids, "shm": shm, "port": staging_pool._servers[backend].port}
        with open(os.environ["SIMAI_CASE_RECORD"], "a") as f:
            f.write(json.dumps(record) + "\n")
        print("READY", flush=True)
    if mpi.rank() == mpi.size() - 1:
        time.sleep(3600)  # hangs: never reaches the collective below
    mpi.world().allgather(mpi.rank())

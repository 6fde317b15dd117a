"""Run explicitly by tests/test_mpi_plumbing.py: rank 1 fails while rank 0 waits in a collective."""

from simai_core import mpi


def test_rank_one_fails_while_others_wait():
    if mpi.rank() == 1:
        raise AssertionError("rank 1 gives up")
    mpi.barrier()  # rank 0 would wait here forever without the abort

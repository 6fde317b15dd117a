"""Fixtures shared by the correctness tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simai_core.profiles import load_profile
from simai_core.staging import registry
from simai_core.staging.base import StagingClient


@pytest.fixture
def file_staging(tmp_path) -> Iterator[tuple[StagingClient, str]]:
    """A filesystem staging area under the test's temp dir: ``(client, address)``, stopped afterwards."""
    with registry.make_server("filesystem", load_profile("local"), tmp_path / "server") as server:
        client = registry.connect("filesystem", server.address)
        yield client, server.address
        client.close()

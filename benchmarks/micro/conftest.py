"""Micro-benchmark parametrisation: the put/get sweep sizes come from options and the profile."""

from __future__ import annotations

import pytest

from simai_core.bench.plugin import sweep_sizes
from simai_core.sizes import format_size


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "nbytes" in metafunc.fixturenames:
        sizes = sweep_sizes(metafunc.config)
        metafunc.parametrize("nbytes", sizes, ids=[format_size(s) for s in sizes])

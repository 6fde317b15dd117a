"""Root conftest: loads the SimAI-Bench pytest plugin for benchmarks/ and tests/."""

pytest_plugins = ["simai_core.bench.plugin"]

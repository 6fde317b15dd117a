"""Bad input gets one clear error: unknown backends, missing dependencies, broken profiles, bad sizes."""

from __future__ import annotations

import builtins
import sys

import pytest

from simai_core.errors import BackendUnavailableError, ProfileError, UnknownBackendError
from simai_core.fom import FomSpec, reduce_foms
from simai_core.profiles import PROFILE_DIR, load_profile
from simai_core.sizes import format_size, parse_size, size_sweep
from simai_core.staging import registry


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(UnknownBackendError) as err:
        registry.get_spec("redsi")
    assert "redsi" in str(err.value) and "redis" in str(err.value) and "nodelocal" in str(err.value)


def test_missing_dependency_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "simai_core.staging.smartsim", raising=False)
    real_import = builtins.__import__

    def no_smartredis(name, *args, **kwargs):
        if name.startswith(("smartredis", "smartsim")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_smartredis)
    with pytest.raises(BackendUnavailableError, match=r"\.\[smartsim\]"):
        registry.load("smartsim")
    monkeypatch.delitem(sys.modules, "simai_core.staging.smartsim", raising=False)


def test_missing_redis_server_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    reason = registry.unavailable_reason("redis")
    assert reason is not None and "make setup" in reason


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_profiles_validate(path):
    profile = load_profile(path.stem)
    assert profile.name == path.stem
    assert profile.resolved_cores() >= 1
    assert profile.micro.min_bytes <= profile.micro.max_bytes


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="polaris"):
        load_profile("frontierr")


def test_broken_profile_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncores_per_node: many\nstaging:\n  memory_bytes: lots\n  nic: hsn0\n")
    with pytest.raises(ProfileError) as err:
        load_profile(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "cores_per_node" in message and "staging.memory_bytes" in message and "staging.nic" in message


def test_profile_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(bad)


def test_sizes():
    assert parse_size("16KiB") == 16 * 1024
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size(4096) == 4096
    assert format_size(64 * 2**20) == "64MiB"
    assert size_sweep(1024, 64 * 2**20) == [1024 * 4**i for i in range(9)]
    with pytest.raises(ValueError, match="16KiB"):
        parse_size("sixteen")


def test_foms_reduce_over_ranks():
    specs = {"lat_s": FomSpec(unit="s", better="lower"), "bw_GBps": FomSpec(unit="GB/s", better="higher", combine="sum")}
    foms = reduce_foms([{"lat_s": 1.0, "bw_GBps": 2.0}, {"lat_s": 3.0, "bw_GBps": 4.0}], specs)
    assert foms["lat_s"].value == 2.0 and foms["lat_s"].ranks.max == 3.0 and foms["lat_s"].better == "lower"
    assert foms["bw_GBps"].value == 6.0 and foms["bw_GBps"].ranks.min == 2.0

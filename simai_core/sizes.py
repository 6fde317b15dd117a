"""Byte sizes as people write them ('64MiB', '1GiB', '4096') and back."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
          "kb": 1000, "mb": 10**6, "gb": 10**9}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Parse ``4096``, ``'16KiB'``, ``'1GiB'`` or ``'2GB'`` (GB = 1e9) into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 4096, 16KiB, 64MiB, 1GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(nbytes: int) -> str:
    """Render bytes in binary units: 1024 -> '1KiB', 67108864 -> '64MiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 1024)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


def size_sweep(min_bytes: int, max_bytes: int, factor: int = 4) -> list[int]:
    """Sizes from ``min_bytes`` to ``max_bytes`` growing by ``factor``."""
    if min_bytes <= 0 or max_bytes < min_bytes:
        raise ValueError(f"bad size range {min_bytes}..{max_bytes}")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes

"""Human-readable numbers: FOM values with their units, percentages, byte sizes."""

from __future__ import annotations

import math
from typing import Any

from simai_core.sizes import format_size

# Seconds scale down to the largest prefix that keeps the number >= 1 (1.2e-5 s -> "12.0 µs").
_TIME_PREFIXES = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


def sig(x: float) -> str:
    """Three significant digits without scientific notation for the usual range (1.23, 12.3, 123)."""
    if not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "n/a")
    ax = abs(x)
    if ax >= 1e9 or ax < 1:
        return f"{x:#.3g}".rstrip(".") if x else "0"
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def format_seconds(value: float) -> str:
    """A duration in the SI prefix that reads best: 0.0123 -> '12.3 ms'."""
    if not math.isfinite(value) or value == 0:
        return sig(value) if value else "0 s"
    previous = ""
    for scale, name in _TIME_PREFIXES:
        # Decide on the rounded text: 999.6 µs rounds to "1000", which reads better one prefix up.
        text = sig(value / scale)
        if abs(float(text)) >= 1000 and previous:
            return previous
        if abs(float(text)) >= 1 or name == "ns":
            return f"{text} {name}"
        previous = f"{text} {name}"
    raise AssertionError("unreachable: the ns branch always returns")


def format_value(value: float, unit: str) -> str:
    """A FOM value with its unit, scaled for reading (GB = 1e9 bytes, as in the JSON)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        return format_seconds(value)
    if unit == "GB/s":
        # Below 1 GB/s people think in MB/s; keep decimal prefixes as the JSON does.
        return f"{sig(value * 1e3)} MB/s" if 0 < abs(value) < 1 else f"{sig(value)} GB/s"
    if unit == "%":
        return f"{sig(value)} %"
    if unit == "ratio":
        return f"{sig(value)}×"  # noqa: RUF001 (the multiplication sign is meant)
    if unit == "count":
        return f"{value:,.0f}" if float(value).is_integer() else sig(value)
    return f"{sig(value)} {unit}".strip()


def format_range(lo: float, hi: float, unit: str) -> str:
    """A range in one unit where possible: ``62.5..66.3 µs`` rather than ``62.5 µs..66.3 µs``."""
    if unit == "ratio":
        return f"{sig(lo)}..{sig(hi)}×"  # noqa: RUF001 (the multiplication sign is meant)
    a, b = format_value(lo, unit), format_value(hi, unit)
    a_num, _, a_unit = a.partition(" ")
    b_num, _, b_unit = b.partition(" ")
    if a_unit and a_unit == b_unit:
        return f"{a_num}..{b_num} {a_unit}"
    return f"{a}..{b}"


def format_change(pct: float | None) -> str:
    """A signed relative change: +12.3 %, -50.0 %, or n/a."""
    if pct is None or math.isnan(pct):
        return "n/a"
    if math.isinf(pct):
        return "+inf" if pct > 0 else "-inf"
    return f"{pct:+.1f} %"


def human_size(nbytes: int) -> str:
    """Bytes in binary units: exact where possible (64MiB), else three digits (30.2KiB)."""
    exact = format_size(nbytes)
    if exact.endswith("iB") or nbytes < 1024:
        return exact
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{sig(nbytes / scale)}{unit}"
    return exact


def format_param(key: str, value: Any) -> str:
    """One parameter as ``key=value``, sizes (``nbytes``, ``*_bytes``) in binary units."""
    if (key == "nbytes" or key.endswith("_bytes")) and isinstance(value, int) and not isinstance(value, bool):
        return f"size={human_size(value)}" if key == "nbytes" else f"{key}={human_size(value)}"
    return f"{key}={value}"


def format_params(params: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """Parameters as ``op=put, size=64MiB`` (``op`` first, then in key order)."""
    keys = sorted(params, key=lambda k: (k != "op", k))
    return ", ".join(format_param(k, params[k]) for k in keys if k not in skip)

"""Loading pytest-benchmark JSON (files or ``.benchmarks/`` storage) and validating the simai blocks.

Every problem with the input raises :class:`ReportInputError` with a one-line message
that names the file, so the command line can print it without a traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simai_core.errors import SimaiError
from simai_core.fom import SCHEMA_VERSION, Fom, RunInfo

DEFAULT_STORAGE = Path(".benchmarks")
# Measurement settings and descriptions (of the reference paths) in simai.params: a run with more rounds still
# measures the same thing.
NON_IDENTITY_PARAMS = ("rounds", "raw", "references")  # how it was measured, not what
_RUN_FILE = re.compile(r"^(\d{4})_.*\.json$")


class ReportInputError(SimaiError):
    """Input that simai-bench cannot read: not JSON, not a benchmark run, unknown schema, no match."""


@dataclass
class Bench:
    """One benchmark of a run: pytest-benchmark's fields plus the parsed ``extra_info`` blocks."""

    name: str
    fullname: str
    stats: dict[str, float]
    simai: RunInfo | None
    foms: dict[str, Fom]
    raw: dict[str, Any] = field(repr=False)

    @property
    def backend(self) -> str | None:
        """The staging backend, when the benchmark has a simai block."""
        return self.simai.backend if self.simai else None

    @property
    def params(self) -> dict[str, Any]:
        """The simai parameters (``nbytes``, ``op``, ``model``...), or pytest's params without simai."""
        if self.simai:
            return dict(self.simai.params)
        return dict(self.raw.get("params") or {})

    @property
    def identity_params(self) -> dict[str, Any]:
        """The params that say what was measured (not how many rounds, nor what the raw reference was)."""
        return {k: v for k, v in self.params.items() if k not in NON_IDENTITY_PARAMS}

    @property
    def level(self) -> str | None:
        """``micro``, ``mini`` or ``full`` (None for a plain pytest-benchmark test)."""
        return self.simai.level if self.simai else None

    @property
    def base_name(self) -> str:
        """The test function's name without its parametrisation: ``test_put_get``."""
        return self.name.split("[", 1)[0]

    @property
    def world_size(self) -> int | None:
        """MPI ranks the benchmark ran on (None for a plain pytest-benchmark test)."""
        return self.simai.world_size if self.simai else None

    @property
    def machine(self) -> str | None:
        """The machine profile the benchmark ran with (None for a plain pytest-benchmark test)."""
        return self.simai.machine if self.simai else None

    @property
    def round_times(self) -> list[float] | None:
        """pytest-benchmark's per-round times (``stats.data``, rank 0), when the JSON holds them.

        ``--benchmark-json`` always writes them; ``--benchmark-save``/``--benchmark-autosave``
        only with ``--benchmark-save-data``.
        """
        data = self.raw["stats"].get("data")
        if not isinstance(data, list) or not all(isinstance(x, (int, float)) for x in data):
            return None
        return [float(x) for x in data]

    def key(self, ignore_backend: bool = False) -> tuple[str, ...]:
        """What pairs this benchmark with its counterpart in another run: fullname and backend.

        With ``ignore_backend`` the fullname loses its ``[...]`` id (which names the backend),
        and the params tell the benchmarks apart, so that runs of two backends can be set side by side.
        Whether a pair may be compared at all is :meth:`mismatch`'s question.
        """
        if ignore_backend and self.simai:
            return (self.fullname.split("[", 1)[0], json.dumps(self.identity_params, sort_keys=True, default=str))
        return (self.fullname, self.backend or "")

    def mismatch(self, other: Bench) -> str:
        """Why ``other`` did not measure the same thing ('' when it did): world size, machine or params."""
        diffs = [f"{name} {a!r} vs {b!r}" for name, a, b in (("world_size", self.world_size, other.world_size),
                                                             ("machine", self.machine, other.machine)) if a != b]
        mine, theirs = self.identity_params, other.identity_params
        for k in sorted(set(mine) | set(theirs), key=str):
            if mine.get(k) != theirs.get(k):
                diffs.append(f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}")
        return "; ".join(diffs)


@dataclass
class Run:
    """One benchmark run: the JSON document, its parsed benchmarks, and where it came from."""

    data: dict[str, Any] = field(repr=False)
    benches: list[Bench]
    label: str
    path: Path | None = None

    @property
    def machine_info(self) -> dict[str, Any]:
        """pytest-benchmark's ``machine_info`` (with ``simai`` inside when the suite wrote it)."""
        return self.data.get("machine_info") or {}

    def events_path(self, bench: Bench) -> Path | None:
        """The benchmark's events sidecar (relative to the JSON file), if it names one and we know the file."""
        rel = getattr(bench.simai, "events", None) if bench.simai else None
        if not rel or self.path is None:
            return None
        return self.path.parent / str(rel)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def _parse_simai(raw: Any, where: str) -> RunInfo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ReportInputError(f"{where}: extra_info.simai is not an object")
    schema = raw.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ReportInputError(
            f"{where}: extra_info.simai.schema is {schema!r}, this simai-bench reads schema {SCHEMA_VERSION} only"
            " (upgrade simai-bench)"
        )
    try:
        return RunInfo.model_validate(raw)
    except ValidationError as exc:
        raise ReportInputError(f"{where}: bad extra_info.simai ({_first_error(exc)})") from None


def _parse_foms(raw: Any, where: str) -> dict[str, Fom]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ReportInputError(f"{where}: extra_info.fom is not an object")
    foms = {}
    for name, value in raw.items():
        try:
            foms[name] = Fom.model_validate(value)
        except ValidationError as exc:
            raise ReportInputError(f"{where}: bad FOM {name!r} ({_first_error(exc)})") from None
    return foms


def _parse_bench(raw: Any, source: str, index: int) -> Bench:
    if not isinstance(raw, dict) or not isinstance(raw.get("stats"), dict):
        raise ReportInputError(f"{source}: benchmarks[{index}] is not a pytest-benchmark result (no stats)")
    name = raw.get("name") or raw.get("fullname")
    if not isinstance(name, str):
        raise ReportInputError(f"{source}: benchmarks[{index}] has no name")
    where = f"{source}: benchmark {name!r}"
    extra = raw.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise ReportInputError(f"{where}: extra_info is not an object")
    stats = {k: float(v) for k, v in raw["stats"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Bench(
        name=name,
        fullname=str(raw.get("fullname") or name),
        stats=stats,
        simai=_parse_simai(extra.get("simai"), where),
        foms=_parse_foms(extra.get("fom"), where),
        raw=raw,
    )


def parse_run(data: Any, label: str = "run", path: Path | None = None) -> Run:
    """Validate an already-loaded pytest-benchmark JSON document and parse its benchmarks."""
    source = str(path) if path else label
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportInputError(f"{source}: not a pytest-benchmark JSON (no 'benchmarks' list)")
    benches = [_parse_bench(b, source, i) for i, b in enumerate(data["benchmarks"])]
    return Run(data=data, benches=benches, label=label, path=path)


def as_run(run: Run | dict[str, Any], label: str = "run") -> Run:
    """Accept either a parsed :class:`Run` or a raw JSON dict (as the pytest plugin holds it)."""
    return run if isinstance(run, Run) else parse_run(run, label=label)


def read_json(path: Path) -> Any:
    """Read a JSON file; unreadable or malformed files raise a one-line :class:`ReportInputError`."""
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise ReportInputError(f"{path}: not JSON (binary file)") from None
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def storage_runs(storage: Path) -> list[Path]:
    """Every autosaved run (``NNNN_*.json``) in a pytest-benchmark storage dir, any machine subdir."""
    files = [p for p in storage.glob("*.json") if _RUN_FILE.match(p.name)]
    files += [p for p in storage.glob("*/*.json") if _RUN_FILE.match(p.name)]
    return sorted(files, key=lambda p: (p.name, str(p)))


def _storage_candidates(spec: str, storage: Path) -> list[Path]:
    runs = storage_runs(storage)
    if spec == "latest":
        return runs[-1:]
    if spec.isdigit():
        spec = f"{int(spec):04d}"
    if "/" in spec:
        # 'Linux-CPython-3.11-64bit/0002' as pytest-benchmark's --benchmark-compare takes it.
        return [p for p in runs if str(p.relative_to(storage)).startswith(spec)]
    return [p for p in runs if p.name.startswith(spec)]


def resolve(spec: str, storage: Path | None = None) -> Path:
    """Find the JSON file a command-line argument means: a path, or a run id in the storage dir."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise ReportInputError(f"{spec}: is a directory; give a JSON file, or a run id with --storage {spec}")
    storage = storage or DEFAULT_STORAGE
    if not storage.is_dir():
        raise ReportInputError(f"{spec}: no such file, and no benchmark storage at {storage} to look up a run id")
    found = _storage_candidates(spec, storage)
    if not found:
        ids = sorted({p.name[:4] for p in storage_runs(storage)})
        known = ", ".join(ids) if ids else "none"
        raise ReportInputError(f"{spec}: no such file or run in {storage} (runs there: {known})")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(storage)) for p in found[:4])
        raise ReportInputError(f"{spec}: several runs in {storage} match ({names}); give MACHINE_DIR/{spec} or a path")
    return found[0]


def load_run(spec: str, storage: Path | None = None, label: str | None = None) -> Run:
    """Load and validate one run named on the command line (file path or storage run id)."""
    path = resolve(spec, storage)
    return parse_run(read_json(path), label=label or spec, path=path)

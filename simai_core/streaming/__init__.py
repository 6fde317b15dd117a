"""Streams: producer-to-consumer steps of arrays (:mod:`.base`), with ADIOS2 SST and BP5 behind them (:mod:`.adios2_sst`).

Importing this package loads no optional dependency; ``adios2`` is imported when a stream opens.
"""

from simai_core.streaming.base import (
    STREAM_MODES,
    StepInfo,
    StreamConfig,
    StreamError,
    StreamMode,
    StreamReader,
    StreamTimeoutError,
    StreamWriter,
)

__all__ = ["STREAM_MODES", "StepInfo", "StreamConfig", "StreamError", "StreamMode", "StreamReader", "StreamTimeoutError",
           "StreamWriter", "make_reader", "make_writer"]


def make_writer(path: str, config: StreamConfig | None = None, engine: str = "SST", **kwargs: object) -> StreamWriter:
    """An ADIOS2 stream writer (not yet open: use it as a context manager)."""
    from simai_core.streaming.adios2_sst import Adios2StreamWriter

    return Adios2StreamWriter(path, config, engine, **kwargs)  # type: ignore[arg-type]


def make_reader(path: str, config: StreamConfig | None = None, engine: str = "SST", **kwargs: object) -> StreamReader:
    """An ADIOS2 stream reader (not yet open: use it as a context manager)."""
    from simai_core.streaming.adios2_sst import Adios2StreamReader

    return Adios2StreamReader(path, config, engine, **kwargs)  # type: ignore[arg-type]

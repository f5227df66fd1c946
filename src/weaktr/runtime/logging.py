"""Progress bars, a human log (``log.txt``) and machine-readable JSON-lines logs.

Only the main rank draws bars and writes files, so N torchrun processes print one bar, not N.
Console log records go through ``tqdm.write`` so they never tear an active progress bar.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

from tqdm import tqdm

from weaktr.runtime.distributed import is_main_process
from weaktr.runtime.layout import RunLayout

T = TypeVar("T")
LOGGER_NAME = "weaktr"


def progress(
    iterable: Iterable[T], desc: str = "", total: int | None = None, enabled: bool | None = None
) -> tqdm[T]:
    """A tqdm bar with rate and ETA (``set_postfix`` for live losses); ``enabled=None`` = main rank only."""
    show = is_main_process() if enabled is None else enabled
    return tqdm(iterable, desc=desc, total=total, disable=not show, dynamic_ncols=True, leave=False)


def format_seconds(seconds: float) -> str:
    """Durations for humans: '12.3s', '4m05s', '1h02m03s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _plain(value: Any) -> Any:
    """JSON-ready values: tensors / numpy scalars to Python numbers, NaN and inf to null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # torch.Tensor, numpy array or scalar
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


class JsonlLogger:
    """Append one JSON object per line to ``path``, flushed at once so a killed run keeps its log."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any] | None = None, **fields: Any) -> None:
        """Write ``record`` merged with keyword ``fields`` as one line (no-op when disabled)."""
        if self._file is None:
            return
        self._file.write(json.dumps(_plain({**(record or {}), **fields}), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TqdmHandler(logging.StreamHandler):
    """Console handler that writes around active tqdm bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise into training code
            self.handleError(record)


def log_file_only(text: str, level: int = logging.ERROR) -> Path | None:
    """Write ``text`` to this process's ``log.txt`` alone, not the console (a traceback the console
    shows as one line); returns the file, or None before a run opened one (or off the main rank)."""
    logger = logging.getLogger(LOGGER_NAME)
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    record = logger.makeRecord(LOGGER_NAME, level, __file__, 0, text, None, None)
    for handler in files:
        handler.handle(record)
    return Path(files[0].baseFilename) if files else None


def close_log_file() -> None:
    """Stop writing ``log.txt`` at the end of a command, so that a later command of the same process
    (tests, ``benchmarks/gpu_check.py``) that opens no run neither appends to nor names this one."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def setup_logging(
    run_dir: str | Path | None, is_main: bool = True, level: int = logging.INFO
) -> logging.Logger:
    """The ``weaktr`` logger: console, plus ``run_dir/log.txt`` on the main rank; others log warnings only.

    Calling it again (a second stage in the same process) replaces the handlers instead of doubling them.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level if is_main else logging.WARNING)
    logger.propagate = False
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(console)
    if is_main and run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(RunLayout.of(run_dir).log_txt, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(file_handler)
    return logger

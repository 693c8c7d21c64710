"""Logging and progress for ptqflow.

``setup_logging`` configures the "ptqflow" logger once (text or one JSON object per line on stderr);
``progress`` wraps a long loop: a progress bar when stderr is a terminal, a plain log line every few
seconds otherwise (pods and CI collect those without control characters).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
LOGGER_NAME = "ptqflow"
_state = {"format": "text"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the ``extra`` fields given."""

    _std = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        d = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._std and not key.startswith("_"):
                d[key] = value
        if record.exc_info:
            d["traceback"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


def setup_logging(fmt: str = "text", verbosity: int = 0) -> logging.Logger:
    """Configure the "ptqflow" logger on stderr: ``fmt`` "text" or "json"; verbosity 0 INFO, 1+ DEBUG.
    Returns the logger."""
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False
    _state["format"] = fmt
    return logger


def get_logger(name: str = "") -> logging.Logger:
    """The ptqflow logger or a child of it (``get_logger("pipeline")`` -> "ptqflow.pipeline")."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", every_s: float = 5.0) -> Iterator[T]:
    """Yield from ``iterable`` while showing progress on stderr.

    In a terminal (and with text logs) a one-line bar is redrawn in place; otherwise a log line
    ``desc: i/total`` is emitted at most every ``every_s`` seconds and once at the end.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar = _state["format"] == "text" and sys.stderr.isatty()
    log = get_logger("progress")
    start = last = time.monotonic()
    finished = False
    i = 0

    def finish() -> None:
        # Called on reaching ``total`` too: consumers such as islice stop pulling before exhaustion.
        if bar:
            sys.stderr.write("\n")
            sys.stderr.flush()
        elif i:
            log.info("%s: %s done in %.1f s", desc, _count(i, total), time.monotonic() - start,
                     extra={"step_progress": i, "total": total})

    for i, item in enumerate(iterable, 1):
        now = time.monotonic()
        if bar:
            _draw(desc, i, total, now - start)
        elif now - last >= every_s and i != total:
            last = now
            log.info("%s: %s", desc, _count(i, total), extra={"step_progress": i, "total": total})
        if i == total and not finished:
            finished = True
            finish()
        yield item
    if not finished:
        finish()


def _count(i: int, total: int | None) -> str:
    return f"{i}/{total}" if total else str(i)


def _draw(desc: str, i: int, total: int | None, elapsed: float) -> None:
    if total:
        width = 30
        filled = int(width * min(i, total) / total)
        text = f"\r{desc} [{'#' * filled}{'.' * (width - filled)}] {i}/{total} {elapsed:.0f}s"
    else:
        text = f"\r{desc} {i} {elapsed:.0f}s"
    sys.stderr.write(text)
    sys.stderr.flush()

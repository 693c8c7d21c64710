"""Where intermediate files go: a running pipeline step's scratch directory, else the system temp dir.

A leaf module (standard library only), so the engine (graph preparation) and the pipeline's steps share it
without the engine importing the artifact layer.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

# A running step's scratch directory (see ``scratch_dir``); set by the pipeline around each step.
_SCRATCH: ContextVar[Path | None] = ContextVar("ptqflow_scratch", default=None)


@contextmanager
def scratch_root(path: Path | None):
    """Within the block, ``scratch_dir`` makes its directories under ``path`` (None: the system temp dir)."""
    token = _SCRATCH.set(Path(path) if path is not None else None)
    try:
        yield
    finally:
        _SCRATCH.reset(token)


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary directory for intermediate files. Inside a pipeline step with a local output it lies in
    the step's partial directory beside the output, which the next run removes even when this one was
    killed (a kill skips the cleanup of a directory in the system temp dir); elsewhere in the system temp
    dir."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=_SCRATCH.get())

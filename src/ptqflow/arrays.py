"""Reading .npz archives without ever loading a pickle: the one reader behind calibration data sources,
calibration shards and saved statistics.

A leaf module (numpy and the standard library only), so the engine (statistics) and the data layer share it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

ZIP_MAGIC = b"PK\x03\x04"


class NpzError(ValueError):
    """An .npz that cannot be read safely: ``reason`` says why, ``key`` names the array where one failed,
    ``pickled`` is set when the archive holds an object (pickled) array."""

    def __init__(self, reason: str, key: str | None = None, pickled: bool = False):
        super().__init__(reason)
        self.reason, self.key, self.pickled = reason, key, pickled


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the archive at ``path``, read with ``allow_pickle=False``; NpzError otherwise (not a zip
    archive, which np.load would take for a pickle; an object array; a truncated or damaged file)."""
    key = None
    try:
        with open(path, "rb") as fh:
            if fh.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                raise NpzError("not an .npz file (not a zip archive); pickles and other formats are refused")
        with np.load(path, allow_pickle=False) as z:
            data = {}
            for key in z.files:
                data[key] = z[key]
            return data
    except NpzError:
        raise
    except ValueError as err:
        if "Object arrays" in str(err):
            raise NpzError("holds a pickled (object dtype) array", key, pickled=True) from None
        raise NpzError(f"not readable ({err})", key) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise NpzError(f"not a readable .npz file ({type(err).__name__}: {err})", key) from None

"""ptqflow's exceptions, each carrying the process exit code the CLI uses.

Orchestrators read the exit code to decide whether a retry can help:
codes 2, 3, 4 and 6 are final (retrying cannot succeed); code 5 is safe to retry.
"""

from __future__ import annotations


class PtqflowError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with; ``retryable`` says whether a retry can help."""

    exit_code = 1
    retryable = False


class ConfigError(PtqflowError):
    """A configuration value is unknown, of the wrong type or out of range. The message names the field."""

    exit_code = 2


class OutputError(ConfigError):
    """The output location cannot be written: a file stands where a directory must go, or the place is
    read-only or not permitted. Exit code 2 (like any bad setting: retrying cannot help); names the path."""


class InputError(PtqflowError):
    """A model, data set or artifact given as input is unusable (corrupt, wrong shape, empty...)."""

    exit_code = 3


class GateFailedError(PtqflowError):
    """The quantized model failed the validation gate; the report says which threshold and by how much."""

    exit_code = 4


class StorageError(PtqflowError):
    """Reading or writing an artifact failed for a reason that may pass (network, S3, disk). Safe to retry."""

    exit_code = 5
    retryable = True


class DeviceUnavailableError(PtqflowError):
    """A step was asked to run on a device (CUDA, NPU, an OpenVINO device) that this environment lacks."""

    exit_code = 6


EXIT_CODES = {
    0: "success",
    1: "internal error (a bug in ptqflow: please report it)",
    ConfigError.exit_code: "bad configuration (do not retry)",
    InputError.exit_code: "bad input model or data (do not retry)",
    GateFailedError.exit_code: "validation gate failed (do not retry)",
    StorageError.exit_code: "storage or I/O failure (safe to retry)",
    DeviceUnavailableError.exit_code: "requested device unavailable in this environment (do not retry here)",
}

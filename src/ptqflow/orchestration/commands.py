"""The step command line both faces run in containers, and what its exit codes mean for retries."""

from __future__ import annotations

from ptqflow.errors import ConfigError, DeviceUnavailableError, GateFailedError, InputError, StorageError

# Exit codes of `ptqflow <step>` that no retry can fix: bad config, bad input, gate failed, device missing.
NO_RETRY_EXIT_CODES = {
    ConfigError.exit_code: "bad configuration",
    InputError.exit_code: "bad input model or data",
    GateFailedError.exit_code: "validation gate failed",
    DeviceUnavailableError.exit_code: "requested device unavailable",
}
RETRY_EXIT_CODES = {StorageError.exit_code: "storage or I/O failure"}


def step_arguments(step: str, inputs: dict[str, str], out: str, sets: dict[str, str],
                   config_file: str | None = None) -> list[str]:
    """``[step, --in-<name> URI ..., --out URI, [--config FILE], --set key=value ...]`` (argv after ``ptqflow``).

    ``sets`` values are YAML text (the CLI parses them with yaml.safe_load), so orchestrators can pass
    rendered JSON such as ``null`` or ``"mixed"``.
    """
    args = [step]
    for name, uri in inputs.items():
        args += [f"--in-{name}", uri]
    args += ["--out", out]
    if config_file:
        args += ["--config", config_file]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def should_retry(exit_code: int | None) -> bool:
    """False for exit codes that mean the same run would fail again; True otherwise (storage, crashes)."""
    return exit_code not in NO_RETRY_EXIT_CODES

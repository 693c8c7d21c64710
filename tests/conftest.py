import sys
import pytest
from pathlib import Path

# Make tests/builders.py importable as `builders` from every test module.
sys.path.insert(0, str(Path(__file__).parent))


# One test process here loads onnxruntime, OpenVINO, TensorFlow and PyTorch, each with its own native thread
# pools. One full CI run of 2026-12-06 (735 tests, all passed) ended in a segmentation fault after the last test,
# with no Python stack from pytest's faulthandler: the native libraries' destructors at interpreter shutdown,
# not a test. Once pytest has reported, the process exits with pytest's status without that teardown.
def pytest_sessionfinish(session, exitstatus):
    session.config._ptqflow_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    status = getattr(config, "_ptqflow_exitstatus", None)
    if status is not None:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

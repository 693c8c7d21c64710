import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "tests", ROOT / "components"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

# KFP's local runner writes each lightweight component's source into a temporary directory of its own
# (ephemeral_component.py) and leaves it: every run of these tests left two dozen in /tmp. Its subprocesses
# inherit TMPDIR, so they land in one directory removed when the session ends.
_TMP = tempfile.mkdtemp(prefix="ptqflow-kfp-tmp-")
os.environ["TMPDIR"] = _TMP
tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_unconfigure(config):
    """Remove the session's TMPDIR; an atexit handler would not run, tests/conftest.py ends the process with
    os._exit after the last unconfigure hook."""
    shutil.rmtree(_TMP, ignore_errors=True)

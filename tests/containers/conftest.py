import pytest

from container_support import load_locks


@pytest.fixture(scope="session")
def locks():
    """containers/locks.py as a module."""
    return load_locks()

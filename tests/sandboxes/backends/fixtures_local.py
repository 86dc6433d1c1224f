"""The ``local_backend`` fixture (star-imported by tests/conftest.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxes.backends.local import LocalBackend

__all__ = ["local_backend", "local_backend_root", "make_local_backend"]

# Small enough that the isolation tests hit them quickly, large enough for bash and python3.
TEST_LIMITS: dict[str, Any] = {
    "cpu_seconds": 30,
    "memory_mb": 512,
    "max_processes": 64,
    "max_file_mb": 64,
    "tmp_mb": 16,
}


def make_local_backend(root: Path, **overrides: Any) -> LocalBackend:
    return LocalBackend(root=root, **{**TEST_LIMITS, **overrides})


@pytest.fixture
def local_backend_root() -> Iterator[Path]:
    """A fresh backend root in the system temp directory, not under ``tmp_path``.

    When the tests run as root, bwrap runs as ``nobody`` and must be able to pass through
    every directory above the root; pytest's ``/tmp/pytest-of-root`` is 0700.
    """
    root = Path(tempfile.mkdtemp(prefix="airlock-sandboxes-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def local_backend(local_backend_root: Path) -> Iterator[LocalBackend]:
    # Imported here: tests/conftest.py star-imports this module while it is still loading.
    from tests.conftest import require_service

    require_service(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    backend = make_local_backend(local_backend_root)
    yield backend
    for info in backend.list_sandboxes({}):
        backend.kill(info.sandbox_id)

"""The ``local_backend`` fixture (star-imported by tests/conftest.py), and what a sandbox can
leave on the host: every test that uses the fixture checks that nothing is left after it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxes.backends.local import LocalBackend
from sandboxes.backends.local.limits import loop_devices_under, mounted_hierarchies, mounts_under

__all__ = [
    "TEST_CGROUP",
    "HostTables",
    "_remove_the_sessions_cgroups",
    "host_tables",
    "local_backend",
    "local_backend_root",
    "make_local_backend",
]

# The tests' own cgroup parent, apart from a development worker's, and one per test session:
# sessions running side by side on one host (CI shards, engineers sharing a machine) would
# otherwise see each other's sandboxes in the leftover check below.
TEST_CGROUP = f"airlock-test-{os.getpid()}"
# Small enough that the isolation tests hit them quickly, large enough for bash, python3, gcc.
TEST_LIMITS: dict[str, Any] = {
    "cpu_seconds": 30,
    "memory_mb": 256,
    "max_processes": 64,
    "max_file_mb": 64,
    "tmp_mb": 16,
    "disk_mb": 128,
    "cpus": 1.0,
    "cgroup_parent": TEST_CGROUP,
}


def make_local_backend(root: Path, **overrides: Any) -> LocalBackend:
    return LocalBackend(root=root, **{**TEST_LIMITS, **overrides})


@pytest.fixture(scope="session", autouse=True)
def _remove_the_sessions_cgroups() -> Iterator[None]:
    """The session's cgroup parent goes with the session (empty by then: every test checked
    that its sandboxes left nothing), so sessions do not pile up directories on the host."""
    yield
    for hierarchy in mounted_hierarchies():
        walk = list(os.walk(hierarchy.mount / TEST_CGROUP))
        for directory, _, _ in reversed(walk):  # children before their parent
            with contextlib.suppress(OSError):  # not empty: the leftover check says why
                os.rmdir(directory)


@dataclass(frozen=True)
class HostTables:
    """What sandboxes under one root hold on the host."""

    cgroups: frozenset[str]  # every cgroup below the tests' parent, in every hierarchy
    mounts: frozenset[str]  # mount points under the root
    loops: frozenset[str]  # loop devices backed by a file under the root
    processes: frozenset[int]  # processes in a cgroup below the tests' parent


def host_tables(root: Path) -> HostTables:
    cgroups = set()
    for hierarchy in mounted_hierarchies():
        parent = hierarchy.mount / TEST_CGROUP
        for directory, _, _ in os.walk(parent):
            if Path(directory) != parent:
                cgroups.add(directory)
    processes = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_bytes()
                if stat.rpartition(b")")[2].split()[0] == b"Z":
                    continue  # exited, waiting to be reaped: it holds nothing any more
                if f"/{TEST_CGROUP}/" in Path(entry.path, "cgroup").read_text():
                    processes.add(int(entry.name))
            except (OSError, IndexError):
                continue
    return HostTables(
        cgroups=frozenset(cgroups),
        mounts=frozenset(str(path) for path in mounts_under(root)),
        loops=frozenset(loop_devices_under(root)),
        processes=frozenset(processes),
    )


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
    before = host_tables(local_backend_root)
    backend = make_local_backend(local_backend_root)
    yield backend
    for info in backend.list_sandboxes({}):
        backend.kill(info.sandbox_id)
    backend.reap_expired()
    after = host_tables(local_backend_root)
    assert after == before, f"sandboxes left {after} on the host (before: {before})"

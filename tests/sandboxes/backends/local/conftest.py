"""The sandbox every test of the local backend starts from."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sandboxes.backends.local import LocalBackend


@pytest.fixture
def sandbox(local_backend: LocalBackend) -> Iterator[str]:
    info = local_backend.create(
        template="base", metadata={"suite": "local"}, envs={}, timeout_s=300
    )
    yield info.sandbox_id
    local_backend.kill(info.sandbox_id)


@pytest.fixture
def as_root() -> None:
    """The host limits (cgroups, loop devices) need a root worker, as CI has: elsewhere these
    tests skip, and under CI=true they fail."""
    from tests.conftest import require_service

    require_service(os.geteuid() == 0, "cgroups and loop devices need a root worker")

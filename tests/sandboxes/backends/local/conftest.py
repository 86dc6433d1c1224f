"""The sandbox every test of the local backend starts from."""

from __future__ import annotations

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

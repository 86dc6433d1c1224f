"""An in-memory SandboxBackend for the sweep, reconcile and cost tests, and `start_run`, which
boots a run on it through the real services.

The fake records every kill (successful or not), can make kills slow (`kill_latency_s`) or
fail (`fail_kills`), and keeps each sandbox's provider timeout, so tests can assert what the
services asked of the backend without a network."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import pytest

from sandboxes import services
from sandboxes.backends import (
    BackendError,
    CommandResult,
    FileEntry,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
)
from sandboxes.backends.base import iter_chunks
from sandboxes.models import SandboxRun
from workspaces.models import Workspace

__all__ = ["FakeBackend", "fake_backend_fixture", "start_run"]

CPU_COUNT = 2
MEMORY_MB = 512


class FakeBackend(SandboxBackend):
    name = "fake"

    def __init__(self, *, kill_latency_s: float = 0.0) -> None:
        self.kill_latency_s = kill_latency_s
        self.sandboxes: dict[str, SandboxInfo] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self.timeouts: dict[str, int] = {}  # the last timeout each sandbox was given
        self.kills: list[str] = []  # every kill call, in order, whatever its outcome
        self.fail_kills: dict[str, list[Exception]] = {}  # sandbox id → errors to raise next
        self.commands: list[tuple[str, str]] = []
        self.kills_in_flight = 0
        self.max_kills_in_flight = 0  # the most kills that ever ran at once
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- for tests -------------------------------------------------------------------------

    def fail_next_kill(self, sandbox_id: str, error: Exception, times: int = 1) -> None:
        with self._lock:
            self.fail_kills.setdefault(sandbox_id, []).extend([error] * times)

    def add(
        self, metadata: dict[str, str], *, timeout_s: int = 300, sandbox_id: str | None = None
    ) -> SandboxInfo:
        """A sandbox as if something (a crashed worker, a benchmark's stored run) made it."""
        return self._store(sandbox_id, metadata, timeout_s)

    def live_ids(self) -> set[str]:
        with self._lock:
            return set(self.sandboxes)

    # -- the interface ---------------------------------------------------------------------

    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: Any = None,
    ) -> SandboxInfo:
        return self._store(None, metadata, timeout_s)

    def _store(
        self, sandbox_id: str | None, metadata: dict[str, str], timeout_s: int
    ) -> SandboxInfo:
        now = datetime.now(UTC)
        with self._lock:
            sandbox_id = sandbox_id or f"fake-{next(self._ids)}"
            info = SandboxInfo(
                sandbox_id=sandbox_id,
                metadata=dict(metadata),
                cpu_count=CPU_COUNT,
                memory_mb=MEMORY_MB,
                started_at=now,
                end_at=now + timedelta(seconds=timeout_s),
            )
            self.sandboxes[sandbox_id] = info
            self.timeouts[sandbox_id] = timeout_s
        return info

    def kill(self, sandbox_id: str) -> bool:
        with self._lock:
            self.kills_in_flight += 1
            self.max_kills_in_flight = max(self.max_kills_in_flight, self.kills_in_flight)
        try:
            if self.kill_latency_s:
                time.sleep(self.kill_latency_s)  # outside the lock: kills overlap, as on a network
            with self._lock:
                self.kills.append(sandbox_id)
                pending = self.fail_kills.get(sandbox_id)
                if pending:
                    raise pending.pop(0)
                return self.sandboxes.pop(sandbox_id, None) is not None
        finally:
            with self._lock:
                self.kills_in_flight -= 1

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        with self._lock:
            info = self._live(sandbox_id)
            end_at = datetime.now(UTC) + timedelta(seconds=timeout_s)
            self.sandboxes[sandbox_id] = replace(info, end_at=end_at)
            self.timeouts[sandbox_id] = timeout_s

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        with self._lock:
            return self._live(sandbox_id)

    def run(
        self,
        sandbox_id: str,
        command: str,
        *,
        timeout_s: float,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        on_output: Any = None,
        max_output_bytes: int = 1024 * 1024,
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        """Commands are recorded, not run: every command succeeds and prints nothing."""
        with self._lock:
            self._live(sandbox_id)
            self.commands.append((sandbox_id, command))
        return CommandResult(0, "", "", False, 0)

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        content = b"".join(iter_chunks(data))
        with self._lock:
            self._live(sandbox_id)
            self.files[(sandbox_id, path)] = content

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        with self._lock:
            self._live(sandbox_id)
            if (sandbox_id, path) not in self.files:
                raise SandboxFileNotFound(f"{path}: no such file")
            content = self.files[(sandbox_id, path)]
        return iter([content[i : i + chunk_size] for i in range(0, len(content), chunk_size)])

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._live(sandbox_id)
            names = [p for (s, p) in self.files if s == sandbox_id and p.startswith(prefix)]
        return [
            FileEntry(
                name=p[len(prefix) :], path=p, type="file", size=len(self.files[(sandbox_id, p)])
            )
            for p in sorted(names)
            if "/" not in p[len(prefix) :]
        ]

    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        with self._lock:
            return [
                info
                for info in self.sandboxes.values()
                if all(info.metadata.get(k) == v for k, v in metadata.items())
            ]

    def check(self) -> str:
        return "fake: in memory"

    def _live(self, sandbox_id: str) -> SandboxInfo:
        info = self.sandboxes.get(sandbox_id)
        if info is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        return info


@pytest.fixture(name="fake_backend")
def fake_backend_fixture(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """Every service that asks for the backend gets this one. Test modules import this
    function to make the `fake_backend` fixture available."""
    backend = FakeBackend()
    monkeypatch.setattr("sandboxes.services.get_backend", lambda: backend)
    monkeypatch.setattr("sandboxes.sweep.get_backend", lambda: backend)
    return backend


def start_run(*, workspace: Workspace, **fields: Any) -> SandboxRun:
    """A run booted the way the start task boots it, on whatever backend the services use.

    Stored directly rather than through run_create, so no start message is enqueued (the
    boot happens here) and the active-run limit does not get in the way of tests that need
    many runs."""
    run = SandboxRun.objects.create(
        workspace=workspace,
        created_by=workspace.owner,
        thread_id=fields.pop("thread_id", "thread"),
        prompt=fields.pop("prompt", "test"),
        max_duration_ms=fields.pop("max_duration_ms", 3_600_000),
        idle_timeout_ms=fields.pop("idle_timeout_ms", 900_000),
        **fields,
    )
    services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    if run.status != "running":
        raise BackendError(f"the run did not boot: {run.status} {run.error}")
    return run

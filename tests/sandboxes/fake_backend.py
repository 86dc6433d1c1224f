"""An in-memory SandboxBackend for the sweep, reconcile and cost tests, and `start_run`, which
boots a run on it through the real services.

The fake records every kill (successful or not), can make kills slow (`kill_latency_s`) or
fail (`fail_next_kill`), can make any other call fail (`fail_next`), and keeps each sandbox's
provider timeout, so tests can assert what the services asked of the backend, and inject
faults through the backend interface, without a network. Commands are recorded, not run
(every command succeeds and prints nothing unless `command_results` says otherwise)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Literal

import pytest

from sandboxes import services
from sandboxes.backends import (
    BackendError,
    CommandNotFound,
    CommandOutput,
    CommandResult,
    FileEntry,
    NetworkPolicy,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    SandboxPaused,
    override_backend,
)
from sandboxes.backends.base import SANDBOX_HOME, iter_chunks
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
        # What run() answers for a command (by its text); otherwise exit 0 and no output.
        self.command_results: dict[str, CommandResult | Exception] = {}
        self.failures: dict[str, list[Exception]] = {}  # operation → errors to raise next
        self.paused: set[str] = set()
        self.background: dict[tuple[str, str], bool] = {}  # (sandbox, handle) → running
        self.networks: dict[str, NetworkPolicy | None] = {}
        self.kills_in_flight = 0
        self.max_kills_in_flight = 0  # the most kills that ever ran at once
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- for tests -------------------------------------------------------------------------

    def fail_next_kill(self, sandbox_id: str, error: Exception, times: int = 1) -> None:
        with self._lock:
            self.fail_kills.setdefault(sandbox_id, []).extend([error] * times)

    def fail_next(self, operation: str, error: Exception, times: int = 1) -> None:
        """The next `times` calls of `operation` (create, run, write_file, read_file,
        list_files, set_timeout, pause, resume, start_command, …) raise `error`."""
        with self._lock:
            self.failures.setdefault(operation, []).extend([error] * times)

    def _maybe_fail(self, operation: str) -> None:
        with self._lock:
            pending = self.failures.get(operation)
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error

    def add(
        self, metadata: dict[str, str], *, timeout_s: int = 300, sandbox_id: str | None = None
    ) -> SandboxInfo:
        """A sandbox as if something (a crashed worker, a benchmark's stored run) made it."""
        return self._store(sandbox_id, metadata, timeout_s)

    def live_ids(self) -> set[str]:
        with self._lock:
            return set(self.sandboxes)

    # -- the interface ---------------------------------------------------------------------

    supports_pause = True

    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: NetworkPolicy | None = None,
    ) -> SandboxInfo:
        self._maybe_fail("create")
        info = self._store(None, metadata, timeout_s)
        self.networks[info.sandbox_id] = network
        return info

    def check_network(self, network: NetworkPolicy) -> None:
        """The fake enforces whatever it is asked (it has no network to give)."""

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
        self._maybe_fail("set_timeout")
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
        """Commands are recorded, not run (see `command_results`)."""
        self._maybe_fail("run")
        with self._lock:
            self._running(sandbox_id)
            self.commands.append((sandbox_id, command))
            answer = self.command_results.get(command, CommandResult(0, "", "", False, 0))
        if isinstance(answer, Exception):
            raise answer
        if on_output is not None:
            for stream, text in (("stdout", answer.stdout), ("stderr", answer.stderr)):
                if text:
                    on_output(stream, text)
        return answer

    def start_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        max_output_bytes: int = 1024 * 1024,
    ) -> str:
        self._maybe_fail("start_command")
        with self._lock:
            self._running(sandbox_id)
            self.commands.append((sandbox_id, command))
            handle = f"bg-{next(self._ids)}"
            self.background[(sandbox_id, handle)] = True
        return handle

    def command_output(
        self,
        sandbox_id: str,
        handle: str,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        max_bytes: int = 1024 * 1024,
    ) -> CommandOutput:
        with self._lock:
            self._live(sandbox_id)
            if (sandbox_id, handle) not in self.background:
                raise CommandNotFound(handle)
            running = self.background[(sandbox_id, handle)]
        return CommandOutput(b"", b"", stdout_offset, stderr_offset, None, running)

    def kill_command(self, sandbox_id: str, handle: str) -> bool:
        with self._lock:
            self._live(sandbox_id)
            if (sandbox_id, handle) not in self.background:
                raise CommandNotFound(handle)
            was_running = self.background[(sandbox_id, handle)]
            self.background[(sandbox_id, handle)] = False
        return was_running

    def pause(self, sandbox_id: str) -> None:
        self._maybe_fail("pause")
        with self._lock:
            self._live(sandbox_id)
            self.paused.add(sandbox_id)

    def resume(self, sandbox_id: str, *, timeout_s: int) -> None:
        self._maybe_fail("resume")
        with self._lock:
            self._live(sandbox_id)
            self.paused.discard(sandbox_id)
            self.timeouts[sandbox_id] = timeout_s

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        self._maybe_fail("write_file")
        content = b"".join(iter_chunks(data))
        with self._lock:
            self._running(sandbox_id)
            self.files[(sandbox_id, path)] = content

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        self._maybe_fail("read_file")
        with self._lock:
            self._running(sandbox_id)
            if (sandbox_id, path) not in self.files:
                raise SandboxFileNotFound(f"{path}: no such file")
            content = self.files[(sandbox_id, path)]
        return iter([content[i : i + chunk_size] for i in range(0, len(content), chunk_size)])

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        """The direct children of `path`: its files, and the directories the stored files'
        paths imply (as writing a file creates its parents)."""
        self._maybe_fail("list_files")
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._running(sandbox_id)
            below = {p: len(data) for (s, p), data in self.files.items() if s == sandbox_id}
        children: dict[str, FileEntry] = {}
        for stored, size in below.items():
            if not stored.startswith(prefix):
                continue
            name, _, rest = stored[len(prefix) :].partition("/")
            kind: Literal["file", "dir"] = "dir" if rest else "file"
            children[name] = FileEntry(
                name=name, path=prefix + name, type=kind, size=None if rest else size
            )
        if not children and path.rstrip("/") != SANDBOX_HOME:
            raise SandboxFileNotFound(f"{path}: no such directory")
        return sorted(children.values(), key=lambda entry: entry.name)

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

    def _running(self, sandbox_id: str) -> SandboxInfo:
        info = self._live(sandbox_id)
        if sandbox_id in self.paused:
            raise SandboxPaused(f"sandbox {sandbox_id} is paused")
        return info


@pytest.fixture(name="fake_backend")
def fake_backend_fixture() -> Iterator[FakeBackend]:
    """Every service, task and command that asks for the backend gets this one. Test modules
    import this function to make the `fake_backend` fixture available."""
    backend = FakeBackend()
    with override_backend(backend):
        yield backend


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

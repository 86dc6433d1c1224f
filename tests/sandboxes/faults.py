"""Fault injection through the backend interface: a real backend behind a wrapper that can
make any call fail, or run something of the test's own right after a call returns (a user who
cancels while the boot creates the sandbox, a worker that dies right after the provider made
one). Installed with `sandboxes.backends.override_backend`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from sandboxes.backends import (
    CommandOutput,
    CommandResult,
    FileEntry,
    NetworkPolicy,
    SandboxBackend,
    SandboxInfo,
)


class FaultyBackend(SandboxBackend):
    """Every call goes to `inner`, unless a fault was planned for it."""

    def __init__(self, inner: SandboxBackend):
        self.inner = inner
        self.name = inner.name
        self.supports_pause = inner.supports_pause
        self._failures: dict[str, list[BaseException]] = {}
        self._after: dict[str, Callable[[Any], None]] = {}
        self._lock = threading.Lock()

    def fail_next(self, operation: str, error: BaseException, times: int = 1) -> None:
        """The next `times` calls of `operation` raise `error` without reaching the backend."""
        with self._lock:
            self._failures.setdefault(operation, []).extend([error] * times)

    def after(self, operation: str, hook: Callable[[Any], None]) -> None:
        """Once, right after the next `operation` returns: hook(result); what it raises is
        what the caller gets (the backend call has happened)."""
        with self._lock:
            self._after[operation] = hook

    def _call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            pending = self._failures.get(operation)
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error
        result = getattr(self.inner, operation)(*args, **kwargs)
        with self._lock:
            hook = self._after.pop(operation, None)
        if hook is not None:
            hook(result)
        return result

    # -- the interface, delegated -------------------------------------------------------

    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: NetworkPolicy | None = None,
    ) -> SandboxInfo:
        result: SandboxInfo = self._call(
            "create",
            template=template,
            metadata=metadata,
            envs=envs,
            timeout_s=timeout_s,
            network=network,
        )
        return result

    def check_network(self, network: NetworkPolicy) -> None:
        self._call("check_network", network)

    def kill(self, sandbox_id: str) -> bool:
        return bool(self._call("kill", sandbox_id))

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        self._call("set_timeout", sandbox_id, timeout_s)

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        result: SandboxInfo = self._call("get_info", sandbox_id)
        return result

    def pause(self, sandbox_id: str) -> None:
        self._call("pause", sandbox_id)

    def resume(self, sandbox_id: str, *, timeout_s: int) -> None:
        self._call("resume", sandbox_id, timeout_s=timeout_s)

    def run(self, sandbox_id: str, command: str, **kwargs: Any) -> CommandResult:
        result: CommandResult = self._call("run", sandbox_id, command, **kwargs)
        return result

    def start_command(self, sandbox_id: str, command: str, **kwargs: Any) -> str:
        return str(self._call("start_command", sandbox_id, command, **kwargs))

    def command_output(self, sandbox_id: str, handle: str, **kwargs: Any) -> CommandOutput:
        result: CommandOutput = self._call("command_output", sandbox_id, handle, **kwargs)
        return result

    def kill_command(self, sandbox_id: str, handle: str) -> bool:
        return bool(self._call("kill_command", sandbox_id, handle))

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        self._call("write_file", sandbox_id, path, data)

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        result: Iterator[bytes] = self._call("read_file", sandbox_id, path, chunk_size=chunk_size)
        return result

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        result: list[FileEntry] = self._call("list_files", sandbox_id, path)
        return result

    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        result: list[SandboxInfo] = self._call("list_sandboxes", metadata)
        return result

    def reap_expired(self) -> int:
        return int(self._call("reap_expired"))

    def check(self) -> str:
        return str(self._call("check"))

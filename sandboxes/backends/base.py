"""The one interface every sandbox backend implements, and its normalised errors.

Paths are absolute paths inside the sandbox (the sandbox home is ``/home/user``). Callers
validate user input before it gets here; backends still never let a path or a link reach
outside the sandbox.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Literal

SANDBOX_HOME = "/home/user"
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024

OutputStream = Literal["stdout", "stderr"]
OutputCallback = Callable[[OutputStream, str], None]


class BackendError(Exception):
    """A permanent backend failure: retrying the same call will not help."""

    code = "backend_error"


class TransientBackendError(BackendError):
    """Rate limit, 5xx, network trouble: the same call may succeed later."""

    code = "backend_unavailable"


class SandboxNotFound(BackendError):
    """The sandbox does not exist (any more)."""

    code = "sandbox_not_found"


class SandboxFileNotFound(BackendError):
    """The path does not exist inside the sandbox."""

    code = "file_not_found"


class CommandTimeout(BackendError):
    """The command ran past its timeout and was killed, with what it printed until then."""

    code = "command_timeout"

    def __init__(self, message: str = "command timed out", *, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class SandboxInfo:
    sandbox_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    cpu_count: int | None = None
    memory_mb: int | None = None
    started_at: datetime | None = None
    end_at: datetime | None = None  # when the provider itself will kill it


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool  # stdout or stderr was cut at max_output_bytes
    duration_ms: int


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int | None = None


class SandboxBackend(abc.ABC):
    name: str

    @abc.abstractmethod
    def create(
        self, *, template: str, metadata: dict[str, str], envs: dict[str, str], timeout_s: int
    ) -> SandboxInfo:
        """Start a sandbox tagged with ``metadata``; it dies by itself after ``timeout_s``."""

    @abc.abstractmethod
    def kill(self, sandbox_id: str) -> bool:
        """Stop the sandbox and everything running in it. False when it was already gone."""

    @abc.abstractmethod
    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        """The sandbox now dies ``timeout_s`` seconds from now (unless killed earlier)."""

    @abc.abstractmethod
    def get_info(self, sandbox_id: str) -> SandboxInfo:
        """Raises SandboxNotFound when it is gone."""

    @abc.abstractmethod
    def run(
        self,
        sandbox_id: str,
        command: str,
        *,
        timeout_s: float,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> CommandResult:
        """Run ``command`` with bash -c. A non-zero exit is a result, not an error.

        Past ``timeout_s`` the whole process tree is killed and CommandTimeout raised.
        """

    @abc.abstractmethod
    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        """Create or replace a file, creating parent directories."""

    @abc.abstractmethod
    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        """Stream a file's bytes. Raises SandboxFileNotFound before the first chunk."""

    @abc.abstractmethod
    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        """The direct children of a directory."""

    @abc.abstractmethod
    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        """Live sandboxes whose metadata contains every given key/value."""

    def reap_expired(self) -> int:
        """Destroy sandboxes past their own timeout; how many. A provider such as E2B does
        this itself (the default); a backend with no daemon behind it (local) does it here,
        and the sweep calls it."""
        return 0

    @abc.abstractmethod
    def check(self) -> str:
        """Prove the backend works (configured, reachable); return a one-line summary.

        Raises BackendError with a message that says what is wrong and how to fix it.
        """


def iter_chunks(data: bytes | BinaryIO, chunk_size: int = 64 * 1024) -> Iterable[bytes]:
    if isinstance(data, bytes | bytearray):
        for start in range(0, len(data), chunk_size) or [0]:
            yield bytes(data[start : start + chunk_size])
        return
    while chunk := data.read(chunk_size):
        yield chunk

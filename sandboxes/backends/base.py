"""The one interface every sandbox backend implements, and its normalised errors.

Paths are absolute paths inside the sandbox (the sandbox home is ``/home/user``). Callers
validate user input before it gets here; backends still never let a path or a link reach
outside the sandbox.
"""

from __future__ import annotations

import abc
import threading
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


class UnsupportedOption(BackendError):
    """The backend cannot enforce what was asked (a network policy, pause): refused up front,
    never silently ignored. The message names the backend and the option."""

    code = "unsupported_by_backend"


class SandboxPaused(BackendError):
    """The sandbox is paused: resume it before running commands or touching files."""

    code = "sandbox_paused"


class CommandCanceled(BackendError):
    """``run``'s ``cancel`` event was set: the command and everything it started were killed."""

    code = "command_canceled"

    def __init__(self, message: str = "command canceled", *, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class CommandNotFound(BackendError):
    """No background command with that handle in this sandbox."""

    code = "command_not_found"


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
class NetworkPolicy:
    """What a sandbox may reach (SPEC §15). ``allow_out``/``deny_out`` hold CIDRs or domain
    names. The default is no network at all."""

    internet: bool = False
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    @property
    def is_offline(self) -> bool:
        return not self.internet and not self.allow_out


@dataclass(frozen=True)
class CommandOutput:
    """A background command's output from the offsets asked for, and where it ends now.

    Offsets count bytes of each stream as the command wrote them; the backend keeps at most
    ``max_output_bytes`` of each stream (``truncated`` once it dropped some)."""

    stdout: bytes
    stderr: bytes
    stdout_end: int  # offset after the last byte returned: the next call's stdout_offset
    stderr_end: int
    exit_code: int | None  # None while it runs (or when it was killed)
    running: bool
    truncated: bool = False


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
    mode: int | None = None  # permission bits (0o755), when the backend knows them


class SandboxBackend(abc.ABC):
    name: str

    # Whether ``pause``/``resume`` work on this backend (a paused sandbox keeps its memory,
    # processes and files and costs nothing while paused).
    supports_pause: bool = False

    @abc.abstractmethod
    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: NetworkPolicy | None = None,
    ) -> SandboxInfo:
        """Start a sandbox tagged with ``metadata``; it dies by itself after ``timeout_s``.

        ``network`` None means the backend's default (no network). A policy the backend
        cannot enforce raises UnsupportedOption (see ``check_network``)."""

    def check_network(self, network: NetworkPolicy) -> None:
        """Raise UnsupportedOption unless this backend can enforce ``network`` exactly. Called
        when a run is created, so the caller hears it (a 400) before any sandbox exists."""
        if not network.is_offline or network.deny_out:
            raise UnsupportedOption(
                f"the {self.name} backend cannot give a sandbox network access; "
                "it runs sandboxes without any network"
            )

    @abc.abstractmethod
    def kill(self, sandbox_id: str) -> bool:
        """Stop the sandbox and everything running in it. False when it was already gone."""

    @abc.abstractmethod
    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        """The sandbox now dies ``timeout_s`` seconds from now (unless killed earlier)."""

    @abc.abstractmethod
    def get_info(self, sandbox_id: str) -> SandboxInfo:
        """Raises SandboxNotFound when it is gone."""

    def pause(self, sandbox_id: str) -> None:
        """Freeze the sandbox: its processes stop, memory and files are kept, and it costs
        nothing until ``resume``. A paused sandbox still dies at its own deadline's equivalent
        on the provider (E2B keeps paused sandboxes; the run's max duration ends them).
        Raises SandboxNotFound when it is gone, UnsupportedOption where pausing is not
        possible."""
        raise UnsupportedOption(f"the {self.name} backend cannot pause sandboxes")

    def resume(self, sandbox_id: str, *, timeout_s: int) -> None:
        """Thaw a paused sandbox (a no-op on a running one); it then dies by itself after
        ``timeout_s`` unless extended. Raises SandboxNotFound when it is gone."""
        raise UnsupportedOption(f"the {self.name} backend cannot pause sandboxes")

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
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        """Run ``command`` with bash -c in the foreground. A non-zero exit is a result.

        The rule on every backend (SPEC §14/§15): the call returns when the command's own
        (main) process exits, with what it printed until then; ``on_output`` receives the
        output as it arrives. Processes it left in the background never hold the call open:
        they keep running until the sandbox ends or something kills them, their later output
        goes where it can neither block nor kill them, and later commands can see and kill
        them. Past ``timeout_s`` (> 0) the command and everything it started are killed and
        CommandTimeout raised; when ``cancel`` is set the same happens with CommandCanceled
        (a streaming client went away). A sandbox killed or expired meanwhile raises
        SandboxNotFound; a paused one SandboxPaused.
        """

    def start_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> str:
        """Start ``command`` (bash -c) in the background and return its handle: an opaque
        string any worker process can pass to ``command_output`` and ``kill_command``. Its
        output is kept by the sandbox side (at most ``max_output_bytes`` per stream), never
        by the calling process, so the call may return and the process exit."""
        raise UnsupportedOption(f"the {self.name} backend cannot run background commands")

    def command_output(
        self,
        sandbox_id: str,
        handle: str,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> CommandOutput:
        """A background command's output after the offsets (at most ``max_bytes`` per
        stream), and whether it still runs. CommandNotFound for an unknown handle."""
        raise CommandNotFound(handle)

    def kill_command(self, sandbox_id: str, handle: str) -> bool:
        """Kill a background command and everything it started. False when it had already
        ended. CommandNotFound for an unknown handle."""
        raise CommandNotFound(handle)

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

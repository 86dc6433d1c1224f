"""E2B sandboxes through the official SDK (``e2b`` pinned exactly, sync API).

Every SDK call goes through :meth:`E2BBackend._sdk_call`, the one place that maps the SDK's
exceptions — which do not share a base class — and raw transport errors onto ``base``'s
normalised ones.

Two things the SDK would otherwise do on its own:

- It falls back to ``E2B_API_KEY`` / ``E2B_API_URL`` / ``E2B_SANDBOX_URL`` / ``E2B_DOMAIN`` /
  ``E2B_DEBUG`` from the process environment for every option left empty (and ``E2B_DEBUG``
  makes create and kill silently skip the API). The backend passes all of them explicitly,
  resolved from its own configuration, so only Django settings decide where requests go.
- ``Sandbox.connect`` without a timeout extends a running sandbox to E2B's default 300 s. The
  run's deadline is ours to set (``set_timeout``), so the backend connects with a 1 s timeout,
  which never moves a later deadline (connect only ever extends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal, TypeVar

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b import (
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    FileType,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxUnreachableException,
    ServiceBusyException,
    TimeoutException,
)
from e2b import SandboxInfo as E2BSandboxInfo
from e2b.sandbox.filesystem.filesystem import FileStreamReader
from e2b.sandbox_sync.commands.command_handle import CommandHandle

from .base import (
    DEFAULT_MAX_OUTPUT_BYTES,
    SANDBOX_HOME,
    BackendError,
    CommandResult,
    CommandTimeout,
    FileEntry,
    NetworkPolicy,
    OutputCallback,
    OutputStream,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    TransientBackendError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DOMAIN = "e2b.app"
DEFAULT_API_URL = f"https://api.{DEFAULT_DOMAIN}"
DEFAULT_SANDBOX_URL = f"https://sandbox.{DEFAULT_DOMAIN}"  # what the SDK derives for e2b.app
# Connect only extends a running sandbox's deadline, never shortens it: the smallest timeout
# leaves the deadline set through set_timeout alone.
_CONNECT_TIMEOUT_S = 1
_LIST_PAGE_SIZE = 100
# connectrpc codes that describe the path to the sandbox rather than the request.
_TRANSIENT_RPC_CODES = frozenset(
    {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED, Code.ABORTED}
)


class _BoundedText:
    """Collects streamed text up to ``limit`` UTF-8 bytes and remembers if it dropped any."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._parts: list[str] = []
        self.truncated = False

    def append(self, text: str) -> None:
        if self.truncated:
            return
        data = text.encode()
        room = self._limit - self._size
        if len(data) > room:
            # Cut on a character boundary: a split multi-byte character is dropped whole.
            self._parts.append(data[: max(room, 0)].decode(errors="ignore"))
            self._size = self._limit
            self.truncated = True
            return
        self._parts.append(text)
        self._size += len(data)

    def text(self) -> str:
        return "".join(self._parts)


class E2BBackend(SandboxBackend):
    name = "e2b"

    def __init__(
        self,
        *,
        api_key: str,
        api_url: str | None,
        sandbox_url: str | None,
        template: str,
        request_timeout_s: float,
    ) -> None:
        self.api_key = api_key
        self.api_url = api_url or DEFAULT_API_URL
        self.sandbox_url = sandbox_url or DEFAULT_SANDBOX_URL
        self.template = template
        self.request_timeout_s = request_timeout_s

    @classmethod
    def from_settings(cls) -> E2BBackend:
        from django.conf import settings

        return cls(
            api_key=getattr(settings, "E2B_API_KEY", None) or "",
            api_url=getattr(settings, "E2B_API_URL", None),
            sandbox_url=getattr(settings, "E2B_SANDBOX_URL", None),
            template=getattr(settings, "E2B_TEMPLATE", None) or "base",
            request_timeout_s=float(getattr(settings, "E2B_REQUEST_TIMEOUT_S", None) or 30),
        )

    # -- SDK plumbing ----------------------------------------------------------------------------

    def _opts(self) -> dict[str, Any]:
        """Connection options for every SDK call: explicit, so the environment never decides."""
        if not self.api_key:
            raise BackendError(
                "E2B_API_KEY is not set: create a key at https://e2b.dev/dashboard?tab=keys "
                "and set E2B_API_KEY (or use SANDBOX_BACKEND=local)"
            )
        return {
            "api_key": self.api_key,
            "api_url": self.api_url,
            "sandbox_url": self.sandbox_url,
            "domain": DEFAULT_DOMAIN,
            "debug": False,
            "request_timeout": self.request_timeout_s,
        }

    @contextmanager
    def _sdk_errors(self, action: str) -> Iterator[None]:
        """Translate whatever the SDK or its transports raise into ``base``'s errors."""
        try:
            yield
        except BackendError:
            raise
        except AuthenticationException as e:
            raise BackendError(
                f"E2B rejected the API key while trying to {action} (401): E2B_API_KEY is wrong "
                f"or revoked for {self.api_url}"
            ) from e
        except (RateLimitException, ServiceBusyException) as e:
            raise TransientBackendError(f"E2B is busy, could not {action}: {e}") from e
        except (SandboxNotRunningException, NotFoundException) as e:
            if isinstance(e, FileNotFoundException):
                raise SandboxFileNotFound(f"could not {action}: {e}") from e
            # SandboxNotFoundException from the API, SandboxNotRunningException from the
            # proxy in front of a sandbox that was killed or reached its deadline.
            raise SandboxNotFound(f"could not {action}: the sandbox is gone ({e})") from e
        except SandboxUnreachableException as e:
            raise TransientBackendError(f"sandbox unreachable, could not {action}: {e}") from e
        except TimeoutException as e:
            raise TransientBackendError(f"E2B timed out, could not {action}: {e}") from e
        except SandboxException as e:
            status = e.status_code
            if status is not None and status >= 500:
                raise TransientBackendError(f"E2B failed to {action} ({status}): {e}") from e
            raise BackendError(f"E2B refused to {action}: {e}") from e
        except ConnectError as e:
            error_class = TransientBackendError if e.code in _TRANSIENT_RPC_CODES else BackendError
            raise error_class(f"envd failed to {action}: {e}") from e
        except (httpx.TransportError, OSError) as e:
            # OSError covers the builtin ConnectionError/TimeoutError of the SDK's transport.
            raise TransientBackendError(
                f"could not reach E2B to {action} ({self.api_url}): {e!r}"
            ) from e

    def _sdk_call(self, action: str, call: Callable[[], T]) -> T:
        with self._sdk_errors(action):
            return call()

    def _connect(self, sandbox_id: str) -> Sandbox:
        opts = self._opts()
        return self._sdk_call(
            f"connect to sandbox {sandbox_id}",
            lambda: Sandbox.connect(sandbox_id, timeout=_CONNECT_TIMEOUT_S, **opts),
        )

    @staticmethod
    def _info(info: E2BSandboxInfo) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=info.sandbox_id,
            metadata=dict(info.metadata or {}),
            cpu_count=info.cpu_count,
            memory_mb=info.memory_mb,
            started_at=_aware(info.started_at),
            end_at=_aware(info.end_at),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: NetworkPolicy | None = None,
    ) -> SandboxInfo:
        opts = self._opts()
        template = template or self.template
        sandbox = self._sdk_call(
            f"create a sandbox from template {template!r}",
            lambda: Sandbox.create(
                template=template, timeout=timeout_s, metadata=metadata, envs=envs, **opts
            ),
        )
        try:
            # The create answer carries no sizes or times; cost and deadlines need them.
            info = self._sdk_call(
                f"read sandbox {sandbox.sandbox_id}", lambda: sandbox.get_info(**opts)
            )
        except BackendError:
            # Nobody knows this sandbox's id yet: kill it rather than leave it to reconcile.
            self._kill_quietly(sandbox.sandbox_id)
            raise
        return self._info(info)

    def _kill_quietly(self, sandbox_id: str) -> None:
        try:
            self.kill(sandbox_id)
        except BackendError:
            logger.warning("could not kill sandbox %s; reconcile will find it", sandbox_id)

    def kill(self, sandbox_id: str) -> bool:
        opts = self._opts()
        return self._sdk_call(
            f"kill sandbox {sandbox_id}", lambda: Sandbox.kill(sandbox_id, **opts)
        )

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        opts = self._opts()
        self._sdk_call(
            f"set the timeout of sandbox {sandbox_id}",
            lambda: Sandbox.set_timeout(sandbox_id, timeout_s, **opts),
        )

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        opts = self._opts()
        info = self._sdk_call(
            f"read sandbox {sandbox_id}", lambda: Sandbox.get_info(sandbox_id, **opts)
        )
        return self._info(info)

    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        opts = self._opts()
        paginator = Sandbox.list(
            query=SandboxQuery(metadata=dict(metadata)), limit=_LIST_PAGE_SIZE, **opts
        )
        found: list[SandboxInfo] = []
        while paginator.has_next:  # follows x-next-token to the last page
            page = self._sdk_call("list sandboxes", paginator.next_items)
            found.extend(self._info(info) for info in page)
        return found

    def check(self) -> str:
        opts = self._opts()  # BackendError naming E2B_API_KEY when it is missing
        paginator = Sandbox.list(limit=_LIST_PAGE_SIZE, **opts)
        try:
            page = self._sdk_call("list sandboxes", paginator.next_items)
        except TransientBackendError as e:
            raise TransientBackendError(
                f"E2B API at {self.api_url} is unreachable or failing: {e}. Check E2B_API_URL "
                "and the network, or retry if E2B reports an outage"
            ) from e
        except BackendError as e:
            if isinstance(e.__cause__, AuthenticationException):
                raise  # already says to fix E2B_API_KEY
            raise BackendError(
                f"E2B API at {self.api_url} answered unexpectedly: {e}. Check E2B_API_URL"
            ) from e
        count = f"{len(page)}{'+' if paginator.has_next else ''}"
        return (
            f"e2b: API {self.api_url} accepted the key; live sandboxes: {count}; "
            f"template {self.template!r}"
        )

    # -- commands --------------------------------------------------------------------------------

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
        sandbox = self._connect(sandbox_id)
        outputs = {
            "stdout": _BoundedText(max_output_bytes),
            "stderr": _BoundedText(max_output_bytes),
        }

        def receiver(stream: OutputStream) -> Callable[[str], None]:
            def receive(text: str) -> None:
                outputs[stream].append(text)
                if on_output is not None:
                    on_output(stream, text)

            return receive

        action = f"run a command in sandbox {sandbox_id}"
        started = time.monotonic()
        handle: CommandHandle[Any] | None = None
        with self._sdk_errors(action):
            try:
                # background=True returns once the command started, so its pid is known when
                # the wait below times out; output is kept by us (bounded), not by the SDK.
                handle = sandbox.commands.run(
                    command,
                    background=True,
                    envs=envs or {},
                    cwd=cwd or SANDBOX_HOME,
                    timeout=timeout_s,
                    retain_output=False,
                )
                exit_code = handle.wait(
                    on_stdout=receiver("stdout"), on_stderr=receiver("stderr")
                ).exit_code
            except CommandExitException as e:
                exit_code = e.exit_code  # a failing command is a result, not an error
            except (SandboxNotRunningException, SandboxUnreachableException):
                raise  # about the sandbox, not the command: mapped by _sdk_errors
            except TimeoutException as e:
                elapsed = time.monotonic() - started
                if handle is None or not timeout_s or elapsed < timeout_s:
                    raise  # a request timeout, not the command's own deadline
                self._kill_command(handle)
                raise CommandTimeout(
                    f"command timed out after {timeout_s:g} s and was killed",
                    stdout=outputs["stdout"].text(),
                    stderr=outputs["stderr"].text(),
                ) from e
            except BaseException:
                # E.g. on_output raised: do not leave the command running unattended.
                if handle is not None:
                    self._kill_command(handle)
                raise
        return CommandResult(
            exit_code=exit_code,
            stdout=outputs["stdout"].text(),
            stderr=outputs["stderr"].text(),
            truncated=outputs["stdout"].truncated or outputs["stderr"].truncated,
            duration_ms=round((time.monotonic() - started) * 1000),
        )

    @staticmethod
    def _kill_command(handle: CommandHandle[Any]) -> None:
        """Best effort: envd kills a command at its own deadline too; this is for the rest."""
        try:
            handle.kill()
        except Exception:
            logger.warning("could not kill command %s", handle.pid, exc_info=True)

    # -- files -----------------------------------------------------------------------------------

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        sandbox = self._connect(sandbox_id)
        # bytes go as one multipart body; a file object is streamed (octet-stream, chunked).
        self._sdk_call(
            f"write {path} in sandbox {sandbox_id}", lambda: sandbox.files.write(path, data)
        )

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        sandbox = self._connect(sandbox_id)
        action = f"read {path} in sandbox {sandbox_id}"
        # format="stream" answers with the response headers, so a missing file raises here,
        # before the caller gets an iterator; the body is read as the caller iterates.
        reader = self._sdk_call(action, lambda: sandbox.files.read(path, format="stream"))
        return self._stream(reader, action, chunk_size)

    def _stream(self, reader: FileStreamReader, action: str, chunk_size: int) -> Iterator[bytes]:
        with self._sdk_errors(action):
            try:
                for chunk in reader:
                    for start in range(0, len(chunk), chunk_size):
                        yield chunk[start : start + chunk_size]
            finally:
                reader.close()  # releases the connection when the caller stops early

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        sandbox = self._connect(sandbox_id)
        entries = self._sdk_call(
            f"list {path} in sandbox {sandbox_id}", lambda: sandbox.files.list(path, depth=1)
        )
        return [
            FileEntry(
                name=entry.name,
                path=entry.path,
                type=_entry_type(entry.type),
                size=entry.size if entry.type == FileType.FILE else None,
            )
            for entry in entries
        ]


def _entry_type(file_type: FileType | None) -> Literal["file", "dir", "symlink", "other"]:
    match file_type:
        case FileType.FILE:
            return "file"
        case FileType.DIR:
            return "dir"
        case FileType.SYMLINK:
            return "symlink"
        case _:
            return "other"


def _aware(moment: datetime) -> datetime:
    """E2B answers in UTC; make sure a naive value is read that way too."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

"""What runs inside a running run's sandbox: commands (each a row of the run's command history
and two events on the trail) and file calls. Every call counts as activity on the run. Backend
calls happen outside database transactions.

`as_api_error` is the one mapping of backend errors onto the errors the API, the admin and the
commands show; `backend_call` adds what a call on a running run implies: a sandbox that
vanished under it fails the run as sandbox_lost.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from config.exceptions import (
    AirlockError,
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    TooLarge,
)
from sandboxes import services, validation
from sandboxes.backends import (
    BackendError,
    CommandCanceled,
    CommandResult,
    CommandTimeout,
    FileEntry,
    SandboxFileNotFound,
    SandboxNotFound,
    TransientBackendError,
    get_backend,
)
from sandboxes.backends.base import SANDBOX_HOME, OutputCallback, OutputStream
from sandboxes.models import (
    COMMAND_TAIL_BYTES,
    Command,
    CommandKind,
    CommandStatus,
    EndReason,
    RunStatus,
    SandboxRun,
)
from workspaces import events
from workspaces.access import Actor
from workspaces.models import EventType

logger = logging.getLogger(__name__)

T = TypeVar("T")
SYSTEM_SANDBOX_LOST = Actor.system("sandbox_lost")
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
DEFAULT_EXEC_TIMEOUT_S = 60.0


# --- errors --------------------------------------------------------------------------


def as_api_error(exc: BackendError) -> AirlockError:
    """A backend error as callers see it. Nothing here changes the run's state."""
    if isinstance(exc, SandboxFileNotFound):
        return NotFound("No such file in the sandbox.", code="file_not_found")
    if isinstance(exc, SandboxNotFound):
        return Conflict("The sandbox is gone.", code="sandbox_lost")
    if isinstance(exc, TransientBackendError):
        return ServiceUnavailable(f"The sandbox backend is unavailable: {exc}")
    return InvalidInput(str(exc), code=exc.code)


def backend_call(run: SandboxRun, call: Callable[[], T]) -> T:
    """Call the backend for a running run: errors mapped by `as_api_error`, and a sandbox that
    vanished fails the run (sandbox_lost). CommandTimeout and CommandCanceled pass through to
    the caller."""
    try:
        return call()
    except (CommandTimeout, CommandCanceled):
        raise
    except SandboxNotFound as exc:
        run_lose_sandbox(run=run, error=exc)
        raise Conflict("The sandbox is gone; the run has failed.", code="sandbox_lost") from exc
    except BackendError as exc:
        raise as_api_error(exc) from exc


def run_lose_sandbox(*, run: SandboxRun, error: SandboxNotFound) -> None:
    """The sandbox vanished under a running run: the run fails as sandbox_lost (unless it
    ended otherwise meanwhile)."""
    with contextlib.suppress(Conflict):
        services.run_transition(
            run.pk,
            lambda r: r.fail(
                reason=EndReason.SANDBOX_LOST,
                error={"code": error.code, "message": str(error)},
                by=SYSTEM_SANDBOX_LOST,
            ),
        )


def require_running(run: SandboxRun) -> None:
    if run.status != RunStatus.RUNNING:
        raise Conflict(f"The run is {run.status}, not running.", code="invalid_state")


# --- the command history -------------------------------------------------------------


def tail(text: str, limit: int = COMMAND_TAIL_BYTES) -> tuple[str, bool]:
    """The last `limit` UTF-8 bytes of `text` (cut on a character boundary), and whether
    anything was cut. NUL becomes U+FFFD: PostgreSQL text cannot hold it."""
    text = text.replace("\x00", "\ufffd")
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    return decoder.decode(data[-limit:], final=True), True


def command_start(
    *,
    run: SandboxRun,
    actor: Actor,
    kind: CommandKind,
    command: str,
    cwd: str,
    env: dict[str, str] | None = None,
    command_id: uuid.UUID | None = None,
) -> Command:
    """A command's row, and `command.started` on the trail: by the time anything about the
    command's end is known, so a crash mid-command still leaves it in the history."""
    with transaction.atomic():
        row = Command.objects.create(
            id=command_id or uuid.uuid4(),
            run=run,
            workspace_id=run.workspace_id,
            kind=kind,
            command=command,
            cwd=cwd,
            env_names=sorted(env or {}),
            actor=str(actor),
        )
        row.run = run
        events.record(
            actor=actor,
            type=EventType.COMMAND_STARTED,
            subject=row,
            data={
                "kind": kind.value,
                "command": services.trail_text(command),
                "cwd": cwd,
                "env_names": row.env_names,
            },
        )
    return row


def command_finish(
    *,
    command: Command,
    actor: Actor,
    status: CommandStatus,
    exit_code: int | None = None,
    stdout: str = "",
    stderr: str = "",
    truncated: bool = False,
    duration_ms: int | None = None,
    error: dict[str, str] | None = None,
    output_bytes: tuple[int, int] | None = None,
) -> Command:
    """How a command ended, with its output tails, and `command.finished` on the trail. Only
    a running command finishes: a second report of the same end records nothing.

    `output_bytes`: how many bytes each stream wrote, when `stdout` and `stderr` are only
    their ends (a background command's); otherwise their own lengths."""
    command.stdout_tail, cut_out = tail(stdout)
    command.stderr_tail, cut_err = tail(stderr)
    command.truncated = truncated or cut_out or cut_err
    command.stdout_bytes, command.stderr_bytes = output_bytes or (
        len(stdout.encode("utf-8", "replace")),
        len(stderr.encode("utf-8", "replace")),
    )
    command.status = status
    command.exit_code = exit_code
    command.ended_at = timezone.now()
    command.duration_ms = (
        duration_ms
        if duration_ms is not None
        else int((command.ended_at - command.started_at).total_seconds() * 1000)
    )
    command.error = error
    fields = ["stdout_tail", "stderr_tail", "truncated", "status", "exit_code", "ended_at",
              "duration_ms", "error", "stdout_bytes", "stderr_bytes"]  # fmt: skip
    with transaction.atomic():
        updated = Command.objects.filter(pk=command.pk, status=CommandStatus.RUNNING).update(
            **{name: getattr(command, name) for name in fields}
        )
        if updated:
            events.record(
                actor=actor,
                type=EventType.COMMAND_FINISHED,
                subject=command,
                data={
                    "kind": command.kind,
                    "status": status.value,
                    "exit_code": exit_code,
                    "duration_ms": command.duration_ms,
                    "timed_out": status == CommandStatus.TIMED_OUT,
                    "truncated": command.truncated,
                },
            )
    return command


# --- exec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_ms: int
    command_id: Any = None


@dataclass(frozen=True)
class ExecOutput:
    """A chunk of a streamed exec's output, as the command printed it."""

    stream: OutputStream
    text: str


@dataclass(frozen=True)
class PreparedExec:
    """An exec that passed its checks, ready to run: what `exec_prepare` hands
    `exec_perform`. Its row is written when it runs, under `command_id`."""

    run: SandboxRun
    actor: Actor
    command: str
    cwd: str
    timeout_s: float
    env: dict[str, str]
    command_id: uuid.UUID


def run_exec(
    *,
    run: SandboxRun,
    actor: Actor,
    command: str,
    timeout_s: float | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> ExecResult:
    """Run one foreground command and wait for it (at most `timeout_s`, default a minute or
    the run's remaining time). A timed-out command is a result (`timed_out`), not an error."""
    prepared = exec_prepare(
        run=run, actor=actor, command=command, timeout_s=timeout_s, cwd=cwd, env=env
    )
    return exec_perform(prepared)


def clean_timeout(run: SandboxRun, timeout_s: float | None) -> float:
    """A command's timeout: what was asked, never past the run's remaining time (400), by
    default a minute or what remains."""
    remaining = run.remaining_s()
    if timeout_s is None:
        return min(DEFAULT_EXEC_TIMEOUT_S, remaining)
    if timeout_s > remaining:
        raise InvalidInput(
            f"timeout_s is longer than the run's remaining time ({int(remaining)} s).",
            code="timeout_too_long",
        )
    return timeout_s


def exec_prepare(
    *,
    run: SandboxRun,
    actor: Actor,
    command: str,
    timeout_s: float | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> PreparedExec:
    """Everything an exec checks before the sandbox runs it (409 unless running, 400 for bad
    input), and the activity. The errors come here, before any output, so a streamed exec can
    still answer them with a status code."""
    require_running(run)
    timeout_s = clean_timeout(run, timeout_s)
    cwd = validation.clean_sandbox_path(cwd, field="cwd") if cwd else SANDBOX_HOME
    env = validation.clean_env(env)
    services.run_touch(run=run)
    return PreparedExec(run, actor, command, cwd, timeout_s, env, command_id=uuid.uuid4())


def exec_perform(
    prepared: PreparedExec,
    *,
    on_output: OutputCallback | None = None,
    cancel: threading.Event | None = None,
) -> ExecResult:
    """Run a prepared exec in the sandbox and record it: its row and `command.started` are
    written while the sandbox starts the command (so the history adds nothing to the time its
    first output takes), and committed before its end is recorded. `on_output` receives the
    output as it arrives; setting `cancel` kills the command and everything it started
    (CommandCanceled, after the row records it as killed)."""
    run, actor = prepared.run, prepared.actor
    cancel = cancel or threading.Event()
    ran: list[CommandResult | BaseException] = []

    def call() -> None:  # the backend only: the database is this caller's thread's
        try:
            ran.append(get_backend().run(
                run.sandbox_id, prepared.command, timeout_s=prepared.timeout_s,
                cwd=prepared.cwd, envs=prepared.env, on_output=on_output,
                max_output_bytes=settings.EXEC_MAX_OUTPUT_BYTES, cancel=cancel,
            ))  # fmt: skip
        except BaseException as exc:
            ran.append(exc)

    started = time.monotonic()
    sandbox_side = threading.Thread(target=call, name=f"exec-{prepared.command_id}")
    sandbox_side.start()
    try:
        row = command_start(
            run=run, actor=actor, kind=CommandKind.EXEC, command=prepared.command,
            cwd=prepared.cwd, env=prepared.env, command_id=prepared.command_id,
        )  # fmt: skip
    except BaseException:
        cancel.set()  # no history, no command
        sandbox_side.join()
        raise
    sandbox_side.join()
    outcome: CommandResult | BaseException
    try:
        outcome = backend_call(run, lambda: _returned(ran[0]))
    except BaseException as exc:
        outcome = exc
    services.run_touch(run=run)
    return _finish_exec(prepared, row, outcome, int((time.monotonic() - started) * 1000))


def _returned(ran: CommandResult | BaseException) -> CommandResult:
    if isinstance(ran, BaseException):
        raise ran
    return ran


def _finish_exec(
    prepared: PreparedExec, row: Command, ran: CommandResult | BaseException, elapsed: int
) -> ExecResult:
    """Record how the exec ended; its result, or its error raised."""
    actor = prepared.actor
    if isinstance(ran, CommandTimeout | CommandCanceled):
        timed_out = isinstance(ran, CommandTimeout)
        command_finish(
            command=row,
            actor=actor,
            status=CommandStatus.TIMED_OUT if timed_out else CommandStatus.KILLED,
            stdout=ran.stdout,
            stderr=ran.stderr,
            duration_ms=elapsed,
            error=None if timed_out else CLIENT_GONE,
        )
        if not timed_out:
            raise ran
        return ExecResult(None, ran.stdout, ran.stderr, False, True, elapsed, row.pk)
    if isinstance(ran, BaseException):
        if isinstance(ran, AirlockError):
            error = {"code": ran.code, "message": ran.detail}
        else:
            error = {"code": "server_error", "message": "The exec failed unexpectedly."}
        command_finish(command=row, actor=actor, status=CommandStatus.FAILED, error=error)
        raise ran
    command_finish(
        command=row,
        actor=actor,
        status=CommandStatus.EXITED,
        exit_code=ran.exit_code,
        stdout=ran.stdout,
        stderr=ran.stderr,
        truncated=ran.truncated,
        duration_ms=ran.duration_ms,
    )
    return ExecResult(
        ran.exit_code, ran.stdout, ran.stderr, ran.truncated, False, ran.duration_ms, row.pk
    )


CLIENT_GONE = {"code": "client_disconnected", "message": "The streaming client went away."}


class _Forwarder:
    """What a streamed exec sends on: at most EXEC_MAX_OUTPUT_BYTES of each stream (what the
    JSON answer would hold, so memory stays bounded when the client reads slowly), handed
    from the backend's thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]):
        self.loop = loop
        self.queue = queue
        self.room = {"stdout": settings.EXEC_MAX_OUTPUT_BYTES,
                     "stderr": settings.EXEC_MAX_OUTPUT_BYTES}  # fmt: skip

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def output(self, stream: OutputStream, text: str) -> None:
        room = self.room[stream]
        if room <= 0:
            return
        data = text.encode("utf-8", "replace")
        if len(data) > room:
            text = codecs.getincrementaldecoder("utf-8")("ignore").decode(data[:room])
        self.room[stream] = room - len(data)
        if text:
            self.put(ExecOutput(stream, text))


async def exec_stream(
    prepared: PreparedExec, *, heartbeat_s: float | None = None
) -> AsyncIterator[ExecOutput | ExecResult | None]:
    """A prepared exec run on a thread of its own, its output yielded as it arrives and its
    result last (None, every `heartbeat_s` of silence, says it still runs). An error after the
    start (the sandbox vanished…) is raised from the iteration. When the consumer stops early
    (a streaming client disconnected), the command and everything it started are killed, and
    its row records that."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ExecOutput | ExecResult | BaseException] = asyncio.Queue()
    forward = _Forwarder(loop, queue)
    cancel = threading.Event()

    def work() -> None:
        try:
            forward.put(exec_perform(prepared, on_output=forward.output, cancel=cancel))
        except CommandCanceled:
            pass  # nobody is listening any more
        except BaseException as exc:
            forward.put(exc)
        finally:
            connections.close_all()  # this thread's own connections

    threading.Thread(target=work, name=f"stream-{prepared.command_id}", daemon=True).start()
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield None
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, ExecResult):
                return
    finally:
        cancel.set()  # a no-op once the command has ended


# --- files ---------------------------------------------------------------------------


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def spool_upload(stream: Readable, *, limit: int) -> BinaryIO:
    """Read an upload fully before it reaches the sandbox, so an oversized body is refused
    whole (413) instead of leaving half a file behind. Memory is bounded: big bodies spool
    to a temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115
    total = 0
    while chunk := stream.read(64 * 1024):
        total += len(chunk)
        if total > limit:
            spool.close()
            raise TooLarge(f"The upload is larger than {limit} bytes.")
        spool.write(chunk)
    spool.seek(0)
    return spool  # type: ignore[return-value]  # a SpooledTemporaryFile reads like one


UPLOAD_CHUNK_BYTES = 1024 * 1024


class DeclaredBody:
    """A request body of a declared length, read straight into the sandbox: the backends
    write to a fresh name and rename it into place (local) or send one request (E2B), so a
    body that ends short fails the write and leaves nothing at the path."""

    def __init__(self, stream: Readable, size: int):
        self.stream, self.remaining = stream, size

    def read(self, size: int = -1, /) -> bytes:
        if self.remaining <= 0:
            return b""
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        chunk = self.stream.read(min(want, UPLOAD_CHUNK_BYTES))
        if not chunk:
            raise InvalidInput(
                f"The upload ended {self.remaining} bytes short of its Content-Length.",
                code="incomplete_body",
            )
        self.remaining -= len(chunk)
        return chunk


def run_upload_file(
    *, run: SandboxRun, actor: Actor, path: str, stream: Readable, size: int | None = None
) -> int:
    """Write a file into the sandbox (parents created, replaced if there); `file.uploaded` on
    the trail with its path and size. A body whose `size` is declared (Content-Length) goes
    straight to the sandbox, refused up front when over UPLOAD_MAX_BYTES; one of unknown
    length is spooled first, so an oversized one is refused whole."""
    require_running(run)
    path = validation.clean_sandbox_path(path)
    limit = settings.UPLOAD_MAX_BYTES
    if size is not None:
        if size > limit:
            raise TooLarge(f"The upload is larger than {limit} bytes.")
        body = DeclaredBody(stream, size)
        backend_call(run, lambda: get_backend().write_file(run.sandbox_id, path, body))  # type: ignore[arg-type]
    else:
        spool = spool_upload(stream, limit=limit)
        try:
            size = spool.seek(0, 2)
            spool.seek(0)
            backend_call(run, lambda: get_backend().write_file(run.sandbox_id, path, spool))
        finally:
            spool.close()
    with transaction.atomic():
        events.record(
            actor=actor,
            type=EventType.FILE_UPLOADED,
            subject=run,
            data={"path": path, "size": size},
        )
    services.run_touch(run=run)
    return size


def run_download_file(
    *, run: SandboxRun, path: str, chunk_size: int = 64 * 1024
) -> Iterator[bytes]:
    require_running(run)
    path = validation.clean_sandbox_path(path)
    services.run_touch(run=run)
    chunks = backend_call(
        run, lambda: get_backend().read_file(run.sandbox_id, path, chunk_size=chunk_size)
    )
    # read_file raises not-found before its first chunk: pull it now, inside the mapping.
    first = backend_call(run, lambda: next(chunks, b""))

    def stream() -> Iterator[bytes]:
        yield first
        yield from chunks

    return stream()


def run_list_files(*, run: SandboxRun, path: str) -> list[FileEntry]:
    require_running(run)
    path = validation.clean_sandbox_path(path)
    services.run_touch(run=run)
    return list(backend_call(run, lambda: get_backend().list_files(run.sandbox_id, path)))

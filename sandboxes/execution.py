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
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Protocol, TypeVar

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from config.exceptions import (
    AirlockError,
    Conflict,
    InvalidInput,
    TooLarge,
)
from sandboxes import services, validation
from sandboxes.backends import (
    BackendError,
    CommandCanceled,
    CommandResult,
    CommandTimeout,
    FileEntry,
    SandboxNotFound,
    SandboxPaused,
    get_backend,
)
from sandboxes.backends.base import SANDBOX_HOME, OutputCallback, OutputStream
from sandboxes.models import (
    COMMAND_TAIL_BYTES,
    SANDBOX_STATUSES,
    Command,
    CommandKind,
    CommandStatus,
    EndReason,
    RunStatus,
    SandboxRun,
)
from sandboxes.services import SYSTEM_SANDBOX_LOST as SYSTEM_SANDBOX_LOST
from sandboxes.services import as_api_error as as_api_error
from sandboxes.services import run_lose_sandbox as run_lose_sandbox
from workspaces import events
from workspaces.access import Actor
from workspaces.models import EventType

logger = logging.getLogger(__name__)

T = TypeVar("T")
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
DEFAULT_EXEC_TIMEOUT_S = 60.0


# --- errors: `as_api_error` and `run_lose_sandbox` live in services (pause and resume use
# them too); `backend_call` adds what a call on a running run implies. ---------------------


def backend_call(run: SandboxRun, call: Callable[[], T]) -> T:
    """Call the backend for a running run: errors mapped by `as_api_error`, and a sandbox that
    vanished fails the run (sandbox_lost). CommandTimeout and CommandCanceled pass through to
    the caller. A sandbox paused under the call (the sweep paused the idle run as the call
    came in) is a 409: the next call resumes it."""
    try:
        return call()
    except (CommandTimeout, CommandCanceled):
        raise
    except SandboxNotFound as exc:
        if run_lose_sandbox(run=run, error=exc) == EndReason.MAX_DURATION:
            raise Conflict(
                "The run reached its max duration; it has failed.", code="max_duration"
            ) from exc
        raise Conflict("The sandbox is gone; the run has failed.", code="sandbox_lost") from exc
    except SandboxPaused as exc:
        _resume_under_running_run(run)
        raise as_api_error(exc) from exc
    except BackendError as exc:
        raise as_api_error(exc) from exc


def _resume_under_running_run(run: SandboxRun) -> None:
    """The sandbox was paused under a call while the run is still running (the sweep paused
    it as the call came in, and keeps the run running because of the call): resume it, so
    that calling again works. A run the sweep already recorded as paused is left to the next
    call's own resume, which records it."""
    if not SandboxRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).exists():
        return
    try:
        get_backend().resume(run.sandbox_id, timeout_s=services.provider_timeout_s(run))
    except BackendError as exc:
        logger.warning("resume after a pause under a call failed run=%s: %s", run.pk, exc)


def refuse_unless_usable(run: SandboxRun) -> None:
    """409 unless the run is running or paused (resumed by `require_running`): checked
    before the input, so a call on an ended run says so whatever it asked."""
    if run.status not in SANDBOX_STATUSES:
        raise Conflict(f"The run is {run.status}, not running.", code="invalid_state")


def require_running(run: SandboxRun, actor: Actor | None = None) -> SandboxRun:
    """The run, running: a paused one is resumed within the call (SPEC §15), on the trail as
    `actor` (the caller; `system:resume` when the call has none); any other state is a 409.
    Callers check their input first, so a bad request never resumes a sandbox."""
    return services.run_ensure_running(run=run, actor=actor or services.SYSTEM_RESUME)


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
    _record_end(command, actor)
    return command


def _record_end(
    command: Command, actor: Actor, *, lease_lapsed_before: datetime | None = None
) -> bool:
    """Save a command's end (set on `command`) if it still runs — and, with
    `lease_lapsed_before`, only if its lease lapsed before then — with `command.finished`."""
    fields = ["stdout_tail", "stderr_tail", "truncated", "status", "exit_code", "ended_at",
              "duration_ms", "error", "stdout_bytes", "stderr_bytes"]  # fmt: skip
    still_running = Command.objects.filter(pk=command.pk, status=CommandStatus.RUNNING)
    if lease_lapsed_before is not None:
        still_running = still_running.filter(lease_expires_at__lt=lease_lapsed_before)
    status = CommandStatus(command.status)
    exit_code = command.exit_code
    with transaction.atomic():
        updated = still_running.update(**{name: getattr(command, name) for name in fields})
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
    return bool(updated)


# --- the command job's lease -----------------------------------------------------------

WORKER_LOST_ERROR = {
    "code": "worker_lost",
    "message": "The worker running the command stopped renewing its lease (it died).",
}


def job_lease() -> timedelta:
    return timedelta(seconds=settings.SANDBOX_JOB_LEASE_S)


class CommandLease:
    """The command job's hold on its command, while the command runs: a thread renews the
    row's `lease_expires_at` every third of SANDBOX_JOB_LEASE_S, and stores the output so far
    as the row's tails (what is kept if the worker dies). A lease that lapsed — the worker
    was killed, its host went away — is the sweep's sign to end the job (`job_lose_worker`).

    `output` is the backend's on_output callback. `lost` is set when a renewal finds the
    command no longer running: the sweep has ended it."""

    def __init__(self, command: Command):
        self.command = command
        self.lost = False
        self._streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._sizes = {"stdout": 0, "stderr": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, name=f"lease-{command.pk}", daemon=True
        )

    def __enter__(self) -> CommandLease:
        self.renew()  # on the caller's connection: the lease exists before the command runs
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def output(self, stream: OutputStream, text: str) -> None:
        with self._lock:
            chunks = self._streams[stream]
            chunks.append(text)
            self._sizes[stream] += len(text)
            # Keep about twice the tail: enough to cut the last COMMAND_TAIL_BYTES from.
            while len(chunks) > 1 and self._sizes[stream] - len(chunks[0]) > COMMAND_TAIL_BYTES:
                self._sizes[stream] -= len(chunks.pop(0))

    def renew(self) -> bool:
        with self._lock:
            stdout, cut_out = tail("".join(self._streams["stdout"]))
            stderr, cut_err = tail("".join(self._streams["stderr"]))
        renewed = Command.objects.filter(pk=self.command.pk, status=CommandStatus.RUNNING).update(
            lease_expires_at=timezone.now() + job_lease(),
            stdout_tail=stdout,
            stderr_tail=stderr,
            truncated=cut_out or cut_err,
        )
        if not renewed:
            self.lost = True
        return bool(renewed)

    def _renew_until_stopped(self) -> None:
        interval = settings.SANDBOX_JOB_LEASE_S / 3
        try:
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except Exception:  # a database hiccup: the next renewal may get through
                    logger.exception("lease renewal failed command=%s", self.command.pk)
        finally:
            connections.close_all()  # this thread's own connection


def jobs_with_lapsed_lease(now: datetime) -> list[Command]:
    """Command jobs still running whose worker stopped renewing their lease."""
    return list(
        Command.objects.filter(
            kind=CommandKind.JOB,
            status=CommandStatus.RUNNING,
            lease_expires_at__lt=now,
            run__status=RunStatus.RUNNING,
        )
        .select_related("run")
        .order_by("lease_expires_at")[:1000]
    )


# What a lost job's end also does (artifacts keeps the output there was as the log artifact:
# registered in ArtifactsConfig.ready, as sandboxes never imports artifacts).
_worker_lost_hooks: list[Callable[[SandboxRun, Command, Actor], None]] = []


def on_worker_lost(hook: Callable[[SandboxRun, Command, Actor], None]) -> None:
    _worker_lost_hooks.append(hook)


def job_lose_worker(*, command: Command, actor: Actor, now: datetime) -> SandboxRun | None:
    """End a command job whose lease lapsed before `now`: the command failed (worker_lost,
    with the output its last renewal stored), the run failed worker_lost, the hooks (its log
    artifact), then the sandbox killed. None when the job renewed its lease or ended
    meanwhile: the claim is the conditional end of the command row."""
    command.status = CommandStatus.FAILED
    command.ended_at = timezone.now()
    command.duration_ms = int((command.ended_at - command.started_at).total_seconds() * 1000)
    command.error = WORKER_LOST_ERROR
    command.stdout_bytes = len(command.stdout_tail.encode("utf-8", "replace"))
    command.stderr_bytes = len(command.stderr_tail.encode("utf-8", "replace"))
    if not _record_end(command, actor, lease_lapsed_before=now):
        return None
    try:
        run = services.run_transition(
            command.run_id,
            lambda r: r.fail(reason=EndReason.WORKER_LOST, error=WORKER_LOST_ERROR, by=actor),
        )
    except Conflict:
        return None  # it ended otherwise meanwhile
    for hook in _worker_lost_hooks:
        try:
            hook(run, command, actor)
        except Exception:  # the kill matters more than the log
            logger.exception("worker lost hook %s failed run=%s", hook, run.pk)
    services.kill_sandbox_quietly(run)
    logger.warning("job lost its worker run=%s command=%s", run.pk, command.pk)
    return run


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
    refuse_unless_usable(run)
    timeout_s = clean_timeout(run, timeout_s)
    cwd = validation.clean_sandbox_path(cwd, field="cwd") if cwd else SANDBOX_HOME
    env = validation.clean_env(env)
    run = require_running(run, actor)
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
    length is spooled first, so an oversized one is refused whole. Checked before the body is
    read; a paused run is resumed just before its sandbox is written."""
    refuse_unless_usable(run)
    path = validation.clean_sandbox_path(path)
    limit = settings.UPLOAD_MAX_BYTES
    if size is not None:
        if size > limit:
            raise TooLarge(f"The upload is larger than {limit} bytes.")
        body = DeclaredBody(stream, size)
        run = require_running(run, actor)
        backend_call(run, lambda: get_backend().write_file(run.sandbox_id, path, body))  # type: ignore[arg-type]
    else:
        spool = spool_upload(stream, limit=limit)
        try:
            run = require_running(run, actor)
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
    *, run: SandboxRun, path: str, chunk_size: int = 64 * 1024, actor: Actor | None = None
) -> Iterator[bytes]:
    refuse_unless_usable(run)
    path = validation.clean_sandbox_path(path)
    run = require_running(run, actor)
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


def run_list_files(*, run: SandboxRun, path: str, actor: Actor | None = None) -> list[FileEntry]:
    refuse_unless_usable(run)
    path = validation.clean_sandbox_path(path)
    run = require_running(run, actor)
    services.run_touch(run=run)
    return list(backend_call(run, lambda: get_backend().list_files(run.sandbox_id, path)))

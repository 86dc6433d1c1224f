"""Background commands (SPEC §12): started in a running sandbox by handle, read by offset
while they run, killed. Each is a row of the run's command history (kind `background`) and
two events on the trail, like every command (execution.command_start/command_finish).

The backend keeps a background command's output, so any web process or worker can read it.
Its end is noticed whenever something looks: a read of the command, the periodic check (beat:
`check_background_commands`), and the run's end, which kills those still running (a hook on
`services.kill_sandbox_quietly`, and the check for runs the sweep or reconcile ended). Its
`timeout_s` is enforced by the same looks: past its deadline it is killed as timed out.
Each look refreshes the row's tails (the last COMMAND_TAIL_BYTES of each stream).
"""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from config.exceptions import AirlockError, Conflict
from sandboxes import execution, services, validation
from sandboxes.backends import BackendError, CommandNotFound, CommandOutput, get_backend
from sandboxes.backends.base import SANDBOX_HOME
from sandboxes.models import (
    COMMAND_TAIL_BYTES,
    SANDBOX_STATUSES,
    Command,
    CommandKind,
    CommandStatus,
    RunStatus,
    SandboxRun,
)
from workspaces.access import Actor

logger = logging.getLogger(__name__)

SYSTEM_CHECK = Actor.system("check_background_commands")
SYSTEM_RUN_END = Actor.system("run_end")
RUN_ENDED = {"code": "run_ended", "message": "The run ended: its sandbox is gone."}
TIMED_OUT = {"code": "command_timeout", "message": "The command ran past its timeout_s."}


def command_start_background(
    *,
    run: SandboxRun,
    actor: Actor,
    command: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> Command:
    """Start a command in the background and return its row (status running) at once. It
    runs until it exits, is killed, passes `timeout_s` (default: until the run ends; never
    past the run's remaining time, 400) or the run ends."""
    execution.refuse_unless_usable(run)
    limit = run.remaining_s() if timeout_s is None else execution.clean_timeout(run, timeout_s)
    cwd = validation.clean_sandbox_path(cwd, field="cwd") if cwd else SANDBOX_HOME
    env = validation.clean_env(env)
    run = execution.require_running(run, actor)
    services.run_touch(run=run)
    row = execution.command_start(
        run=run, actor=actor, kind=CommandKind.BACKGROUND, command=command, cwd=cwd, env=env
    )
    try:
        row.handle = execution.backend_call(
            run,
            lambda: get_backend().start_command(
                run.sandbox_id,
                command,
                cwd=cwd,
                envs=env,
                max_output_bytes=settings.EXEC_MAX_OUTPUT_BYTES,
            ),
        )
    except AirlockError as exc:
        execution.command_finish(
            command=row,
            actor=actor,
            status=CommandStatus.FAILED,
            error={"code": exc.code, "message": exc.detail},
        )
        raise
    row.deadline_at = row.started_at + timedelta(seconds=limit)
    Command.objects.filter(pk=row.pk).update(handle=row.handle, deadline_at=row.deadline_at)
    return row


@dataclass(frozen=True)
class OutputRead:
    """A command's output from the offsets asked for: text up to `*_next` (the offsets to
    ask for next time). Bytes that no longer exist anywhere (before the kept tail of a
    command whose sandbox is gone) are skipped: `*_offset` says where the text starts."""

    stdout: str
    stderr: str
    stdout_offset: int
    stderr_offset: int
    stdout_next: int
    stderr_next: int


def command_read(
    *, run: SandboxRun, command: Command, stdout_offset: int = 0, stderr_offset: int = 0
) -> OutputRead:
    """A command's output after the offsets (bytes of each stream), with its row brought up
    to date: a background command that ended meanwhile (or passed its deadline, and is
    killed now) is finished. Not activity: reading does not keep the sandbox alive, nor
    resume a paused one (its commands are frozen: what they printed is in the row's tails)."""
    running = command.status == CommandStatus.RUNNING
    live = command.kind == CommandKind.BACKGROUND and command.handle
    if live and run.status != RunStatus.PAUSED:
        if run.status != RunStatus.RUNNING:
            if running:
                _finish_with_run(command, run)
        elif running:
            output = _look(run, command, stdout_offset, stderr_offset)
            if output is not None:
                return output
        elif (ended := _output(run, command, (stdout_offset, stderr_offset))) is not None:
            # Ended, but its sandbox still has all it kept: more than the row's tails.
            return _answer(ended, (stdout_offset, stderr_offset), stdout_offset, stderr_offset)
    return _from_tails(command, stdout_offset, stderr_offset)


def command_kill(*, run: SandboxRun, command: Command, actor: Actor) -> Command:
    """Kill a background command and everything it started; its row records how it ended
    (killed, unless it had exited first). A command that already ended is left as it is."""
    if command.kind != CommandKind.BACKGROUND:
        raise Conflict("Only background commands can be killed.", code="not_background")
    if command.status != CommandStatus.RUNNING:
        return command
    if run.status not in SANDBOX_STATUSES:  # the run's end took it (not recorded yet)
        return _finish_with_run(command, run)
    run = execution.require_running(run, actor)  # a paused run is resumed to kill it
    services.run_touch(run=run)
    output = _output(run, command)
    if output is not None and not output.running:
        return _finish_ended(command, output)
    try:
        execution.backend_call(
            run, lambda: get_backend().kill_command(run.sandbox_id, command.handle)
        )
    except AirlockError as exc:
        if not isinstance(exc.__cause__, CommandNotFound):
            raise
    return _finish(command, output, actor=actor, status=CommandStatus.KILLED)


# --- looking ------------------------------------------------------------------------------


def _look(
    run: SandboxRun, command: Command, stdout_offset: int, stderr_offset: int
) -> OutputRead | None:
    """Read a running background command from the backend, refresh its row (finish it when it
    ended, kill it past its deadline), and answer the caller's offsets. None when the backend
    no longer has it (the row was finished from what it kept)."""
    starts = (
        min(stdout_offset, _tail_start(command.stdout_bytes)),
        min(stderr_offset, _tail_start(command.stderr_bytes)),
    )
    output = _output(run, command, starts)
    if output is None:
        return None
    if not output.running:
        _finish_ended(command, output)
    elif command.deadline_at is not None and timezone.now() >= command.deadline_at:
        _kill_quietly(run, command)
        _finish(command, output, actor=SYSTEM_CHECK, status=CommandStatus.TIMED_OUT)
    else:
        _save_tails(command, output)
    return _answer(output, starts, stdout_offset, stderr_offset)


def _answer(
    output: CommandOutput, starts: tuple[int, int], stdout_offset: int, stderr_offset: int
) -> OutputRead:
    """The caller's part of a read that began at `starts`."""
    final = not output.running
    out, out_next = _text(output.stdout, starts[0], stdout_offset, final)
    err, err_next = _text(output.stderr, starts[1], stderr_offset, final)
    return OutputRead(
        out, err, max(stdout_offset, starts[0]), max(stderr_offset, starts[1]), out_next, err_next
    )


def _output(
    run: SandboxRun, command: Command, starts: tuple[int, int] | None = None
) -> CommandOutput | None:
    """The backend's view of the command from `starts` (default: its kept tails), or None
    when it has none (the handle is unknown, the sandbox is gone)."""
    if starts is None:
        starts = (_tail_start(command.stdout_bytes), _tail_start(command.stderr_bytes))
    try:
        return get_backend().command_output(
            run.sandbox_id,
            command.handle,
            stdout_offset=starts[0],
            stderr_offset=starts[1],
            max_bytes=settings.EXEC_MAX_OUTPUT_BYTES,
        )
    except BackendError as exc:
        logger.info("background command %s unreadable: %s", command.pk, exc)
        return None


def _tail_start(length: int) -> int:
    return max(0, length - COMMAND_TAIL_BYTES)


def _tails(output: CommandOutput) -> tuple[str, str, tuple[int, int]]:
    """The row's tails from a read that began at or before them: the read's last bytes."""
    return (
        _decode(output.stdout[-COMMAND_TAIL_BYTES:]),
        _decode(output.stderr[-COMMAND_TAIL_BYTES:]),
        (output.stdout_end, output.stderr_end),
    )


def _save_tails(command: Command, output: CommandOutput) -> None:
    stdout, stderr, ends = _tails(output)
    command.stdout_tail, command.stderr_tail = stdout, stderr
    command.stdout_bytes, command.stderr_bytes = ends
    command.truncated = command.truncated or output.truncated
    Command.objects.filter(pk=command.pk, status=CommandStatus.RUNNING).update(
        stdout_tail=command.stdout_tail,
        stderr_tail=command.stderr_tail,
        stdout_bytes=command.stdout_bytes,
        stderr_bytes=command.stderr_bytes,
        truncated=command.truncated,
    )


def _finish_ended(command: Command, output: CommandOutput) -> Command:
    """It ended by itself: exited with its code, or (no code) was killed from inside."""
    status = CommandStatus.EXITED if output.exit_code is not None else CommandStatus.KILLED
    return _finish(command, output, actor=SYSTEM_CHECK, status=status)


def _finish(
    command: Command,
    output: CommandOutput | None,
    *,
    actor: Actor,
    status: CommandStatus,
    error: dict[str, str] | None = None,
) -> Command:
    """Record the end, with the freshest tails there are (the row's own when the backend had
    nothing any more)."""
    if status == CommandStatus.TIMED_OUT:
        error = error or TIMED_OUT
    if output is None:
        stdout, stderr = command.stdout_tail, command.stderr_tail
        ends = (command.stdout_bytes, command.stderr_bytes)
        truncated = command.truncated
    else:
        stdout, stderr, ends = _tails(output)
        truncated = command.truncated or output.truncated
    return execution.command_finish(
        command=command,
        actor=actor,
        status=status,
        exit_code=output.exit_code if output and status == CommandStatus.EXITED else None,
        stdout=stdout,
        stderr=stderr,
        truncated=truncated,
        error=error,
        output_bytes=ends,
    )


def _kill_quietly(run: SandboxRun, command: Command) -> None:
    try:
        get_backend().kill_command(run.sandbox_id, command.handle)
    except BackendError as exc:
        logger.warning("kill of background command %s failed: %s", command.pk, exc)


def _finish_with_run(command: Command, run: SandboxRun) -> Command:
    """The run ended: its sandbox (and the command with it) is gone or about to be. What the
    backend still has is kept; a command still running is killed."""
    output = _output(run, command) if run.sandbox_id else None
    if output is not None and not output.running:
        return _finish_ended(command, output)
    if output is not None:
        _kill_quietly(run, command)
    return _finish(command, output, actor=SYSTEM_RUN_END, status=CommandStatus.KILLED,
                   error=RUN_ENDED)  # fmt: skip


def _from_tails(command: Command, stdout_offset: int, stderr_offset: int) -> OutputRead:
    """Output from the row: the tails end where the command's output ended (or was last
    read); bytes before them are gone."""
    parts = []
    for text, length, offset in (
        (command.stdout_tail, command.stdout_bytes, stdout_offset),
        (command.stderr_tail, command.stderr_bytes, stderr_offset),
    ):
        data = text.encode("utf-8", "replace")
        start = max(0, length - len(data))
        parts.append((_decode(data[max(0, offset - start) :]), max(offset, start), length))
    (out, out_at, out_next), (err, err_at, err_next) = parts
    return OutputRead(out, err, min(out_at, out_next), min(err_at, err_next), out_next, err_next)


def _text(data: bytes, start: int, offset: int, final: bool) -> tuple[str, int]:
    """The caller's part of `data` (which begins at byte `start` of its stream) from
    `offset`, as text, and the offset to read from next. While the command runs, a
    character split at the end waits for the next read instead of becoming U+FFFD."""
    part = data[max(0, offset - start) :]
    begin = max(offset, start)
    if not final:
        part = part[: _complete_utf8(part)]
    return _decode(part), begin + len(part)


# The length of a UTF-8 character by the high nibble of its first byte (ASCII: 1).
_UTF8_LENGTH = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}


def _complete_utf8(data: bytes) -> int:
    """The length of `data` without a UTF-8 character cut at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the start of the last character
            need = _UTF8_LENGTH.get(byte >> 4, 1)
            return len(data) if back >= need else len(data) - back
    return len(data)


def _decode(data: bytes) -> str:
    return codecs.decode(data, "utf-8", "replace")


# --- the periodic check and the run's end ---------------------------------------------------


@dataclass
class CheckReport:
    checked: int = 0
    finished: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"checked": self.checked, "finished": self.finished, "errors": self.errors}


def background_commands_check() -> CheckReport:
    """Look at every running background command (beat, every
    SANDBOX_COMMAND_CHECK_INTERVAL_S): finish those that ended, kill those past their
    deadline, and end those whose run ended. One failure never stops the others."""
    report = CheckReport()
    running = Command.objects.filter(
        status=CommandStatus.RUNNING, kind=CommandKind.BACKGROUND
    ).select_related("run")
    for command in running.iterator():
        report.checked += 1
        try:
            if command.run.status == RunStatus.RUNNING:
                _look(command.run, command, command.stdout_bytes, command.stderr_bytes)
            elif command.run.status == RunStatus.PAUSED:
                continue  # frozen with its sandbox: looked at again once the run resumes
            else:
                _finish_with_run(command, command.run)
        except Exception:
            report.errors += 1
            logger.exception("check of background command %s failed", command.pk)
            continue
        report.finished += (
            Command.objects.filter(pk=command.pk).exclude(status=CommandStatus.RUNNING).count()
        )
    return report


def run_end_commands(run: SandboxRun) -> None:
    """The run has ended and its sandbox is about to be killed: its background commands end
    with it, each recorded as it ended (a hook on services.kill_sandbox_quietly, registered
    in SandboxesConfig.ready)."""
    for command in Command.objects.filter(
        run=run, status=CommandStatus.RUNNING, kind=CommandKind.BACKGROUND
    ):
        command.run = run
        _finish_with_run(command, run)

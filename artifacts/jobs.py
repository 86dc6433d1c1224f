"""The command job (SPEC §6): a run started with a `command` runs it once, keeps its outputs as
pending artifacts, ends, and its sandbox is killed. It lives here, above both apps, because it
uses both: it runs the command through sandboxes and captures through artifacts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from artifacts.capture import capture_run_outputs
from config.exceptions import Conflict
from sandboxes import execution, services
from sandboxes.backends import (
    BackendError,
    CommandResult,
    CommandTimeout,
    SandboxNotFound,
    get_backend,
)
from sandboxes.backends.base import SANDBOX_HOME, OutputCallback
from sandboxes.models import (
    Command,
    CommandKind,
    CommandStatus,
    EndReason,
    RunStatus,
    SandboxRun,
)
from workspaces.access import Actor

logger = logging.getLogger(__name__)

SYSTEM_JOB = Actor.system("execute_run_command")
MAX_DURATION_ERROR = {
    "code": "max_duration",
    "message": "The command ran past the run's max duration.",
}


@dataclass(frozen=True)
class _Outcome:
    """How the job ends the run, and how its command ended."""

    end: Callable[[SandboxRun], None]
    status: CommandStatus
    error: dict[str, str] | None = None


def run_execute_command(*, run_id: str) -> None:
    """Upload `files`, run `command` until the run's max duration, keep its outputs as
    pending artifacts, then end the run (succeeded on exit 0) and kill the sandbox.

    Runs once: the claim on command_started_at makes a repeated message a no-op, and a
    command is never retried (it may not be safe to run twice)."""
    run = _claim(run_id)
    if run is None:
        return
    row = execution.command_start(
        run=run, actor=SYSTEM_JOB, kind=CommandKind.JOB, command=run.command, cwd=SANDBOX_HOME
    )
    with execution.CommandLease(row) as lease:
        result, outcome = _run_command(run, on_output=lease.output)
    if lease.lost or not Command.objects.filter(pk=row.pk, status=CommandStatus.RUNNING).exists():
        # The sweep took the job as lost (its lease lapsed while this worker was stalled):
        # the run has ended as worker_lost, with the output so far as its log.
        logger.warning("command job ended after its lease lapsed run=%s", run_id)
        services.kill_sandbox_quietly(run)
        return
    execution.command_finish(
        command=row,
        actor=SYSTEM_JOB,
        status=outcome.status,
        exit_code=result.exit_code if result and outcome.status == CommandStatus.EXITED else None,
        stdout=result.stdout if result else "",
        stderr=result.stderr if result else "",
        truncated=result.truncated if result else False,
        duration_ms=result.duration_ms if result else None,
        error=outcome.error,
    )
    capture_run_outputs(run=run, result=result, actor=SYSTEM_JOB)
    try:
        run = services.run_transition(run_id, outcome.end)
    except Conflict:
        logger.info("command finished after the run ended run=%s", run_id)
        run.refresh_from_db()
    services.kill_sandbox_quietly(run)


def _claim(run_id: str) -> SandboxRun | None:
    """Take the run for its job, once. From here the job holds the run until its max
    duration: neither the sweep's idle check nor the sandbox's own idle deadline may end it
    while the command runs."""
    now = timezone.now()
    claimed = (
        SandboxRun.objects.filter(
            pk=run_id, status=RunStatus.RUNNING, command_started_at__isnull=True
        )
        .exclude(command="")
        .update(command_started_at=now, last_activity_at=now)
    )
    if not claimed:
        return None
    run = SandboxRun.objects.get(pk=run_id)
    SandboxRun.objects.filter(pk=run_id).update(
        expires_at=run.sweep_due()[0], deadline_pushed_at=now
    )
    try:
        get_backend().set_timeout(run.sandbox_id, services.provider_timeout_s(run))
    except BackendError as exc:
        logger.warning("deadline push before the command failed run=%s: %s", run_id, exc)
    return run


def _run_command(
    run: SandboxRun, *, on_output: OutputCallback | None = None
) -> tuple[CommandResult | None, _Outcome]:
    """Write the run's files, run its command; what it printed and how the run ends."""
    backend = get_backend()
    try:
        for path, text in run.files.items():
            backend.write_file(run.sandbox_id, path, text.encode())
        result = backend.run(
            run.sandbox_id,
            run.command,
            timeout_s=max(1.0, run.remaining_s()),
            cwd=SANDBOX_HOME,
            on_output=on_output,
            max_output_bytes=settings.EXEC_MAX_OUTPUT_BYTES,
        )
    except CommandTimeout as exc:
        timed_out = CommandResult(-1, exc.stdout, exc.stderr, False, int(run.remaining_s() * 1000))
        return timed_out, _failing(
            EndReason.MAX_DURATION, MAX_DURATION_ERROR, CommandStatus.TIMED_OUT
        )
    except SandboxNotFound as exc:
        if run.remaining_s() <= 0:  # the sandbox's own deadline, which is the run's, came first
            return None, _failing(
                EndReason.MAX_DURATION, MAX_DURATION_ERROR, CommandStatus.TIMED_OUT
            )
        error = {"code": exc.code, "message": str(exc)}
        return None, _failing(EndReason.SANDBOX_LOST, error, CommandStatus.FAILED)
    except BackendError as exc:
        error = {"code": exc.code, "message": str(exc)}
        return None, _failing(EndReason.COMMAND_FAILED, error, CommandStatus.FAILED)
    if result.exit_code == 0:
        return result, _Outcome(
            lambda r: r.succeed(exit_code=0, by=SYSTEM_JOB), CommandStatus.EXITED
        )
    error = {"code": "command_failed", "message": f"exit code {result.exit_code}"}
    return result, _failing(
        EndReason.COMMAND_FAILED, error, CommandStatus.EXITED, exit_code=result.exit_code
    )


def _failing(
    reason: str, error: dict[str, str], status: CommandStatus, exit_code: int | None = None
) -> _Outcome:
    def end(run: SandboxRun) -> None:
        run.fail(reason=reason, error=error, exit_code=exit_code, by=SYSTEM_JOB)

    command_error = None if status == CommandStatus.EXITED else error
    return _Outcome(end, status, command_error)

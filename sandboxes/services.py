"""Every write to sandbox runs. Network calls to the sandbox backend happen outside database
transactions; state changes go through the SandboxRun transitions and are logged with the actor."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, Protocol

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Min, Q
from django.utils import timezone
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from config.exceptions import (
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ServiceUnavailable,
    TooLarge,
)
from sandboxes.backends import (
    BackendError,
    CommandResult,
    CommandTimeout,
    FileEntry,
    SandboxFileNotFound,
    SandboxNotFound,
    TransientBackendError,
    get_backend,
    kill_run_sandboxes,
    run_sandboxes,
    sandbox_tags,
)
from sandboxes.backends.base import SANDBOX_HOME
from sandboxes.models import (
    ACTIVE_STATUSES,
    DEFAULT_OUTPUT_DIR,
    EndReason,
    RunStatus,
    SandboxRun,
)
from workspaces.models import Workspace
from workspaces.permissions import Actor

logger = logging.getLogger(__name__)

MAX_DURATION_LIMIT_MS = 24 * 60 * 60 * 1000  # E2B's longest sandbox lifetime
MIN_TIMEOUT_MS = 1000
MAX_METADATA_KEYS = 16
MAX_ENV_VARS = 100
MAX_FILES = 100
PATH_MAX_LENGTH = 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# A touch rewrites last_activity_at at most this often, so polling does not write every time.
TOUCH_MIN_INTERVAL = timedelta(seconds=1)
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024


# --- validation shared by the API and the commands -----------------------------------


def clean_sandbox_path(path: str, *, field: str = "path") -> str:
    """An absolute, normalised path inside the sandbox home: no `..`, no NUL, not too long."""
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{field}: a path is required.", code="invalid_path")
    if "\x00" in path:
        raise InvalidInput(f"{field}: NUL bytes are not allowed in paths.", code="invalid_path")
    if len(path) > PATH_MAX_LENGTH:
        raise InvalidInput(f"{field}: path is longer than {PATH_MAX_LENGTH}.", code="invalid_path")
    if not path.startswith("/"):
        raise InvalidInput(f"{field}: the path must be absolute.", code="invalid_path")
    if ".." in path.split("/"):
        raise InvalidInput(f"{field}: `..` is not allowed in paths.", code="invalid_path")
    normalised = posixpath.normpath(path)
    if normalised != SANDBOX_HOME and not normalised.startswith(SANDBOX_HOME + "/"):
        raise InvalidInput(f"{field}: the path must be under {SANDBOX_HOME}.", code="invalid_path")
    return normalised


def _clean_env(env: dict[str, str] | None, *, field: str = "env") -> dict[str, str]:
    env = env or {}
    if len(env) > MAX_ENV_VARS:
        raise InvalidInput(f"{field}: at most {MAX_ENV_VARS} variables.", code="too_many")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise InvalidInput(f"{field}: {name!r} is not a valid variable name.", code="invalid")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInput(f"{field}: {name} must be a string without NUL.", code="invalid")
    return env


def _clean_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    metadata = metadata or {}
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata: at most {MAX_METADATA_KEYS} keys.", code="too_many")
    for key, value in metadata.items():
        if len(key) > 64:
            raise InvalidInput("metadata: keys are at most 64 characters.", code="invalid")
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise InvalidInput(f"metadata: {key} must be a string, number, boolean or null.")
        if isinstance(value, str) and len(value) > 512:
            raise InvalidInput(f"metadata: {key} is longer than 512 characters.", code="invalid")
    return metadata


def _clean_timeouts(max_duration_ms: int | None, idle_timeout_ms: int | None) -> tuple[int, int]:
    max_duration = max_duration_ms or settings.SANDBOX_DEFAULT_MAX_DURATION_MS
    idle = idle_timeout_ms or settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_MS
    if not MIN_TIMEOUT_MS <= max_duration <= MAX_DURATION_LIMIT_MS:
        raise InvalidInput(
            f"max_duration_ms must be between {MIN_TIMEOUT_MS} and {MAX_DURATION_LIMIT_MS}.",
            code="out_of_range",
        )
    if not MIN_TIMEOUT_MS <= idle <= MAX_DURATION_LIMIT_MS:
        raise InvalidInput(
            f"idle_timeout_ms must be between {MIN_TIMEOUT_MS} and {MAX_DURATION_LIMIT_MS}.",
            code="out_of_range",
        )
    return max_duration, idle


def _fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


# --- transitions ---------------------------------------------------------------------


def logged_as(actor: Actor) -> dict[str, Any]:
    return {"by": actor.user, "description": str(actor)}


def run_transition(run_id: Any, change: Callable[[SandboxRun], None]) -> SandboxRun:
    """Apply one transition to the freshest copy under a row lock; a transition the state
    machine forbids, or one that lost a race, is a Conflict carrying the current status."""
    try:
        with transaction.atomic():
            run = SandboxRun.objects.select_for_update().get(pk=run_id)
            change(run)
            run.save()
            return run
    except (TransitionNotAllowed, ConcurrentTransition) as exc:
        current = SandboxRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        raise Conflict(f"The run is {current}.", code="invalid_state") from exc


def _kill_quietly(run: SandboxRun) -> bool:
    """Kill a run's sandbox after its state is final. A failure here leaks nothing for long:
    reconcile kills sandboxes of terminal runs, and E2B's own deadline still applies."""
    if not run.sandbox_id:
        return True
    try:
        get_backend().kill(run.sandbox_id)
    except BackendError as exc:
        logger.warning("kill failed run=%s sandbox=%s: %s", run.pk, run.sandbox_id, exc)
        return False
    return True


def provider_timeout_s(run: SandboxRun) -> int:
    """How long the sandbox may live from now, its own deadline at the provider: the idle
    timeout plus the push throttle (SANDBOX_KEEPALIVE_MIN_S), never past the run's max
    duration (rounded up to a whole second: providers take whole seconds).

    The margin: activity moves the run's idle deadline on every touch but the sandbox's
    only once per throttle interval; without it a sandbox in use could die before its run
    is idle, and the run would end as sandbox_lost instead of being swept as idle. While
    its command job runs a run is never idle: its sandbox lives until the max duration."""
    remaining = math.ceil(run.remaining_s())
    if run.command_started_at is not None:
        return max(1, remaining)
    idle = math.ceil(run.idle_timeout_ms / 1000 + settings.SANDBOX_KEEPALIVE_MIN_S)
    return max(1, min(idle, remaining))


# --- create --------------------------------------------------------------------------


def run_create(
    *,
    workspace: Workspace,
    actor: Actor,
    thread_id: str,
    prompt: str,
    command: str = "",
    template: str = "",
    env: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    max_duration_ms: int | None = None,
    idle_timeout_ms: int | None = None,
    idempotency_key: str = "",
) -> tuple[SandboxRun, bool]:
    """A new booting run (and its start task, on commit), or the run an earlier request with
    the same Idempotency-Key made. Returns (run, created)."""
    assert actor.user is not None, "runs are started by people or their API keys"
    max_duration, idle = _clean_timeouts(max_duration_ms, idle_timeout_ms)
    if len(files or {}) > MAX_FILES:
        raise InvalidInput(f"files: at most {MAX_FILES} files.", code="too_many")
    fields = {
        "thread_id": thread_id,
        "prompt": prompt,
        "command": command,
        "template": template,
        "env": _clean_env(env),
        "metadata": _clean_metadata(metadata),
        "files": {clean_sandbox_path(p, field="files"): c for p, c in (files or {}).items()},
        "output_dir": clean_sandbox_path(output_dir, field="output_dir"),
        "max_duration_ms": max_duration,
        "idle_timeout_ms": idle,
    }
    fingerprint = _fingerprint(fields) if idempotency_key else ""
    if idempotency_key:
        existing = _run_for_idempotency_key(workspace, idempotency_key, fingerprint)
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            # The row lock serialises run creation per workspace, so the limit holds under
            # concurrent requests.
            Workspace.objects.select_for_update().filter(pk=workspace.pk).first()
            _check_active_limit(workspace)
            run = SandboxRun.objects.create(
                workspace=workspace,
                created_by=actor.user,
                api_key=actor.api_key,
                idempotency_key=idempotency_key,
                request_fingerprint=fingerprint,
                **fields,
            )
            transaction.on_commit(lambda: _enqueue_start(run))
    except IntegrityError:
        existing = _run_for_idempotency_key(workspace, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    logger.info("run created id=%s ws=%s by=%s", run.pk, workspace.pk, actor)
    return run, True


def _run_for_idempotency_key(workspace: Workspace, key: str, fingerprint: str) -> SandboxRun | None:
    existing = SandboxRun.objects.filter(workspace=workspace, idempotency_key=key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise Conflict(
            "This Idempotency-Key was used for a different request.", code="idempotency_mismatch"
        )
    return existing


def _check_active_limit(workspace: Workspace) -> None:
    active = SandboxRun.objects.filter(workspace=workspace, status__in=ACTIVE_STATUSES)
    if active.count() < settings.WORKSPACE_MAX_ACTIVE_RUNS:
        return
    # Retry when the first running run must end at the latest (its idle or max-duration
    # deadline), capped at a minute: most runs end sooner than that.
    first_due = active.aggregate(first=Min("expires_at"))["first"]
    wait_s = (first_due - timezone.now()).total_seconds() if first_due else 60
    retry_after = int(min(max(wait_s, 1), 60))
    raise LimitExceeded(
        f"This workspace already has {settings.WORKSPACE_MAX_ACTIVE_RUNS} active runs.",
        retry_after_s=retry_after,
        code="too_many_active_runs",
    )


def _enqueue_start(run: SandboxRun) -> None:
    from sandboxes.tasks import start_sandbox_run

    start_sandbox_run.delay(str(run.pk))


def _enqueue_command(run: SandboxRun) -> None:
    from sandboxes.tasks import execute_run_command

    limit = math.ceil(run.remaining_s())
    execute_run_command.apply_async(
        args=(str(run.pk),), soft_time_limit=limit + 60, time_limit=limit + 120
    )


# --- boot (start_sandbox_run) --------------------------------------------------------

SYSTEM_START = Actor.system("start_sandbox_run")


def boot_lease() -> timedelta:
    """How long one boot attempt owns a run before another delivery may take over."""
    return timedelta(seconds=min(120, settings.SANDBOX_BOOT_TIMEOUT_S))


def run_boot(*, run_id: str) -> None:
    """booting → sandbox created (or adopted) → sandbox_id saved → running.

    Idempotent: a claim on the row lets one delivery boot at a time, and a sandbox that an
    earlier, crashed attempt created is found by its run_id tag and adopted, never doubled."""
    now = timezone.now()
    claimed = (
        SandboxRun.objects.filter(pk=run_id, status=RunStatus.BOOTING)
        .filter(Q(boot_claimed_at__isnull=True) | Q(boot_claimed_at__lt=now - boot_lease()))
        .update(boot_claimed_at=now)
    )
    if not claimed:
        logger.info("boot skipped run=%s: not booting, or another worker is booting it", run_id)
        return
    run = SandboxRun.objects.get(pk=run_id)
    backend = get_backend()
    tags = sandbox_tags(run_id=str(run.pk), workspace_id=str(run.workspace_id))
    try:
        found = run_sandboxes(backend, str(run.pk))
        if found:
            info = found[0]
            for extra in found[1:]:
                backend.kill(extra.sandbox_id)
            logger.info("boot adopted run=%s sandbox=%s", run.pk, info.sandbox_id)
        else:
            info = backend.create(
                template=run.template or settings.E2B_TEMPLATE,
                metadata=tags,
                envs=run.env,
                timeout_s=provider_timeout_s(run),
            )
    except TransientBackendError:
        SandboxRun.objects.filter(pk=run_id).update(boot_claimed_at=None)  # let the retry in
        raise
    except BackendError as exc:
        run_fail_boot(run_id=run_id, error=exc)
        return

    try:
        run = run_transition(
            run_id,
            lambda r: r.mark_running(
                sandbox_id=info.sandbox_id,
                cpu_count=info.cpu_count,
                memory_mb=info.memory_mb,
                **logged_as(SYSTEM_START),
            ),
        )
    except Conflict:
        # Canceled or timed out while we booted: the new sandbox must not outlive the run.
        logger.info("boot lost the race run=%s; killing sandbox %s", run_id, info.sandbox_id)
        try:
            backend.kill(info.sandbox_id)
        except BackendError as exc:
            logger.warning("kill after lost boot failed sandbox=%s: %s", info.sandbox_id, exc)
        return
    logger.info("run running id=%s sandbox=%s", run.pk, run.sandbox_id)
    if run.command:
        transaction.on_commit(lambda: _enqueue_command(run))


def run_fail_boot(*, run_id: str, error: Exception) -> None:
    """The boot failed for good: record why, and kill whatever sandbox exists for the run."""
    code = getattr(error, "code", "boot_error")
    try:
        run = run_transition(
            run_id,
            lambda r: r.fail(
                reason=EndReason.BOOT_ERROR,
                error={"code": code, "message": str(error)[:2000]},
                **logged_as(SYSTEM_START),
            ),
        )
    except Conflict:
        return
    logger.warning("boot failed run=%s: %s", run_id, error)
    try:
        kill_run_sandboxes(get_backend(), str(run.pk))
    except BackendError as exc:
        logger.warning("cleanup after boot failure run=%s: %s (reconcile will retry)", run_id, exc)


# --- the command job -----------------------------------------------------------------

SYSTEM_JOB = Actor.system("execute_run_command")
MAX_DURATION_ERROR = {
    "code": "max_duration",
    "message": "The command ran past the run's max duration.",
}


def run_execute_command(*, run_id: str) -> None:
    """Upload `files`, run `command` until the run's max duration, keep its outputs as
    pending artifacts, then end the run (succeeded on exit 0) and kill the sandbox.

    Runs once: the claim on command_started_at makes a repeated message a no-op, and a
    command is never retried (it may not be safe to run twice)."""
    now = timezone.now()
    claimed = (
        SandboxRun.objects.filter(
            pk=run_id, status=RunStatus.RUNNING, command_started_at__isnull=True
        )
        .exclude(command="")
        .update(command_started_at=now, last_activity_at=now)
    )
    if not claimed:
        return
    run = SandboxRun.objects.get(pk=run_id)
    backend = get_backend()
    # From here the job holds the run until its max duration: neither the sweep's idle check
    # nor the sandbox's own idle deadline may end it while the command runs.
    SandboxRun.objects.filter(pk=run_id).update(
        expires_at=run.sweep_due()[0], deadline_pushed_at=now
    )
    try:
        backend.set_timeout(run.sandbox_id, provider_timeout_s(run))
    except BackendError as exc:
        logger.warning("deadline push before the command failed run=%s: %s", run_id, exc)
    result: CommandResult | None = None
    outcome: Callable[[SandboxRun], None]
    try:
        for path, content in run.files.items():
            backend.write_file(run.sandbox_id, path, content.encode())
        result = backend.run(
            run.sandbox_id,
            run.command,
            timeout_s=max(1.0, run.remaining_s()),
            cwd=SANDBOX_HOME,
            max_output_bytes=settings.EXEC_MAX_OUTPUT_BYTES,
        )
    except CommandTimeout as exc:
        result = CommandResult(-1, exc.stdout, exc.stderr, False, int(run.remaining_s() * 1000))
        outcome = _failing(EndReason.MAX_DURATION, MAX_DURATION_ERROR)
    except SandboxNotFound as exc:
        if run.remaining_s() <= 0:  # the sandbox's own deadline, which is the run's, came first
            outcome = _failing(EndReason.MAX_DURATION, MAX_DURATION_ERROR)
        else:
            outcome = _failing(EndReason.SANDBOX_LOST, {"code": exc.code, "message": str(exc)})
    except BackendError as exc:
        outcome = _failing(EndReason.COMMAND_FAILED, {"code": exc.code, "message": str(exc)})
    else:
        if result.exit_code == 0:
            outcome = lambda r: r.succeed(exit_code=0, **logged_as(SYSTEM_JOB))  # noqa: E731
        else:
            error = {"code": "command_failed", "message": f"exit code {result.exit_code}"}
            outcome = _failing(EndReason.COMMAND_FAILED, error, exit_code=result.exit_code)

    _capture_outputs(run, result)
    try:
        run = run_transition(run_id, outcome)
    except Conflict:
        logger.info("command finished after the run ended run=%s", run_id)
        run.refresh_from_db()
    _kill_quietly(run)


def _failing(
    reason: str, error: dict[str, str], exit_code: int | None = None
) -> Callable[[SandboxRun], None]:
    return lambda r: r.fail(
        reason=reason, error=error, exit_code=exit_code, **logged_as(SYSTEM_JOB)
    )


def _capture_outputs(run: SandboxRun, result: CommandResult | None) -> None:
    """The log and every file under output_dir become pending artifacts (artifacts app)."""
    try:
        from artifacts.services import capture_run_outputs
    except ImportError:  # the artifacts app arrives with the review console
        return
    capture_run_outputs(run=run, result=result)


# --- calls on a running run ----------------------------------------------------------


def run_touch(*, run: SandboxRun) -> None:
    """Record activity, and push the sandbox's own deadline forward (throttled).

    Both are checked on the copy in hand first, so repeated touches within the throttles
    cost no query; the conditional UPDATEs keep concurrent requests from pushing twice."""
    if run.status != RunStatus.RUNNING:
        return
    now = timezone.now()
    if now - run.last_activity_at >= TOUCH_MIN_INTERVAL:
        run.last_activity_at = now
        SandboxRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
            last_activity_at=now, expires_at=run.sweep_due()[0]
        )
    keepalive = timedelta(seconds=settings.SANDBOX_KEEPALIVE_MIN_S)
    if run.deadline_pushed_at is not None and now - run.deadline_pushed_at < keepalive:
        return
    pushed = (
        SandboxRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING)
        .filter(Q(deadline_pushed_at__isnull=True) | Q(deadline_pushed_at__lte=now - keepalive))
        .update(deadline_pushed_at=now)
    )
    run.deadline_pushed_at = now
    if pushed and run.sandbox_id:
        try:
            get_backend().set_timeout(run.sandbox_id, provider_timeout_s(run))
        except BackendError as exc:
            logger.warning("deadline push failed run=%s: %s", run.pk, exc)


def _require_running(run: SandboxRun) -> None:
    if run.status != RunStatus.RUNNING:
        raise Conflict(f"The run is {run.status}, not running.", code="invalid_state")


def _lost(run: SandboxRun, exc: SandboxNotFound) -> Conflict:
    """The sandbox vanished under a running run: the run fails as sandbox_lost."""
    with contextlib.suppress(Conflict):  # it ended otherwise meanwhile
        run_transition(
            run.pk,
            lambda r: r.fail(
                reason=EndReason.SANDBOX_LOST,
                error={"code": exc.code, "message": str(exc)},
                **logged_as(Actor.system("sandbox_lost")),
            ),
        )
    return Conflict("The sandbox is gone; the run has failed.", code="sandbox_lost")


def _backend_call(run: SandboxRun, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except CommandTimeout:
        raise
    except SandboxNotFound as exc:
        raise _lost(run, exc) from exc
    except SandboxFileNotFound as exc:
        raise NotFound("No such file in the sandbox.", code="file_not_found") from exc
    except TransientBackendError as exc:
        raise ServiceUnavailable(f"The sandbox backend is unavailable: {exc}") from exc
    except BackendError as exc:
        raise InvalidInput(str(exc), code=exc.code) from exc


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_ms: int


def run_exec(
    *,
    run: SandboxRun,
    actor: Actor,
    command: str,
    timeout_s: float | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> ExecResult:
    _require_running(run)
    remaining = run.remaining_s()
    if timeout_s is None:
        timeout_s = min(60.0, remaining)
    elif timeout_s > remaining:
        raise InvalidInput(
            f"timeout_s is longer than the run's remaining time ({int(remaining)} s).",
            code="timeout_too_long",
        )
    cwd = clean_sandbox_path(cwd, field="cwd") if cwd else SANDBOX_HOME
    env = _clean_env(env)
    run_touch(run=run)
    started = time.monotonic()
    try:
        result: CommandResult = _backend_call(
            run,
            lambda: get_backend().run(
                run.sandbox_id,
                command,
                timeout_s=timeout_s,
                cwd=cwd,
                envs=env,
                max_output_bytes=settings.EXEC_MAX_OUTPUT_BYTES,
            ),
        )
    except CommandTimeout as exc:
        elapsed = int((time.monotonic() - started) * 1000)
        return ExecResult(None, exc.stdout, exc.stderr, False, True, elapsed)
    finally:
        run_touch(run=run)
    return ExecResult(
        result.exit_code, result.stdout, result.stderr, result.truncated, False, result.duration_ms
    )


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


def run_upload_file(*, run: SandboxRun, actor: Actor, path: str, stream: Readable) -> int:
    _require_running(run)
    path = clean_sandbox_path(path)
    spool = spool_upload(stream, limit=settings.UPLOAD_MAX_BYTES)
    try:
        size = spool.seek(0, 2)
        spool.seek(0)
        _backend_call(run, lambda: get_backend().write_file(run.sandbox_id, path, spool))
    finally:
        spool.close()
    run_touch(run=run)
    return size


def run_download_file(
    *, run: SandboxRun, actor: Actor, path: str, chunk_size: int = 64 * 1024
) -> Iterator[bytes]:
    _require_running(run)
    path = clean_sandbox_path(path)
    run_touch(run=run)
    chunks = _backend_call(
        run, lambda: get_backend().read_file(run.sandbox_id, path, chunk_size=chunk_size)
    )
    # read_file raises not-found before its first chunk: pull it now, inside the mapping.
    first = _backend_call(run, lambda: next(chunks, b""))

    def stream() -> Iterator[bytes]:
        yield first
        yield from chunks

    return stream()


def run_list_files(*, run: SandboxRun, actor: Actor, path: str) -> list[FileEntry]:
    _require_running(run)
    path = clean_sandbox_path(path)
    run_touch(run=run)
    return list(_backend_call(run, lambda: get_backend().list_files(run.sandbox_id, path)))


# --- ending a run --------------------------------------------------------------------


def run_complete(
    *, run: SandboxRun, actor: Actor, status: str, error: dict[str, str] | None = None
) -> SandboxRun:
    """The agent says it is done: the run succeeds or fails, and the sandbox is killed."""
    if status == RunStatus.SUCCEEDED:
        run = run_transition(run.pk, lambda r: r.succeed(**logged_as(actor)))
    elif status == RunStatus.FAILED:
        error = error or {"code": "failed", "message": "Marked failed by the client."}
        run = run_transition(
            run.pk,
            lambda r: r.fail(reason=EndReason.COMMAND_FAILED, error=error, **logged_as(actor)),
        )
    else:
        raise InvalidInput("status must be succeeded or failed.", code="invalid_choice")
    _kill_quietly(run)
    return run


def run_cancel(
    *, run: SandboxRun, actor: Actor, reason: str = EndReason.CANCELED_BY_USER
) -> SandboxRun:
    """→ canceled and the sandbox killed; also while booting (the boot then kills what it
    made). Canceling a canceled run is a no-op; a run that ended otherwise is a 409."""
    if run.status == RunStatus.CANCELED:
        return run
    run = run_transition(run.pk, lambda r: r.cancel(reason=reason, **logged_as(actor)))
    logger.info("run canceled id=%s by=%s", run.pk, actor)
    _kill_quietly(run)
    return run


def workspace_runs_cancel(*, workspace: Workspace, actor: Actor) -> int:
    """Cancel every active run of a workspace (before the workspace is deleted)."""
    canceled = 0
    for run in SandboxRun.objects.filter(workspace=workspace, status__in=ACTIVE_STATUSES):
        with contextlib.suppress(Conflict):  # it may have ended on its own meanwhile
            run_cancel(run=run, actor=actor)
            canceled += 1
    return canceled

"""A run's life: create, boot, touch, complete, cancel. Calls to the sandbox backend happen
outside database transactions; state changes go through the SandboxRun transitions, which
record themselves on the trail with the actor (`by=`).

What runs inside a running sandbox (exec, files, commands) lives in `sandboxes.execution`; the
command job, which also captures the run's outputs as artifacts, in `artifacts.jobs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Min, Q
from django.utils import timezone
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from config.exceptions import (
    AirlockError,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ServiceUnavailable,
)
from sandboxes import validation
from sandboxes.backends import (
    BackendError,
    NetworkPolicy,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxPaused,
    TransientBackendError,
    UnsupportedOption,
    get_backend,
    kill_run_sandboxes,
    run_sandboxes,
    sandbox_tags,
)
from sandboxes.models import (
    ACTIVE_STATUSES,
    DEFAULT_OUTPUT_DIR,
    LIVE_STATUSES,
    EndReason,
    OnIdle,
    RunStatus,
    SandboxRun,
)
from workspaces import events
from workspaces.access import Actor
from workspaces.models import EventType, Workspace

logger = logging.getLogger(__name__)

# A touch rewrites last_activity_at at most this often, so a busy run does not write every call.
TOUCH_MIN_INTERVAL = timedelta(seconds=1)
# What each system task acts as, on the trail.
SYSTEM_START = Actor.system("start_sandbox_run")
# Tasks are enqueued by name: the task modules import the services, never the reverse. The
# command job runs the run's command and captures its outputs as artifacts, so it lives in the
# artifacts app (sandboxes never imports artifacts).
START_TASK = "sandboxes.tasks.start_sandbox_run"
COMMAND_JOB_TASK = "artifacts.tasks.execute_run_command"
# Event data keeps the start of long texts: the trail is metadata, the row has the whole text.
TRAIL_TEXT_CHARS = 2000


# --- transitions ---------------------------------------------------------------------

SYSTEM_SANDBOX_LOST = Actor.system("sandbox_lost")


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


def as_api_error(exc: BackendError) -> AirlockError:
    """A backend error as callers see it. Nothing here changes the run's state. A sandbox
    paused under a call (the sweep paused the idle run as the call came in) is a 409: the
    next call resumes it."""
    if isinstance(exc, SandboxFileNotFound):
        return NotFound("No such file in the sandbox.", code="file_not_found")
    if isinstance(exc, SandboxNotFound):
        return Conflict("The sandbox is gone.", code="sandbox_lost")
    if isinstance(exc, SandboxPaused):
        return Conflict(
            "The run was paused during the call; call again to resume it.", code="run_paused"
        )
    if isinstance(exc, TransientBackendError):
        return ServiceUnavailable(f"The sandbox backend is unavailable: {exc}")
    return InvalidInput(str(exc), code=exc.code)


def run_lose_sandbox(*, run: SandboxRun, error: SandboxNotFound) -> str:
    """The sandbox vanished under a live run: the run fails (unless it ended otherwise
    meanwhile) as max_duration when its deadline has come — a sandbox ends at its own
    deadline, which is the run's, and a call arriving just then finds it gone — and as
    sandbox_lost otherwise. Returns the end reason."""
    if run.remaining_s() <= 0:
        reason = EndReason.MAX_DURATION
        failure = {
            "code": "max_duration",
            "message": f"The run passed its max duration of {run.max_duration_ms / 1000:g} s.",
        }
    else:
        reason = EndReason.SANDBOX_LOST
        failure = {"code": error.code, "message": str(error)}
    with contextlib.suppress(Conflict):
        run_transition(
            run.pk, lambda r: r.fail(reason=reason, error=failure, by=SYSTEM_SANDBOX_LOST)
        )
    return reason


# What ends with a run, just before its sandbox is killed (its background commands:
# sandboxes.background registers them in SandboxesConfig.ready).
_run_end_hooks: list[Callable[[SandboxRun], None]] = []


def on_run_end(hook: Callable[[SandboxRun], None]) -> None:
    _run_end_hooks.append(hook)


def kill_sandbox_quietly(run: SandboxRun) -> bool:
    """Kill a run's sandbox after its state is final. A failure here leaks nothing for long:
    reconcile kills sandboxes of terminal runs, and E2B's own deadline still applies."""
    if not run.sandbox_id:
        return True
    for hook in _run_end_hooks:
        try:
            hook(run)
        except Exception:  # the kill matters more: what a hook missed, its own check finds
            logger.exception("run end hook %s failed run=%s", hook, run.pk)
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


def trail_text(text: str) -> str:
    return text if len(text) <= TRAIL_TEXT_CHARS else text[:TRAIL_TEXT_CHARS] + "…"


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
    on_idle: str | None = None,
    network: dict[str, Any] | None = None,
    idempotency_key: str = "",
) -> tuple[SandboxRun, bool]:
    """A new booting run (and its start task, on commit), or the run an earlier request with
    the same Idempotency-Key made. Returns (run, created)."""
    assert actor.user is not None, "runs are started by people or their API keys"
    max_duration, idle = validation.clean_timeouts(max_duration_ms, idle_timeout_ms)
    fields = {
        "thread_id": thread_id,
        "prompt": prompt,
        "command": command,
        "template": template,
        "env": validation.clean_env(env),
        "metadata": validation.clean_metadata(metadata),
        "files": validation.clean_files(files),
        "output_dir": validation.clean_sandbox_path(output_dir, field="output_dir"),
        "max_duration_ms": max_duration,
        "idle_timeout_ms": idle,
    }
    fields["on_idle"] = idle_choice = validation.clean_on_idle(on_idle)
    fields["network"] = rules = validation.clean_network(network)
    check_backend_options(idle_choice, rules, explicit_on_idle=bool(on_idle))
    if fields["files"] and not command:
        raise InvalidInput(
            "`files` are written before the run's `command`, and this run has none: upload "
            "files into an interactive run with PUT runs/{id}/files/?path=.",
            code="files_need_command",
        )
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
            events.record(
                actor=actor, type=EventType.RUN_CREATED, subject=run, data=_created_data(run)
            )
            # The run row is the outbox: committed with start_enqueued_at set, and sent after
            # the commit. A send that fails clears it (the next sweep sends it), one that never
            # happened (the process died) is sent again once it is overdue
            # (`runs_start_unclaimed`): never lost, never a second run.
            transaction.on_commit(lambda: _enqueue_start(run))
    except IntegrityError:
        existing = _run_for_idempotency_key(workspace, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    return run, True


def _created_data(run: SandboxRun) -> dict[str, Any]:
    """What run.created records: the request, without env values or file contents."""
    return {
        "thread_id": run.thread_id,
        "prompt": trail_text(run.prompt),
        "command": trail_text(run.command),
        "template": run.template,
        "metadata": run.metadata,
        "env_names": sorted(run.env),
        "files": sorted(run.files),
        "output_dir": run.output_dir,
        "max_duration_ms": run.max_duration_ms,
        "idle_timeout_ms": run.idle_timeout_ms,
        "on_idle": run.on_idle,
        "network": run.network,
    }


def _fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


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


# How a start is sent: a broker that is down costs the request about a second, not the
# default's retries, and the run is accepted anyway (the sweep sends its start later).
START_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}


def _enqueue_start(run: SandboxRun) -> bool:
    """Send the run's start task; False (and start_enqueued_at cleared, so that the next sweep
    sends it) when the broker cannot take it. Never raises: the run is committed already."""
    try:
        current_app.send_task(
            START_TASK, args=(str(run.pk),), retry=True, retry_policy=START_RETRY_POLICY
        )
    except Exception as exc:  # kombu's OperationalError, a socket error, a timeout …
        logger.warning("start of run %s not enqueued (%s); the sweep will send it", run.pk, exc)
        SandboxRun.objects.filter(pk=run.pk, status=RunStatus.BOOTING).update(
            start_enqueued_at=None
        )
        return False
    return True


def start_overdue_after() -> timedelta:
    """How long a sent start may wait unclaimed before the sweep sends it again: a message
    lost with a process that died. Longer than a queue backlog usually is (a start sent again
    while the first still waits is a no-op, but it lengthens the queue)."""
    return timedelta(seconds=max(60, 2 * settings.SANDBOX_SWEEP_INTERVAL_S))


def runs_start_unclaimed(now: datetime) -> list[SandboxRun]:
    """Booting runs no worker has claimed whose start was never sent (the broker was down)
    or is overdue, within the boot timeout (past it, the sweep fails them)."""
    boot_deadline = now - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_S)
    return list(
        SandboxRun.objects.filter(
            status=RunStatus.BOOTING, boot_claimed_at__isnull=True, created_at__gte=boot_deadline
        )
        .filter(
            Q(start_enqueued_at__isnull=True) | Q(start_enqueued_at__lt=now - start_overdue_after())
        )
        .order_by("created_at")
        .only("id", "status", "created_at", "start_enqueued_at")[:1000]
    )


def run_start_resend(*, run: SandboxRun, now: datetime) -> bool:
    """Send a booting run's start again (the sweep): claimed first with a conditional update,
    so overlapping sweeps send it once."""
    claimed = SandboxRun.objects.filter(
        pk=run.pk,
        status=RunStatus.BOOTING,
        boot_claimed_at__isnull=True,
        start_enqueued_at=run.start_enqueued_at,
    ).update(start_enqueued_at=now)
    return bool(claimed) and _enqueue_start(run)


def _enqueue_command_job(run: SandboxRun) -> bool:
    """Send a running run's command job; like the start, a broker that cannot take it
    clears start_enqueued_at for the sweep to send it, and nothing is raised."""
    limit = math.ceil(run.remaining_s())
    try:
        current_app.send_task(
            COMMAND_JOB_TASK,
            args=(str(run.pk),),
            soft_time_limit=limit + 60,
            time_limit=limit + 120,
            retry=True,
            retry_policy=START_RETRY_POLICY,
        )
    except Exception as exc:  # as in _enqueue_start
        logger.warning("job of run %s not enqueued (%s); the sweep will send it", run.pk, exc)
        SandboxRun.objects.filter(
            pk=run.pk, status=RunStatus.RUNNING, command_started_at__isnull=True
        ).update(start_enqueued_at=None)
        return False
    return True


def runs_job_unclaimed(now: datetime) -> list[SandboxRun]:
    """Running runs with a command whose job no worker has claimed, and whose job was never
    sent (the broker was down when they started) or is overdue."""
    return list(
        SandboxRun.objects.filter(status=RunStatus.RUNNING, command_started_at__isnull=True)
        .exclude(command="")
        .filter(
            Q(start_enqueued_at__isnull=True) | Q(start_enqueued_at__lt=now - start_overdue_after())
        )
        .order_by("running_at")[:1000]
    )


def run_job_resend(*, run: SandboxRun, now: datetime) -> bool:
    """Send a running run's command job again (the sweep), claimed like run_start_resend."""
    claimed = SandboxRun.objects.filter(
        pk=run.pk,
        status=RunStatus.RUNNING,
        command_started_at__isnull=True,
        start_enqueued_at=run.start_enqueued_at,
    ).update(start_enqueued_at=now)
    return bool(claimed) and _enqueue_command_job(run)


# --- boot (start_sandbox_run) --------------------------------------------------------


def boot_lease() -> timedelta:
    """How long one boot attempt owns a run before another delivery may take over."""
    return timedelta(seconds=min(120, settings.SANDBOX_BOOT_TIMEOUT_S))


def run_boot(*, run_id: str) -> None:
    """booting → sandbox created (or adopted) → sandbox_id saved → running.

    Idempotent: a claim on the row lets one delivery boot at a time, and a sandbox that an
    earlier, crashed attempt created is found by its run_id tag and adopted, never doubled."""
    now = timezone.now()
    boot_deadline = now - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_S)
    claimed = (
        SandboxRun.objects.filter(
            pk=run_id, status=RunStatus.BOOTING, created_at__gte=boot_deadline
        )
        .filter(Q(boot_claimed_at__isnull=True) | Q(boot_claimed_at__lt=now - boot_lease()))
        .update(boot_claimed_at=now)
    )
    if not claimed:
        if SandboxRun.objects.filter(
            pk=run_id, status=RunStatus.BOOTING, created_at__lt=boot_deadline
        ).exists():
            # A start that arrives after the boot timeout (its worker was down) boots nothing:
            # the run fails as the sweep would have failed it.
            run_fail_boot_timeout(run_id=run_id, by=SYSTEM_START)
            return
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
                network=network_policy(run.network),
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
                by=SYSTEM_START,
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
        transaction.on_commit(lambda: _enqueue_command_job(run))


def boot_timeout_error() -> dict[str, str]:
    return {
        "code": "boot_timeout",
        "message": f"The sandbox did not start within {settings.SANDBOX_BOOT_TIMEOUT_S} s.",
    }


def fail_boot_timeout(run: SandboxRun, by: Actor) -> None:
    """The transition of a run still booting past the boot timeout (the sweep's and a late
    start task's)."""
    if run.status != RunStatus.BOOTING:  # it started meanwhile: no longer a boot timeout
        raise TransitionNotAllowed(f"the run is {run.status}")
    run.fail(reason=EndReason.BOOT_TIMEOUT, error=boot_timeout_error(), by=by)


def run_fail_boot_timeout(*, run_id: str, by: Actor) -> None:
    try:
        run_transition(run_id, lambda r: fail_boot_timeout(r, by))
    except Conflict:
        return
    logger.warning("boot timed out run=%s: its start came after the boot timeout", run_id)
    try:
        kill_run_sandboxes(get_backend(), str(run_id))
    except BackendError as exc:
        logger.warning("cleanup after boot timeout run=%s: %s (reconcile will)", run_id, exc)


def run_fail_boot(*, run_id: str, error: Exception) -> None:
    """The boot failed for good: record why, and kill whatever sandbox exists for the run."""
    code = getattr(error, "code", "boot_error")
    try:
        run = run_transition(
            run_id,
            lambda r: r.fail(
                reason=EndReason.BOOT_ERROR,
                error={"code": code, "message": str(error)[:2000]},
                by=SYSTEM_START,
            ),
        )
    except Conflict:
        return
    logger.warning("boot failed run=%s: %s", run_id, error)
    try:
        kill_run_sandboxes(get_backend(), str(run.pk))
    except BackendError as exc:
        logger.warning("cleanup after boot failure run=%s: %s (reconcile will retry)", run_id, exc)


# --- activity ------------------------------------------------------------------------


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


# --- ending a run --------------------------------------------------------------------


def run_complete(
    *, run: SandboxRun, actor: Actor, status: str, error: dict[str, str] | None = None
) -> SandboxRun:
    """The agent says it is done: the run succeeds or fails, and the sandbox is killed."""
    if status == RunStatus.SUCCEEDED:
        run = run_transition(run.pk, lambda r: r.succeed(by=actor))
    elif status == RunStatus.FAILED:
        error = error or {"code": "failed", "message": "Marked failed by the client."}
        run = run_transition(
            run.pk, lambda r: r.fail(reason=EndReason.COMMAND_FAILED, error=error, by=actor)
        )
    else:
        raise InvalidInput("status must be succeeded or failed.", code="invalid_choice")
    kill_sandbox_quietly(run)
    return run


def run_cancel(
    *, run: SandboxRun, actor: Actor, reason: str = EndReason.CANCELED_BY_USER
) -> SandboxRun:
    """→ canceled and the sandbox killed; also while booting (the boot then kills what it
    made). Canceling a canceled run is a no-op; a run that ended otherwise is a 409."""
    if run.status == RunStatus.CANCELED:
        return run
    try:
        run = run_transition(run.pk, lambda r: r.cancel(reason=reason, by=actor))
    except Conflict:
        # Lost a race: a concurrent cancel that won leaves nothing to do (and kills the
        # sandbox itself); any other end is the 409.
        current = SandboxRun.objects.get(pk=run.pk)
        if current.status == RunStatus.CANCELED:
            return current
        raise
    kill_sandbox_quietly(run)
    return run


def workspace_runs_cancel(workspace: Workspace, actor: Actor) -> None:
    """Cancel every active run of a workspace about to be deleted (a workspace delete hook,
    registered in SandboxesConfig.ready)."""
    for run in SandboxRun.objects.filter(workspace=workspace, status__in=LIVE_STATUSES):
        with contextlib.suppress(Conflict):  # it may have ended on its own meanwhile
            run_cancel(run=run, actor=actor)


# --- pause and resume (SPEC §15) -----------------------------------------------------


SYSTEM_RESUME = Actor.system("resume")


def network_policy(network: dict[str, Any]) -> NetworkPolicy:
    """A run's `network` (validation.clean_network's shape) as the backends take it."""
    return NetworkPolicy(
        internet=bool(network.get("internet", False)),
        allow_out=tuple(network.get("allow_out") or ()),
        deny_out=tuple(network.get("deny_out") or ()),
    )


def check_backend_options(
    on_idle: str, network: dict[str, Any], *, explicit_on_idle: bool = True
) -> None:
    """What the backend cannot do is refused when the run is created (a 400 naming the
    backend), never silently ignored: a network it cannot enforce, a pause it cannot make."""
    backend = get_backend()
    try:
        backend.check_network(network_policy(network))
    except UnsupportedOption as exc:
        raise InvalidInput(f"network: {exc}.", code=exc.code) from exc
    if on_idle == OnIdle.PAUSE and not backend.supports_pause:
        source = "" if explicit_on_idle else " (SANDBOX_DEFAULT_ON_IDLE)"
        raise InvalidInput(
            f'on_idle: "pause"{source}: the {backend.name} backend cannot pause sandboxes here.',
            code=UnsupportedOption.code,
        )


def run_pause(*, run: SandboxRun, actor: Actor) -> SandboxRun:
    """running → paused: the sandbox is paused (processes, memory and files kept), then the
    run. Billed nothing while paused, outside the active-run limit, still ended by its max
    duration. Pausing a paused run is a no-op; a job run (started with `command`) is a 409:
    its job holds the sandbox until it ends the run."""
    if run.status == RunStatus.PAUSED:
        return run
    if run.status != RunStatus.RUNNING:
        raise Conflict(f"The run is {run.status}, not running.", code="invalid_state")
    backend = get_backend()
    if not backend.supports_pause:
        raise InvalidInput(
            f"The {backend.name} backend cannot pause sandboxes here.",
            code=UnsupportedOption.code,
        )
    if run.command:
        # Its command job holds the sandbox from boot to the run's end (it ends the run).
        raise Conflict(
            "A run started with `command` is not paused: its job holds it until it ends.",
            code="command_running",
        )
    _backend_pause(run)
    return run_transition(run.pk, lambda r: r.pause(by=actor))


def _backend_pause(run: SandboxRun) -> None:
    try:
        get_backend().pause(run.sandbox_id)
    except SandboxNotFound as exc:
        run_lose_sandbox(run=run, error=exc)
        raise Conflict("The sandbox is gone; the run has failed.", code="sandbox_lost") from exc
    except BackendError as exc:
        raise as_api_error(exc) from exc


def run_resume(*, run: SandboxRun, actor: Actor) -> SandboxRun:
    """paused → running: the run first (it counts toward WORKSPACE_MAX_ACTIVE_RUNS again, so
    a full workspace is a 429), then its sandbox, which then lives for the run's idle
    timeout. Resuming a running run is a no-op. A sandbox that cannot be resumed leaves the
    run paused (a transient error) or fails it (sandbox_lost)."""
    if run.status == RunStatus.RUNNING:
        return run
    if run.status != RunStatus.PAUSED:
        raise Conflict(f"The run is {run.status}, not paused.", code="invalid_state")
    resumed_here = True
    try:
        with transaction.atomic():
            Workspace.objects.select_for_update().filter(pk=run.workspace_id).first()
            locked = SandboxRun.objects.select_for_update().get(pk=run.pk)
            if locked.status == RunStatus.PAUSED:
                _check_active_limit(locked.workspace)
            locked.resume(by=actor)
            locked.save()
    except (TransitionNotAllowed, ConcurrentTransition) as exc:
        current = SandboxRun.objects.filter(pk=run.pk).values_list("status", flat=True).first()
        if current != RunStatus.RUNNING:
            raise Conflict(f"The run is {current}.", code="invalid_state") from exc
        # A concurrent call resumed the run first; its sandbox may not be resumed yet, and
        # resuming a running sandbox changes nothing: this call makes sure too.
        locked, resumed_here = SandboxRun.objects.get(pk=run.pk), False
    run = locked
    try:
        get_backend().resume(run.sandbox_id, timeout_s=provider_timeout_s(run))
    except SandboxNotFound as exc:
        run_lose_sandbox(run=run, error=exc)
        raise Conflict("The sandbox is gone; the run has failed.", code="sandbox_lost") from exc
    except BackendError as exc:
        if resumed_here:  # the sandbox is still paused: so is the run
            with contextlib.suppress(Conflict):
                run_transition(run.pk, lambda r: r.pause(by=SYSTEM_RESUME))
        raise as_api_error(exc) from exc
    logger.info("run resumed id=%s sandbox=%s", run.pk, run.sandbox_id)
    return run


def run_ensure_running(*, run: SandboxRun, actor: Actor) -> SandboxRun:
    """What every call that works in the sandbox starts with: a paused run is resumed within
    the call (SPEC §15); any other state than running is a 409."""
    if run.status == RunStatus.PAUSED:
        run = run_resume(run=run, actor=actor)
    if run.status != RunStatus.RUNNING:
        raise Conflict(f"The run is {run.status}, not running.", code="invalid_state")
    return run

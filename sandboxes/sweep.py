"""The sweep (SPEC §6): end runs that are idle, past their max duration or stuck booting.
Reconcile, its companion, is `sandboxes.reconcile`.

Both run from beat (config/celery.py) through thin tasks, and from the operator commands,
which are dry runs unless told otherwise. Calls to the backend happen outside database
transactions, on a bounded thread pool; the worker threads only ever talk to the backend,
never to the database, so every query runs on the calling thread's connection. Every state
change goes through the SandboxRun transitions, on the trail as `system:sweep`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from config.exceptions import Conflict
from sandboxes import maintenance
from sandboxes.backends import (
    BackendError,
    SandboxBackend,
    SandboxNotFound,
    get_backend,
    kill_run_sandboxes,
)
from sandboxes.execution import job_lose_worker, jobs_with_lapsed_lease
from sandboxes.models import SANDBOX_STATUSES, EndReason, OnIdle, RunStatus, SandboxRun
from sandboxes.services import (
    fail_boot_timeout,
    provider_timeout_s,
    run_job_resend,
    run_start_resend,
    run_transition,
    runs_job_unclaimed,
    runs_start_unclaimed,
)
from workspaces.access import Actor

logger = logging.getLogger(__name__)

SYSTEM_SWEEP = Actor.system("sweep")

# Runs claimed per round trip. Each batch is killed before the next is claimed, so a sweep
# never holds more claims than it is about to act on.
BATCH_SIZE = 1000
# How long a claim stands. A failed kill releases its claim at once; this only matters when
# the sweeping worker died mid-batch, and then the next sweep after it takes over.
CLAIM_LEASE = timedelta(minutes=10)
# Killed runs ended per transaction.
ENDING_BATCH_SIZE = 100
# A sweep stops claiming new batches after this long (its task's soft time limit is longer):
# what is left is the next sweep's, and the beat schedule runs one every interval.
TIME_BUDGET_S = 120.0

# Only the fields the sweep reads: the rows are never saved (transitions reload their run).
_SWEEP_FIELDS = (
    "id", "status", "sandbox_id", "created_at", "max_duration_ms", "last_activity_at",
    "idle_timeout_ms", "command_started_at", "expires_at", "sweep_claimed_at", "on_idle",
    "paused_at",
)  # fmt: skip


@dataclass(frozen=True)
class Action:
    """What the sweep or reconcile did (or, in a dry run, would do) to one run or sandbox."""

    outcome: str  # killed, failed, lost, error, skipped, or "would …" in a dry run
    reason: str  # an EndReason, or why a sandbox is an orphan
    run_id: str = ""
    sandbox_id: str = ""
    detail: str = ""

    def __str__(self) -> str:
        parts = [self.outcome, self.reason]
        if self.run_id:
            parts.append(f"run={self.run_id}")
        if self.sandbox_id:
            parts.append(f"sandbox={self.sandbox_id}")
        if self.detail:
            parts.append(f"({self.detail})")
        return " ".join(parts)


@dataclass
class SweepReport:
    """`killed`: running runs ended after their sandbox was killed or found gone (idle →
    canceled, max duration → failed). `failed`: booting runs failed by the boot timeout.
    `errors`: kills that failed (the run stays running, claimed by nobody, for the next
    sweep) and sandboxes of boot-timed-out runs that could not be killed (reconcile will)."""

    killed: int = 0
    failed: int = 0
    errors: int = 0
    paused: int = 0  # idle runs with on_idle "pause": their sandboxes paused, not killed
    reaped: int = 0  # local sandboxes the backend destroyed because their own timeout passed
    resent: int = 0  # start tasks and command jobs sent again (never sent, or lost)
    actions: list[Action] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "killed": self.killed,
            "failed": self.failed,
            "paused": self.paused,
            "errors": self.errors,
        }


# --- sweep ---------------------------------------------------------------------------


def sandboxes_sweep(*, dry_run: bool = False) -> SweepReport:
    """End what is due: running runs idle past their own idle timeout (kill → canceled /
    idle_timeout) or past their max duration (kill → failed / max_duration), and booting runs
    past SANDBOX_BOOT_TIMEOUT_S (→ failed / boot_timeout, and any sandbox made for them
    killed). Safe to run concurrently with itself: a run is claimed before its sandbox is
    killed, and overlapping sweeps skip claimed runs."""
    now = timezone.now()
    report = SweepReport()
    if dry_run:
        _plan_sweep(now, report)
        return report
    backend = get_backend()
    # Local sandboxes have no provider to end them at their own timeout: the sweep is it.
    report.reaped = backend.reap_expired()
    started = time.monotonic()
    with sweep_pool() as pool:
        _fail_stuck_boots(now, backend, pool, report)
        _resend_unclaimed_starts(now, report)
        _end_jobs_of_lost_workers(now, report)
        while time.monotonic() - started < TIME_BUDGET_S:
            claimed, seen = _claim_due_runs(now)
            to_pause = [(run, why) for run, why in claimed if _pauses(run, why, backend)]
            _pause_idle_runs(to_pause, backend, pool, report)
            to_end = [(run, why) for run, why in claimed if not _pauses(run, why, backend)]
            _end_due_runs(to_end, backend, pool, report)
            if seen < BATCH_SIZE:
                break
    logger.info(
        "sweep: killed=%d failed=%d paused=%d errors=%d reaped=%d resent=%d",
        report.killed, report.failed, report.paused, report.errors, report.reaped, report.resent,
    )  # fmt: skip
    maintenance.pass_count("sweep", report)
    return report


def _due_running(now: datetime) -> QuerySet[SandboxRun]:
    """Running and paused runs past their `expires_at` that no live sweep has claimed: range
    scans of the partial indexes run_running_by_expiry and run_paused_by_expiry, so the cost
    follows the runs that are due. (A paused run is due only at its max duration.)"""
    claimable = Q(sweep_claimed_at__isnull=True) | Q(sweep_claimed_at__lt=now - CLAIM_LEASE)
    return (
        SandboxRun.objects.filter(status__in=SANDBOX_STATUSES, expires_at__lt=now)
        .filter(claimable)
        .order_by("expires_at")
        .only(*_SWEEP_FIELDS)
    )


def _stuck_booting(now: datetime) -> QuerySet[SandboxRun]:
    cutoff = now - timedelta(seconds=settings.SANDBOX_BOOT_TIMEOUT_S)
    return SandboxRun.objects.filter(status=RunStatus.BOOTING, created_at__lt=cutoff).order_by(
        "created_at"
    )


def _claim_due_runs(now: datetime) -> tuple[list[tuple[SandboxRun, str]], int]:
    """Claim the next batch of due runs. Returns the claimed runs with why each is due, and
    how many candidates the batch looked at.

    `expires_at` is only where to look: each candidate is checked against the fields it is
    derived from, and one that is not due after all (a writer that moved last_activity_at
    without it) gets it corrected instead. Row locks with SKIP LOCKED make overlapping sweeps
    take disjoint batches on PostgreSQL; SQLite has no row locks but its IMMEDIATE
    transactions run one at a time, and a committed claim is filtered out by the next."""
    claimed: list[tuple[SandboxRun, str]] = []
    with transaction.atomic():
        candidates = list(_due_running(now).select_for_update(skip_locked=True)[:BATCH_SIZE])
        for run in candidates:
            expires_at, reason = run.sweep_due()
            if expires_at < now:
                claimed.append((run, reason))
            else:
                SandboxRun.objects.filter(pk=run.pk).update(expires_at=expires_at)
        SandboxRun.objects.filter(pk__in=[run.pk for run, _ in claimed]).update(
            sweep_claimed_at=now
        )
    for run, _ in claimed:
        run.sweep_claimed_at = now
    return claimed, len(candidates)


def _end_due_runs(
    claimed: list[tuple[SandboxRun, str]],
    backend: SandboxBackend,
    pool: ThreadPoolExecutor,
    report: SweepReport,
) -> None:
    """Kill the claimed runs' sandboxes concurrently; end the runs in batches as their kills
    return, while the other kills go on."""
    futures = {
        pool.submit(kill_sandbox, backend, run.sandbox_id): (run, reason) for run, reason in claimed
    }
    killed: list[tuple[SandboxRun, str]] = []
    for future in as_completed(futures):
        run, reason = futures[future]
        error = future.exception()
        if error is None:
            killed.append((run, reason))
            if len(killed) == ENDING_BATCH_SIZE:
                _end_killed(killed, report)
                killed = []
            continue
        # Not ended: released so that the next sweep tries again.
        SandboxRun.objects.filter(pk=run.pk, sweep_claimed_at=run.sweep_claimed_at).update(
            sweep_claimed_at=None
        )
        report.errors += 1
        report.actions.append(Action("error", reason, str(run.pk), run.sandbox_id, str(error)))
        logger.warning("sweep: kill failed run=%s sandbox=%s: %s", run.pk, run.sandbox_id, error)
    _end_killed(killed, report)


def _end_killed(killed: list[tuple[SandboxRun, str]], report: SweepReport) -> None:
    """End runs whose sandboxes are gone: each through its state-machine transition, logged
    as system:sweep, under a row lock (services.run_transition, batched: one transaction and
    one locking query for the batch rather than per run, which is what a sweep of thousands
    of runs spends its time on). A run that ended meanwhile (a cancel, its command job) is
    left as it is."""
    if not killed:
        return
    with transaction.atomic():
        locked = (
            SandboxRun.objects.select_for_update()
            .order_by("pk")
            .in_bulk([run.pk for run, _ in killed])
        )
        for run, reason in killed:
            current = locked.get(run.pk)  # None: deleted with its workspace meanwhile
            try:
                if current is None:
                    raise TransitionNotAllowed("the run was deleted")
                _ending(reason, run)(current)
            except TransitionNotAllowed as exc:
                detail = str(exc)
                report.actions.append(
                    Action("skipped", reason, str(run.pk), run.sandbox_id, detail)
                )
                continue
            current.save()
            report.killed += 1
            report.actions.append(Action("killed", reason, str(run.pk), run.sandbox_id))
            logger.info("sweep: ended run=%s sandbox=%s (%s)", run.pk, run.sandbox_id, reason)


def _ending(reason: str, run: SandboxRun) -> Callable[[SandboxRun], None]:
    """The transition that ends a run the sweep killed: a run that was due when claimed is
    ended even if activity arrived since, because its sandbox is gone by now."""
    if reason == EndReason.IDLE_TIMEOUT:
        return lambda r: r.cancel(reason=EndReason.IDLE_TIMEOUT, by=SYSTEM_SWEEP)
    error = {
        "code": "max_duration",
        "message": f"The run passed its max duration of {run.max_duration_ms / 1000:g} s.",
    }
    return lambda r: r.fail(reason=EndReason.MAX_DURATION, error=error, by=SYSTEM_SWEEP)


# --- idle runs that pause instead (SPEC §15) ------------------------------------------


def _pauses(run: SandboxRun, reason: str, backend: SandboxBackend | None) -> bool:
    """Whether the sweep pauses this due run rather than ending it: idle, running, asked to
    pause, on a backend that can (a run created otherwise was refused at creation)."""
    return (
        reason == EndReason.IDLE_TIMEOUT
        and run.status == RunStatus.RUNNING
        and run.on_idle == OnIdle.PAUSE
        and (backend is None or backend.supports_pause)
    )


def _pause_idle_runs(
    claimed: list[tuple[SandboxRun, str]],
    backend: SandboxBackend,
    pool: ThreadPoolExecutor,
    report: SweepReport,
) -> None:
    """Pause the claimed idle runs' sandboxes concurrently, then each run (running → paused,
    by system:sweep). A sandbox already gone ends its run as a kill would; a failed pause
    releases the claim for the next sweep."""
    futures = {pool.submit(backend.pause, run.sandbox_id): run for run, _ in claimed}
    gone: list[tuple[SandboxRun, str]] = []
    for future in as_completed(futures):
        run = futures[future]
        error = future.exception()
        if isinstance(error, SandboxNotFound):
            gone.append((run, EndReason.IDLE_TIMEOUT))
            continue
        if error is not None:
            _release(run)
            report.errors += 1
            report.actions.append(
                Action("error", EndReason.IDLE_TIMEOUT, str(run.pk), run.sandbox_id, str(error))
            )
            logger.warning("sweep: pause failed run=%s sandbox=%s: %s", run.pk, run.sandbox_id,
                           error)  # fmt: skip
            continue
        _mark_paused(run, backend, report)
    _end_killed(gone, report)


def _mark_paused(run: SandboxRun, backend: SandboxBackend, report: SweepReport) -> None:
    """running → paused, unless a call came in since the claim: then the call's sandbox is
    resumed at once and the run stays running (the call may have seen `run_paused`)."""

    def pause_if_still_idle(current: SandboxRun) -> None:
        if current.status != RunStatus.RUNNING:
            raise TransitionNotAllowed(f"the run is {current.status}")
        if current.last_activity_at > run.last_activity_at:
            raise _ActiveAgain
        current.pause(by=SYSTEM_SWEEP)

    try:
        run_transition(run.pk, pause_if_still_idle)
    except _ActiveAgain:
        _release(run)
        try:
            backend.resume(run.sandbox_id, timeout_s=provider_timeout_s(run))
        except SandboxNotFound:
            pass  # gone: the call that came in finds out, and fails the run sandbox_lost
        except BackendError as exc:
            # Left paused under a running run: the next call that finds it so resumes it
            # (execution.backend_call), or the next sweep finds the run idle and records it.
            report.errors += 1
            report.actions.append(
                Action("error", EndReason.IDLE_TIMEOUT, str(run.pk), run.sandbox_id,
                       f"active again, but the resume failed: {exc}")
            )  # fmt: skip
            logger.warning("sweep: resume failed run=%s: %s", run.pk, exc)
            return
        report.actions.append(
            Action("skipped", EndReason.IDLE_TIMEOUT, str(run.pk), run.sandbox_id, "active again")
        )
        return
    except Conflict as exc:  # ended meanwhile: whoever ended it kills the sandbox
        report.actions.append(
            Action("skipped", EndReason.IDLE_TIMEOUT, str(run.pk), run.sandbox_id, exc.detail)
        )
        return
    report.paused += 1
    report.actions.append(Action("paused", EndReason.IDLE_TIMEOUT, str(run.pk), run.sandbox_id))
    logger.info("sweep: paused idle run=%s sandbox=%s", run.pk, run.sandbox_id)


class _ActiveAgain(Exception):
    """A call came in between the claim and the pause."""


def _release(run: SandboxRun) -> None:
    SandboxRun.objects.filter(pk=run.pk, sweep_claimed_at=run.sweep_claimed_at).update(
        sweep_claimed_at=None
    )


def _fail_stuck_boots(
    now: datetime, backend: SandboxBackend, pool: ThreadPoolExecutor, report: SweepReport
) -> None:
    """Booting past the boot timeout → failed / boot_timeout. The transition comes first:
    a boot still under way then loses its race to mark the run running and kills what it
    made; whatever it made before is found by the run_id tag and killed here."""

    def fail_if_booting(run: SandboxRun) -> None:
        fail_boot_timeout(run, SYSTEM_SWEEP)

    while True:
        run_ids = list(_stuck_booting(now).values_list("pk", flat=True)[:BATCH_SIZE])
        futures: dict[Future[int], str] = {}
        for run_id in run_ids:
            try:
                run_transition(run_id, fail_if_booting)
            except Conflict:
                continue  # another sweep, a cancel or the boot got there first
            report.failed += 1
            report.actions.append(Action("failed", EndReason.BOOT_TIMEOUT, str(run_id)))
            futures[pool.submit(kill_run_sandboxes, backend, str(run_id))] = str(run_id)
        for future in as_completed(futures):
            if (error := future.exception()) is not None:
                report.errors += 1
                detail = f"cleanup failed, reconcile will retry: {error}"
                report.actions.append(
                    Action("error", EndReason.BOOT_TIMEOUT, futures[future], "", detail)
                )
        if len(run_ids) < BATCH_SIZE:
            return


def _resend_unclaimed_starts(now: datetime, report: SweepReport) -> None:
    """The start outbox's sender of last resort: booting runs whose start task was never
    sent (the broker was down when they were created) or was lost get it sent again. The
    boot's own claim makes a start that arrives twice boot once."""
    for run in runs_start_unclaimed(now):
        if run_start_resend(run=run, now=now):
            report.resent += 1
            report.actions.append(Action("resent start", "unclaimed", str(run.pk)))
    for run in runs_job_unclaimed(now):
        if run_job_resend(run=run, now=now):
            report.resent += 1
            report.actions.append(Action("resent command job", "unclaimed", str(run.pk)))


def _end_jobs_of_lost_workers(now: datetime, report: SweepReport) -> None:
    """Command jobs whose lease lapsed: their worker died. The run fails worker_lost, with
    the output the job's last renewal stored kept as its log artifact, and its sandbox is
    killed (counted as killed)."""
    for command in jobs_with_lapsed_lease(now):
        run = job_lose_worker(command=command, actor=SYSTEM_SWEEP, now=now)
        if run is not None:
            report.killed += 1
            report.actions.append(
                Action("killed", EndReason.WORKER_LOST, str(run.pk), run.sandbox_id)
            )


def _plan_sweep(now: datetime, report: SweepReport) -> None:
    """What a sweep would do now, without claiming, killing or changing anything."""
    for run in runs_start_unclaimed(now):
        report.actions.append(Action("would resend start", "unclaimed", str(run.pk)))
    for run in runs_job_unclaimed(now):
        report.actions.append(Action("would resend command job", "unclaimed", str(run.pk)))
    for command in jobs_with_lapsed_lease(now):
        report.actions.append(
            Action("would fail and kill", EndReason.WORKER_LOST, str(command.run_id),
                   command.run.sandbox_id)
        )  # fmt: skip
    for run_id in _stuck_booting(now).values_list("pk", flat=True):
        report.actions.append(Action("would fail", EndReason.BOOT_TIMEOUT, str(run_id)))
    for run in _due_running(now).iterator():
        expires_at, reason = run.sweep_due()
        if expires_at < now and _pauses(run, reason, None):
            report.actions.append(Action("would pause", reason, str(run.pk), run.sandbox_id))
        elif expires_at < now:
            verb = "would cancel" if reason == EndReason.IDLE_TIMEOUT else "would fail"
            report.actions.append(Action(f"{verb} and kill", reason, str(run.pk), run.sandbox_id))


# --- shared --------------------------------------------------------------------------


def sweep_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=settings.SANDBOX_SWEEP_CONCURRENCY, thread_name_prefix="sweep"
    )


def kill_sandbox(backend: SandboxBackend, sandbox_id: str) -> None:
    """Kill one sandbox; one that is already gone counts as killed. Runs on a pool thread."""
    if not sandbox_id:
        return
    # False or SandboxNotFound: already gone, which is what the kill was for.
    with contextlib.suppress(SandboxNotFound):
        backend.kill(sandbox_id)

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, transition
from django_fsm_log.decorators import fsm_log_by

from workspaces.access import Actor
from workspaces.models import ApiKey, Subject, Workspace

DEFAULT_OUTPUT_DIR = "/home/user/artifacts"


class RunStatus(models.TextChoices):
    BOOTING = "booting", "Booting"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"  # SPEC §15: its sandbox frozen, billed nothing
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


# What counts toward WORKSPACE_MAX_ACTIVE_RUNS: a paused run does not (SPEC §15).
ACTIVE_STATUSES = (RunStatus.BOOTING, RunStatus.RUNNING)
# Not ended yet: what may still be canceled, failed, swept and reconciled.
LIVE_STATUSES = (RunStatus.BOOTING, RunStatus.RUNNING, RunStatus.PAUSED)
# What has a sandbox that the run uses (running, or frozen while paused).
SANDBOX_STATUSES = (RunStatus.RUNNING, RunStatus.PAUSED)
TERMINAL_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED)


class EndReason(models.TextChoices):
    COMPLETED = "completed"
    COMMAND_FAILED = "command_failed"
    CANCELED_BY_USER = "canceled_by_user"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION = "max_duration"
    BOOT_TIMEOUT = "boot_timeout"
    BOOT_ERROR = "boot_error"
    SANDBOX_LOST = "sandbox_lost"
    WORKER_LOST = "worker_lost"  # the command job's worker died: its lease lapsed


class OnIdle(models.TextChoices):
    """What the sweep does to a run idle past its idle timeout (SPEC §15)."""

    KILL = "kill", "Kill"  # end it: canceled / idle_timeout
    PAUSE = "pause", "Pause"  # pause its sandbox: the next call resumes it


def compute_cost(*, seconds: float, cpu_count: int | None, memory_mb: int | None) -> Decimal:
    """SPEC §6: seconds × (vCPUs × price per vCPU-second + GiB × price per GiB-second)."""
    if seconds <= 0 or not cpu_count:
        return Decimal("0")
    gib = Decimal(memory_mb or 0) / Decimal(1024)
    rate = Decimal(cpu_count) * settings.SANDBOX_PRICE_VCPU_S + gib * settings.SANDBOX_PRICE_GIB_S
    return (Decimal(str(round(seconds, 3))) * rate).quantize(Decimal("0.000001"))


class SandboxRun(ConcurrentTransitionMixin, models.Model):
    """One sandbox's life, from boot to its end. `status` moves only through the transitions
    below (protected field), and ConcurrentTransitionMixin makes a save fail when another
    process moved the status since this copy was read: two transitions cannot both win."""

    # Declared: django-stubs cannot infer the manager through django-fsm's mixin.
    objects: ClassVar[models.Manager[SandboxRun]] = models.Manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="runs")
    thread_id = models.CharField(max_length=255)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sandbox_runs"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    prompt = models.TextField()
    command = models.TextField(blank=True)
    template = models.CharField(max_length=100, blank=True)
    env = models.JSONField(default=dict, blank=True)  # stored, never echoed back
    metadata = models.JSONField(default=dict, blank=True)
    files = models.JSONField(default=dict, blank=True)  # {path: text} written before `command`
    output_dir = models.CharField(max_length=1024, default=DEFAULT_OUTPUT_DIR)
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)

    sandbox_id = models.CharField(max_length=128, blank=True)
    status = FSMField(default=RunStatus.BOOTING, choices=RunStatus.choices, protected=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    boot_claimed_at = models.DateTimeField(null=True, blank=True)
    # The outbox of the run's next task: when it was last sent — the start task while booting
    # (set with the row, sent on commit), the command job once running (set by mark_running);
    # null when sending failed. The sweep sends it again when null or overdue and unclaimed.
    start_enqueued_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    running_at = models.DateTimeField(null=True, blank=True)
    command_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(default=timezone.now)
    deadline_pushed_at = models.DateTimeField(null=True, blank=True)
    # When the sweep ends this running run unless activity comes first (`sweep_due`): kept
    # in a column so the sweep finds due runs with one index range scan, whatever each run's
    # own timeouts. The sweep re-checks every candidate against the fields it derives from.
    expires_at = models.DateTimeField(null=True, blank=True)
    # A sweep's claim on the run while it kills the sandbox: overlapping sweeps skip it.
    sweep_claimed_at = models.DateTimeField(null=True, blank=True)
    max_duration_ms = models.PositiveBigIntegerField()
    idle_timeout_ms = models.PositiveBigIntegerField()
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, choices=EndReason.choices, blank=True)
    cpu_count = models.PositiveIntegerField(null=True, blank=True)
    memory_mb = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    # SPEC §15: pause instead of kill, and what the sandbox may reach.
    on_idle = models.CharField(max_length=8, choices=OnIdle.choices, default=OnIdle.KILL)
    network = models.JSONField(default=dict, blank=True)  # {internet, allow_out, deny_out}
    paused_at = models.DateTimeField(null=True, blank=True)  # the current pause's start
    # The run's pauses that ended (resumed, or ended with the run): never billed.
    paused_for = models.DurationField(default=timedelta(0))

    # How long the pause a resume (or the run's end) just ended lasted: for the trail.
    last_pause_s: float = 0.0

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["workspace", "-created_at"], name="run_ws_newest"),
            # Newest first across workspaces: the admin's list and `GET runs/` (keyset pages).
            models.Index(fields=["-created_at", "-id"], name="run_newest"),
            models.Index(fields=["thread_id", "-created_at"], name="run_thread_newest"),
            # The sweep's queries: cost grows with the runs that are due, not with all runs.
            models.Index(
                fields=["running_at"], name="run_running_by_start", condition=Q(status="running")
            ),
            models.Index(
                fields=["created_at"], name="run_booting_by_created", condition=Q(status="booting")
            ),
            models.Index(fields=["workspace", "status"], name="run_ws_status"),
            models.Index(
                fields=["expires_at"], name="run_running_by_expiry", condition=Q(status="running")
            ),
            # Paused runs still end at their max duration: the sweep finds them by expiry too.
            models.Index(
                fields=["expires_at"], name="run_paused_by_expiry", condition=Q(status="paused")
            ),
        ]  # fmt: skip
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="run_unique_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    # --- derived ---------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """Counts toward the workspace's active-run limit (booting or running)."""
        return self.status in ACTIVE_STATUSES

    @property
    def is_live(self) -> bool:
        """Not ended: booting, running or paused."""
        return self.status in LIVE_STATUSES

    @property
    def deadline(self) -> datetime:
        """When the run must end by its max duration."""
        return self.created_at + timedelta(milliseconds=self.max_duration_ms)

    def remaining_s(self, now: datetime | None = None) -> float:
        return max(0.0, (self.deadline - (now or timezone.now())).total_seconds())

    def sweep_due(self) -> tuple[datetime, str]:
        """When the sweep must end this running run unless activity comes first, and why:
        whichever of the idle and max-duration deadlines comes first. A run whose command
        job has started is never idle: the job holds it until the max duration. A paused
        run is idle already: only its max duration ends it."""
        if self.status == RunStatus.PAUSED:
            return self.deadline, EndReason.MAX_DURATION
        return self._running_due()

    def _running_due(self) -> tuple[datetime, str]:
        idle_end = self.last_activity_at + timedelta(milliseconds=self.idle_timeout_ms)
        if self.command_started_at is None and idle_end < self.deadline:
            return idle_end, EndReason.IDLE_TIMEOUT
        return self.deadline, EndReason.MAX_DURATION

    def paused_seconds(self, now: datetime | None = None) -> float:
        """How long the run has been paused, in all: its ended pauses and the current one."""
        paused = self.paused_for
        if self.paused_at is not None:
            end = self.finished_at or now or timezone.now()
            paused += max(timedelta(0), end - self.paused_at)
        return paused.total_seconds()

    @property
    def sandbox_seconds(self) -> float:
        """Billed time (SPEC §6, §15): from running to the end, less the time paused."""
        start = self.running_at or (self.created_at if self.sandbox_id else None)
        if start is None or self.finished_at is None:
            return 0.0
        lived = (self.finished_at - start).total_seconds()
        return max(0.0, lived - self.paused_seconds())

    # --- transitions: they change fields only; side effects live in services ------------

    def _finish(self, *, reason: str, error: dict[str, str] | None, exit_code: int | None) -> None:
        self.finished_at = timezone.now()
        self._end_pause(self.finished_at)
        self.end_reason = reason
        if error is not None:
            self.error = error
        if exit_code is not None:
            self.exit_code = exit_code
        self.cost_usd = compute_cost(
            seconds=self.sandbox_seconds, cpu_count=self.cpu_count, memory_mb=self.memory_mb
        )

    @fsm_log_by
    @transition(field=status, source=RunStatus.BOOTING, target=RunStatus.RUNNING)
    def mark_running(
        self, *, sandbox_id: str, cpu_count: int | None, memory_mb: int | None, by: Actor
    ) -> None:
        now = timezone.now()
        self.sandbox_id = sandbox_id
        self.cpu_count = cpu_count
        self.memory_mb = memory_mb
        self.running_at = now
        self.last_activity_at = now
        self.expires_at = self.sweep_due()[0]
        self.start_enqueued_at = now  # the command job, if any, is sent on commit

    def _end_pause(self, now: datetime) -> None:
        """Fold the current pause, if any, into `paused_for`."""
        self.last_pause_s = 0.0
        if self.paused_at is not None:
            pause = max(timedelta(0), now - self.paused_at)
            self.paused_for += pause
            self.paused_at = None
            self.last_pause_s = pause.total_seconds()

    @fsm_log_by
    @transition(field=status, source=RunStatus.RUNNING, target=RunStatus.PAUSED)
    def pause(self, *, by: Actor) -> None:
        """Its sandbox is paused: billed nothing from now, ended only by its max duration."""
        self.paused_at = timezone.now()
        self.expires_at = self.deadline
        self.sweep_claimed_at = None

    @fsm_log_by
    @transition(field=status, source=RunStatus.PAUSED, target=RunStatus.RUNNING)
    def resume(self, *, by: Actor) -> None:
        """Its sandbox runs again: the call that resumed it is activity, and the sandbox's
        deadline was set by the resume itself."""
        now = timezone.now()
        self._end_pause(now)
        self.last_activity_at = now
        self.deadline_pushed_at = now
        self.expires_at = self._running_due()[0]  # the status changes after this body

    @fsm_log_by
    @transition(
        field=status, source=[RunStatus.RUNNING, RunStatus.PAUSED], target=RunStatus.SUCCEEDED
    )
    def succeed(self, *, exit_code: int | None = None, by: Actor) -> None:
        self._finish(reason=EndReason.COMPLETED, error=None, exit_code=exit_code)

    @fsm_log_by
    @transition(field=status, source=LIVE_STATUSES, target=RunStatus.FAILED)
    def fail(
        self,
        *,
        reason: str,
        error: dict[str, str] | None = None,
        exit_code: int | None = None,
        by: Actor,
    ) -> None:
        self._finish(reason=reason, error=error, exit_code=exit_code)

    @fsm_log_by
    @transition(field=status, source=LIVE_STATUSES, target=RunStatus.CANCELED)
    def cancel(self, *, reason: str = EndReason.CANCELED_BY_USER, by: Actor) -> None:
        self._finish(reason=reason, error=None, exit_code=None)

    # --- on the trail ----------------------------------------------------------------

    def trail_subject(self) -> Subject:
        return Subject("run", self.pk, self.workspace_id, run_id=self.pk, thread_id=self.thread_id)

    def trail_type(self, transition: str, target: str) -> str:
        """The event a transition records: `run.<target>`, except a resume (`run.resumed`)."""
        return "run.resumed" if transition == "resume" else f"run.{target}"

    def trail_data(self, transition: str) -> dict[str, Any]:
        """What a transition records: how the run stands, never its env or files."""
        if transition == "mark_running":
            return {"sandbox_id": self.sandbox_id}
        if transition == "pause":
            return {"sandbox_id": self.sandbox_id}
        if transition == "resume":
            return {
                "sandbox_id": self.sandbox_id,
                "paused_s": round(self.last_pause_s, 3),
            }
        return {
            "end_reason": self.end_reason,
            "exit_code": self.exit_code,
            "error": self.error,
            "sandbox_seconds": round(self.sandbox_seconds, 3),
            "paused_s": round(self.paused_for.total_seconds(), 3),
            "cost_usd": str(self.cost_usd) if self.cost_usd is not None else None,
        }


class CommandKind(models.TextChoices):
    EXEC = "exec", "Exec"  # foreground, through POST runs/{id}/exec/
    BACKGROUND = "background", "Background"  # POST runs/{id}/commands/
    JOB = "job", "Job"  # the run's own `command`, run by the command job


class CommandStatus(models.TextChoices):
    RUNNING = "running", "Running"
    EXITED = "exited", "Exited"
    TIMED_OUT = "timed_out", "Timed out"
    KILLED = "killed", "Killed"
    FAILED = "failed", "Failed"  # the backend could not run it (or lost the sandbox)


COMMAND_TAIL_BYTES = 64 * 1024


class Command(models.Model):
    """One command run in a run's sandbox: the run's command history (SPEC §12), shown to
    reviewers. The output kept here is each stream's last COMMAND_TAIL_BYTES; the env is
    never stored, only the names of the variables it set."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(SandboxRun, on_delete=models.CASCADE, related_name="commands")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=CommandKind.choices)
    command = models.TextField()
    cwd = models.CharField(max_length=1024)
    env_names = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=16, choices=CommandStatus.choices, default=CommandStatus.RUNNING
    )
    actor = models.CharField(max_length=150, help_text="Who ran it: user:…, api_key:…, system:…")
    handle = models.CharField(max_length=128, blank=True)  # the backend's, for background ones
    # A background command is killed as timed out once past this (when read, by the
    # periodic check); foreground commands are timed by the backend call itself.
    deadline_at = models.DateTimeField(null=True, blank=True)
    # Bytes of each stream the command wrote, as far as it was last read: where the tails
    # end, so a refresh reads only the last tail and what came after it.
    stdout_bytes = models.PositiveBigIntegerField(default=0)
    stderr_bytes = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    stdout_tail = models.TextField(blank=True)
    stderr_tail = models.TextField(blank=True)
    truncated = models.BooleanField(default=False)  # output was cut (by the limit or the tail)
    # The command job's lease, renewed by its worker's heartbeat (with its output so far): a
    # job whose lease lapsed lost its worker, and the sweep fails its run as worker_lost.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        indexes = [
            models.Index(fields=["run", "started_at"], name="command_run_history"),
            models.Index(fields=["run"], name="command_run_running", condition=Q(status="running")),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.command[:60]}"

    @property
    def timed_out(self) -> bool:
        return self.status == CommandStatus.TIMED_OUT

    def trail_subject(self) -> Subject:
        return Subject(
            "command", self.pk, self.workspace_id, run_id=self.run_id, thread_id=self.run.thread_id
        )


class MaintenanceCount(models.Model):
    """A running total of what the periodic sweep or reconcile did (passes, kills, failures,
    errors), added to by every pass in whatever worker ran it: what /metrics exposes as
    counters, the same whichever process is scraped (sandboxes/maintenance.py)."""

    task = models.CharField(max_length=32)  # sweep, reconcile
    outcome = models.CharField(max_length=32)  # passes, or a field of the pass's report
    total = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "outcome"], name="maintenance_count_unique")
        ]

    def __str__(self) -> str:
        return f"{self.task} {self.outcome}: {self.total}"

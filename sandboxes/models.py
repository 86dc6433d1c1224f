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
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


ACTIVE_STATUSES = (RunStatus.BOOTING, RunStatus.RUNNING)
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
        return self.status in ACTIVE_STATUSES

    @property
    def deadline(self) -> datetime:
        """When the run must end by its max duration."""
        return self.created_at + timedelta(milliseconds=self.max_duration_ms)

    def remaining_s(self, now: datetime | None = None) -> float:
        return max(0.0, (self.deadline - (now or timezone.now())).total_seconds())

    def sweep_due(self) -> tuple[datetime, str]:
        """When the sweep must end this running run unless activity comes first, and why:
        whichever of the idle and max-duration deadlines comes first. A run whose command
        job has started is never idle: the job holds it until the max duration."""
        idle_end = self.last_activity_at + timedelta(milliseconds=self.idle_timeout_ms)
        if self.command_started_at is None and idle_end < self.deadline:
            return idle_end, EndReason.IDLE_TIMEOUT
        return self.deadline, EndReason.MAX_DURATION

    @property
    def sandbox_seconds(self) -> float:
        start = self.running_at or (self.created_at if self.sandbox_id else None)
        if start is None or self.finished_at is None:
            return 0.0
        return max(0.0, (self.finished_at - start).total_seconds())

    # --- transitions: they change fields only; side effects live in services ------------

    def _finish(self, *, reason: str, error: dict[str, str] | None, exit_code: int | None) -> None:
        self.finished_at = timezone.now()
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

    @fsm_log_by
    @transition(field=status, source=RunStatus.RUNNING, target=RunStatus.SUCCEEDED)
    def succeed(self, *, exit_code: int | None = None, by: Actor) -> None:
        self._finish(reason=EndReason.COMPLETED, error=None, exit_code=exit_code)

    @fsm_log_by
    @transition(field=status, source=ACTIVE_STATUSES, target=RunStatus.FAILED)
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
    @transition(field=status, source=ACTIVE_STATUSES, target=RunStatus.CANCELED)
    def cancel(self, *, reason: str = EndReason.CANCELED_BY_USER, by: Actor) -> None:
        self._finish(reason=reason, error=None, exit_code=None)

    # --- on the trail ----------------------------------------------------------------

    def trail_subject(self) -> Subject:
        return Subject("run", self.pk, self.workspace_id, run_id=self.pk, thread_id=self.thread_id)

    def trail_data(self, transition: str) -> dict[str, Any]:
        """What a transition records: how the run stands, never its env or files."""
        if transition == "mark_running":
            return {"sandbox_id": self.sandbox_id}
        return {
            "end_reason": self.end_reason,
            "exit_code": self.exit_code,
            "error": self.error,
            "sandbox_seconds": round(self.sandbox_seconds, 3),
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

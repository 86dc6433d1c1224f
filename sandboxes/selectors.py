"""Reads of runs, always scoped to what the actor may see."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import (
    Case,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from config.exceptions import NotFound
from sandboxes.models import ACTIVE_STATUSES, Command, RunStatus, SandboxRun
from workspaces import access, watch
from workspaces.access import Actor
from workspaces.models import Role, Workspace

RUN_LIST_RELATED = ("workspace", "created_by", "api_key")


def run_list(*, actor: Actor, workspace: Workspace | None = None) -> QuerySet[SandboxRun]:
    """Runs of one workspace, or of every workspace the actor belongs to (their own columns:
    a list needs no related rows)."""
    queryset = SandboxRun.objects.all()
    if workspace is not None:
        return queryset.filter(workspace=workspace)
    visible = access.visible_workspaces(actor)
    if visible is None:
        return queryset
    if isinstance(visible, QuerySet):
        # Their ids as a list: as a subquery the planner cannot see how many runs each holds.
        visible = list(visible.values_list("workspace_id", flat=True))
    return queryset.filter(workspace__in=visible)


def run_get(
    *, actor: Actor, run_id: uuid.UUID | str, minimum: Role = Role.MEMBER
) -> tuple[SandboxRun, Role]:
    """The run and the actor's role in its workspace: 404 for outsiders, 403 below `minimum`."""
    run = SandboxRun.objects.select_related(*RUN_LIST_RELATED).filter(pk=run_id).first()
    role = access.require(
        access.role_in(actor, run.workspace_id if run else None), minimum, what="run"
    )
    assert run is not None
    return run, role


WAIT_MAX_S = 60


def run_wait(*, run: SandboxRun, while_status: set[str], wait_s: float) -> SandboxRun:
    """The run as soon as its status is none of `while_status`, or after `wait_s` seconds
    (at most WAIT_MAX_S) as it is then. The caller resolved `run` through `run_get`; a run
    deleted meanwhile (with its workspace) is a 404. Waiting is not activity."""

    def load() -> SandboxRun:
        current = SandboxRun.objects.select_related(*RUN_LIST_RELATED).filter(pk=run.pk).first()
        if current is None:
            raise NotFound("No such run.")
        return current

    return watch.wait_while(
        load=load,
        waiting=lambda r: r.status in while_status,
        wait_s=min(wait_s, WAIT_MAX_S),
        workspace_id=str(run.workspace_id),
        relevant=lambda event: event.run_id == run.pk,
    )


def run_is_controlled_by(*, run: SandboxRun, actor: Actor, role: Role) -> bool:
    """Cancel and complete: admins and owners any run, members their own runs (a key: the
    runs it started)."""
    if access.has_role(role, Role.ADMIN):
        return True
    if actor.api_key is not None:
        return run.api_key_id == actor.api_key.pk
    return actor.user is not None and run.created_by_id == actor.user.pk


def command_list(*, run: SandboxRun) -> QuerySet[Command]:
    """The run's command history, oldest first (the caller resolved the run through
    `run_get`)."""
    return Command.objects.filter(run=run).order_by("started_at", "id")


def command_get(*, run: SandboxRun, command_id: uuid.UUID | str) -> Command:
    """One command of the run (resolved through `run_get`): 404 when it is another run's."""
    command = Command.objects.filter(run=run, pk=command_id).first()
    if command is None:
        raise NotFound("No such command.")
    command.run = run
    return command


def command_output_visible(*, run: SandboxRun, actor: Actor, role: Role) -> bool:
    """Command output is content (SPEC §12): the run's creator (its user, or its key) and
    admins and owners read it; other members see only what ran and how it ended. The same
    rule as ending the run."""
    return run_is_controlled_by(run=run, actor=actor, role=role)


def active_run_count(*, workspace: Workspace) -> int:
    return SandboxRun.objects.filter(workspace=workspace, status__in=ACTIVE_STATUSES).count()


# --- usage ---------------------------------------------------------------------------

USAGE_MAX_DAYS = 366
COST_PRECISION = Decimal("0.000001")  # cost_usd's decimal places


@dataclass(frozen=True)
class UsageTotals:
    runs: int
    sandbox_seconds: float
    cost_usd: Decimal


@dataclass(frozen=True)
class UsageByDay(UsageTotals):
    day: date


@dataclass(frozen=True)
class Usage(UsageTotals):
    start: date
    end: date
    by_status: dict[str, UsageTotals]  # every RunStatus
    by_day: list[UsageByDay]


def run_usage(*, workspace: Workspace, start: date, end: date) -> Usage:
    """Runs started from `start` to `end` (whole days, inclusive, in TIME_ZONE): how many,
    their sandbox-seconds (so far, for runs still running) and their cost (runs that have
    ended: the cost is set when a run ends), in total, by status and by day. Every status
    and every day of the period is listed, zeros included. Three aggregate queries."""
    zone = timezone.get_current_timezone()
    runs = SandboxRun.objects.filter(
        workspace=workspace,
        created_at__gte=datetime.combine(start, time.min, tzinfo=zone),
        created_at__lt=datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone),
    )
    sums = {
        "n": Count("id"),
        "seconds": Sum(_sandbox_time(timezone.now())),
        "cost": Sum("cost_usd"),
    }
    total = runs.aggregate(**sums)
    by_status = {row["status"]: row for row in runs.values("status").annotate(**sums)}
    by_day = {
        row["day"]: row
        for row in runs.annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day")
        .annotate(**sums)
    }
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    return Usage(
        **_totals(total),
        start=start,
        end=end,
        by_status={s: UsageTotals(**_totals(by_status.get(s))) for s in RunStatus.values},
        by_day=[UsageByDay(**_totals(by_day.get(d)), day=d) for d in days],
    )


def _sandbox_time(now: datetime) -> ExpressionWrapper[CombinedExpression]:
    """How long a run's sandbox has run (what is billed): from running (or, for a sandbox
    that never got that far, from the run's start if it had one) to the run's end, or to
    now, less the time it was paused (its ended pauses, and the current one up to now)."""
    started = Case(
        When(running_at__isnull=False, then=F("running_at")),
        When(~Q(sandbox_id=""), then=F("created_at")),
        default=None,
        output_field=DateTimeField(),
    )
    ended = Coalesce(F("finished_at"), Value(now, output_field=DateTimeField()))
    pausing = Coalesce(
        Value(now, output_field=DateTimeField()) - F("paused_at"),
        Value(timedelta(0), output_field=DurationField()),
        output_field=DurationField(),
    )
    return ExpressionWrapper(
        ended - started - F("paused_for") - pausing, output_field=DurationField()
    )


def _totals(row: dict[str, Any] | None) -> dict[str, Any]:
    row = row or {}
    seconds = row.get("seconds") or timedelta(0)
    return {
        "runs": row.get("n") or 0,
        "sandbox_seconds": round(seconds.total_seconds(), 3),
        "cost_usd": (row.get("cost") or Decimal(0)).quantize(COST_PRECISION),
    }

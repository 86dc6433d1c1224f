"""Totals of what the sweep and reconcile did, in the database: beat runs them in whichever
worker takes the task, and /metrics is served by any web process, so an in-process counter
would show one process's share. One pass adds one row update per non-zero outcome."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from sandboxes.models import MaintenanceCount


def pass_count(task: str, report: Any) -> None:
    """Count one real (not dry-run) pass of `task` and every integer field of its report
    (killed, failed, errors, …): a field a report gains later is counted as it comes."""
    counts = {"passes": 1}
    for item in dataclasses.fields(report):
        value = getattr(report, item.name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts[item.name] = value
    now = timezone.now()
    for outcome, value in counts.items():
        _add(task, outcome, value, now)


def _add(task: str, outcome: str, value: int, now: Any) -> None:
    rows = MaintenanceCount.objects.filter(task=task, outcome=outcome)
    if rows.update(total=F("total") + value, updated_at=now):
        return
    try:
        with transaction.atomic():
            MaintenanceCount.objects.create(task=task, outcome=outcome, total=value, updated_at=now)
    except IntegrityError:  # another worker's pass created it first
        rows.update(total=F("total") + value, updated_at=now)


def totals() -> list[MaintenanceCount]:
    return list(MaintenanceCount.objects.order_by("task", "outcome"))

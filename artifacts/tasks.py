"""Celery tasks of the artifacts app: thin, like sandboxes.tasks."""

from __future__ import annotations

import smtplib
from typing import Any

from celery import shared_task

from artifacts import jobs, notifications, policy


# Enqueued by sandboxes.services once a run with a command is running, by name (sandboxes
# never imports artifacts), with time limits from the run's remaining duration. Never
# retried: a command may not be safe to run twice.
@shared_task(acks_late=True, name="artifacts.tasks.execute_run_command")
def execute_run_command(run_id: str) -> None:
    jobs.run_execute_command(run_id=run_id)


# Enqueued on commit by the trail hook (notifications.NOTIFY_TASK). A mail server that fails
# retries this task with backoff; it never touches the run or the capture.
@shared_task(
    bind=True,
    acks_late=True,
    name="artifacts.tasks.notify_reviewers",
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=1800,
    max_retries=8,
    soft_time_limit=60,
    time_limit=90,
)
def notify_reviewers(self: Any, run_id: str, event_id: int | None) -> int:
    notice = notifications.reviewers_notify(run_id=run_id, event_id=event_id)
    if notice.retry_in_s > 0:
        self.apply_async(args=[run_id, event_id], countdown=notice.retry_in_s)
    return notice.sent


# Periodic (config/celery.py). No retries: the next beat is the retry; overlapping runs are
# safe (each artifact is expired under a skip-locked row lock).
@shared_task(
    acks_late=True,
    soft_time_limit=120,
    time_limit=150,
    name="artifacts.tasks.expire_pending_artifacts",
)
def expire_pending_artifacts() -> int:
    return policy.artifacts_expire()

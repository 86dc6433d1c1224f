"""Celery tasks of the artifacts app: thin, like sandboxes.tasks."""

from __future__ import annotations

from celery import shared_task

from artifacts import jobs, policy


# Enqueued by sandboxes.services once a run with a command is running, by name (sandboxes
# never imports artifacts), with time limits from the run's remaining duration. Never
# retried: a command may not be safe to run twice.
@shared_task(acks_late=True, name="artifacts.tasks.execute_run_command")
def execute_run_command(run_id: str) -> None:
    jobs.run_execute_command(run_id=run_id)


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

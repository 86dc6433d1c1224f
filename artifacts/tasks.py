"""Celery tasks of the artifacts app: thin, like sandboxes.tasks."""

from __future__ import annotations

from celery import shared_task

from artifacts import jobs


# Enqueued by sandboxes.services once a run with a command is running, by name (sandboxes
# never imports artifacts), with time limits from the run's remaining duration. Never
# retried: a command may not be safe to run twice.
@shared_task(acks_late=True, name="artifacts.tasks.execute_run_command")
def execute_run_command(run_id: str) -> None:
    jobs.run_execute_command(run_id=run_id)

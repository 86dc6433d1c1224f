"""artifacts/tasks.py: the command job's task is what sandboxes enqueues by name (sandboxes never
imports artifacts), delivered late and never retried. What it runs is test_jobs'."""

from __future__ import annotations

from artifacts.tasks import execute_run_command
from config.celery import app
from sandboxes import services


def test_the_command_job_is_registered_under_the_name_sandboxes_enqueues() -> None:
    assert execute_run_command.name == services.COMMAND_JOB_TASK
    assert app.tasks[services.COMMAND_JOB_TASK] == execute_run_command  # (a proxy of it)


def test_the_command_job_is_acknowledged_late_and_never_retried() -> None:
    # A command may not be safe to run twice: a crash leaves the run to the sweep.
    assert execute_run_command.acks_late is True
    assert not getattr(execute_run_command, "autoretry_for", ())

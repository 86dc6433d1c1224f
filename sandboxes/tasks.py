"""Celery tasks: thin. They take ids, call one service, and own the retry policy: retries
only on TransientBackendError, with exponential backoff. The command job's task is
artifacts.tasks.execute_run_command (it captures the run's outputs as artifacts)."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from sandboxes import background, reconcile, services, sweep
from sandboxes.backends import TransientBackendError

logger = logging.getLogger(__name__)

START_MAX_RETRIES = 5


def backoff_s(retries: int) -> int:
    return int(min(60, 2 ** (retries + 1)))


@shared_task(
    bind=True,
    name="sandboxes.tasks.start_sandbox_run",  # services.START_TASK
    acks_late=True,
    soft_time_limit=150,
    time_limit=180,
    max_retries=START_MAX_RETRIES,
)
def start_sandbox_run(self: Any, run_id: str) -> None:
    try:
        services.run_boot(run_id=run_id)
    except TransientBackendError as exc:
        if self.request.retries >= self.max_retries:
            services.run_fail_boot(run_id=run_id, error=exc)
            return
        logger.info("boot of run %s hit %s; retry %d", run_id, exc, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from exc


# Periodic (config/celery.py). No retries: the next beat is the retry, and both are safe to
# run concurrently with themselves. The soft limit leaves the sweep's time budget
# (sweep.TIME_BUDGET_S) room to finish the batch in flight.
@shared_task(acks_late=True, soft_time_limit=240, time_limit=300)
def sweep_sandboxes() -> dict[str, int]:
    return sweep.sandboxes_sweep().as_dict()


@shared_task(acks_late=True, soft_time_limit=240, time_limit=300)
def reconcile_sandboxes() -> dict[str, int]:
    return reconcile.sandboxes_reconcile().as_dict()


@shared_task(acks_late=True, soft_time_limit=240, time_limit=300)
def check_background_commands() -> dict[str, int]:
    return background.background_commands_check().as_dict()

"""A command job's worker SIGKILLed mid-command: its lease lapses, the sweep fails the run
`worker_lost`, kills the sandbox and keeps the output there was as the log artifact. A real
Celery worker, a real local bubblewrap sandbox, a real SIGKILL."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from artifacts.models import Artifact
from sandboxes.models import Command, SandboxRun
from sandboxes.sweep import sandboxes_sweep
from tests.e2e.conftest import wait_for
from tests.factories import UserFactory, create_run, make_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LEASE_S = 3


def test_a_sigkilled_job_worker_ends_its_run_worker_lost(
    local_sandboxes: Any, start_celery: Any, settings: Any
) -> None:
    settings.SANDBOX_JOB_LEASE_S = LEASE_S
    worker = start_celery("worker", SANDBOX_JOB_LEASE_S=str(LEASE_S))
    workspace = make_workspace(owner=UserFactory())
    with transaction.atomic():
        run = create_run(workspace=workspace, command="echo step one; echo careful >&2; sleep 600")

    def output_kept() -> bool:
        job = Command.objects.filter(run=run, kind="job").first()
        return job is not None and "step one" in job.stdout_tail  # a heartbeat stored it

    wait_for(output_kept, 60, what="the job's first output", logs=worker.log)
    os.killpg(worker.process.pid, signal.SIGKILL)  # the worker and its pool, at once
    worker.process.wait(10)
    run.refresh_from_db()
    assert run.status == "running"  # nobody else knows yet

    def lapsed() -> bool:
        job = Command.objects.get(run=run, kind="job")
        return job.lease_expires_at is not None and job.lease_expires_at < timezone.now()

    wait_for(lapsed, 4 * LEASE_S, what="the lease to lapse")
    report = sandboxes_sweep()  # what beat runs every SANDBOX_SWEEP_INTERVAL_S

    assert report.as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "worker_lost")
    assert local_sandboxes.list_sandboxes({"run_id": str(run.pk)}) == []  # the sandbox is gone
    [log] = Artifact.objects.filter(run=run)
    text = log.file.read().decode()
    assert "step one" in text and "careful" in text
    assert SandboxRun.objects.get(pk=run.pk).finished_at is not None

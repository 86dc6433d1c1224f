"""A worker killed (SIGKILL) between creating a run's sandbox and saving its id leaks nothing:
the boot timeout, reconcile or the redelivered start task deals with the sandbox. Real process
death, the e2b backend through the SDK, the E2B test double."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from sandboxes import services
from sandboxes.models import SandboxRun
from sandboxes.reconcile import sandboxes_reconcile
from sandboxes.sweep import sandboxes_sweep
from tests.e2e.conftest import PROJECT_ROOT
from tests.factories import UserFactory, make_workspace
from workspaces.access import Actor

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# What the start task does, in a process that dies the moment the sandbox exists and its id
# is about to be saved: mark_running is where run_boot records it.
CRASHING_BOOT = """
import os, signal
from sandboxes import services
from sandboxes.models import SandboxRun

def die(self, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

SandboxRun.mark_running = die
services.run_boot(run_id={run_id!r})
"""


@pytest.fixture
def crashed_boot(e2b_sandboxes: Any, celery_env: dict[str, str], e2b_server: Any) -> SandboxRun:
    """A booting run whose sandbox exists on the double, made by a worker that then died."""
    workspace = make_workspace(owner=UserFactory())
    run = SandboxRun.objects.create(
        workspace=workspace, created_by=workspace.owner, thread_id="t", prompt="p",
        max_duration_ms=3_600_000, idle_timeout_ms=900_000,
    )  # fmt: skip
    worker = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", CRASHING_BOOT.format(run_id=str(run.pk))],
        cwd=PROJECT_ROOT,
        env=celery_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stdout + worker.stderr
    run.refresh_from_db()
    assert (run.status, run.sandbox_id) == ("booting", "")
    (leaked,) = e2b_server.state.live_sandboxes()
    assert leaked.metadata["run_id"] == str(run.pk)
    return run


def test_the_boot_timeout_kills_the_sandbox_of_a_crashed_boot(
    crashed_boot: SandboxRun, e2b_server: Any, settings: Any
) -> None:
    assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 0}
    assert len(e2b_server.state.live_sandboxes()) == 1  # booting: reconcile leaves it be

    settings.SANDBOX_BOOT_TIMEOUT_S = 60
    SandboxRun.objects.filter(pk=crashed_boot.pk).update(
        created_at=timezone.now() - timedelta(seconds=61)  # as if a minute had passed
    )
    assert sandboxes_sweep().as_dict() == {"killed": 0, "failed": 1, "paused": 0, "errors": 0}

    crashed_boot.refresh_from_db()
    assert (crashed_boot.status, crashed_boot.end_reason) == ("failed", "boot_timeout")
    assert e2b_server.state.live_sandboxes() == []
    assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 0}


def test_reconcile_kills_the_sandbox_once_the_run_has_ended(
    crashed_boot: SandboxRun, e2b_server: Any
) -> None:
    # The user gave up on it: canceled, with no sandbox id to kill.
    services.run_cancel(run=crashed_boot, actor=Actor(user=crashed_boot.created_by))
    assert len(e2b_server.state.live_sandboxes()) == 1

    assert sandboxes_reconcile().as_dict() == {"killed": 1, "lost": 0, "errors": 0}
    assert e2b_server.state.live_sandboxes() == []


def test_the_redelivered_start_task_adopts_the_sandbox_instead_of_making_another(
    crashed_boot: SandboxRun, e2b_server: Any
) -> None:
    (leaked,) = e2b_server.state.live_sandboxes()
    SandboxRun.objects.filter(pk=crashed_boot.pk).update(boot_claimed_at=None)  # lease over
    services.run_boot(run_id=str(crashed_boot.pk))  # acks_late: the message comes back

    crashed_boot.refresh_from_db()
    assert (crashed_boot.status, crashed_boot.sandbox_id) == ("running", leaked.sandbox_id)
    assert [s.sandbox_id for s in e2b_server.state.live_sandboxes()] == [leaked.sandbox_id]
    assert sandboxes_reconcile().as_dict() == {"killed": 0, "lost": 0, "errors": 0}

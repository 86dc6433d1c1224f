"""sandboxes/tasks.py: thin tasks that own the retry policy — the start task on real local
sandboxes and, for provider faults, through the real SDK against the E2B test double; the
periodic sweep and reconcile tasks on the in-memory backend. What the tasks call is tested in
test_services, test_sweep and test_reconcile."""

from __future__ import annotations

from typing import Any

import pytest

from config.celery import app
from sandboxes import services
from sandboxes.backends import TransientBackendError, app_tags
from sandboxes.tasks import backoff_s, reconcile_sandboxes, start_sandbox_run, sweep_sandboxes
from tests.factories import create_run, sandboxes_of
from tests.sandboxes.fake_backend import FakeBackend, start_run
from workspaces.models import Workspace


@pytest.mark.django_db
def test_the_start_task_boots_a_tagged_sandbox_and_marks_the_run_running(
    local_sandboxes: Any, workspace: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        run = create_run(workspace=workspace)
    assert len(callbacks) == 1  # the start task is enqueued on commit, not before

    start_sandbox_run(str(run.pk))

    run.refresh_from_db()
    assert run.status == "running"
    assert run.running_at is not None and run.cpu_count and run.memory_mb
    [info] = sandboxes_of(local_sandboxes, run)
    assert info.sandbox_id == run.sandbox_id
    assert info.metadata == {
        "app": "airlock", "env": "local", "run_id": str(run.pk), "workspace_id": str(workspace.pk),
    }  # fmt: skip


@pytest.mark.django_db
def test_a_transient_boot_failure_is_retried_and_then_succeeds(
    e2b_sandboxes: Any, e2b_server: Any, workspace: Any, monkeypatch: Any
) -> None:
    run = create_run(workspace=workspace)
    # The SDK retries 503 three times itself: four failures reach us as transient.
    e2b_server.state.fail_next(503, times=4, method="POST", path=r"/v2/sandboxes")
    monkeypatch.setattr("sandboxes.tasks.backoff_s", lambda retries: 0)

    result = start_sandbox_run.apply(args=(str(run.pk),))

    assert result.successful(), result.traceback
    run.refresh_from_db()
    assert run.status == "running"
    assert [s.sandbox_id for s in e2b_server.state.live_sandboxes()] == [run.sandbox_id]


@pytest.mark.django_db
def test_a_boot_that_stays_transient_fails_after_the_last_retry(
    e2b_sandboxes: Any, e2b_server: Any, workspace: Any, monkeypatch: Any
) -> None:
    run = create_run(workspace=workspace)
    monkeypatch.setattr("sandboxes.tasks.START_MAX_RETRIES", 1)
    monkeypatch.setattr(start_sandbox_run, "max_retries", 1)
    monkeypatch.setattr("sandboxes.tasks.backoff_s", lambda retries: 0)
    e2b_server.state.fail_next(503, times=100, method="POST", path=r"/v2/sandboxes")

    start_sandbox_run.apply(args=(str(run.pk),))

    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "boot_error")
    assert run.error is not None
    assert run.error["code"] == TransientBackendError.code


def test_the_start_task_is_registered_under_the_name_the_services_enqueue() -> None:
    assert start_sandbox_run.name == services.START_TASK
    assert app.tasks[services.START_TASK] == start_sandbox_run  # (a proxy of it)
    assert start_sandbox_run.acks_late is True


def test_the_retry_backoff_grows_exponentially_up_to_a_minute() -> None:
    assert [backoff_s(n) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]


@pytest.mark.django_db
def test_the_sweep_task_returns_the_counts(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(61)
    assert sweep_sandboxes() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}


@pytest.mark.django_db
def test_the_reconcile_task_returns_the_counts(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    fake_backend.add({**app_tags(), "run_id": "not-a-run"})
    lost = start_run(workspace=workspace)
    fake_backend.kill(lost.sandbox_id)
    assert reconcile_sandboxes() == {"killed": 1, "lost": 1, "errors": 0}


@pytest.mark.django_db
def test_the_background_command_check_task_reports_what_it_did(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    from sandboxes import background
    from sandboxes.tasks import check_background_commands
    from workspaces.access import Actor

    run = start_run(workspace=workspace)
    command = background.command_start_background(
        run=run, actor=Actor(user=workspace.owner), command="sleep 600"
    )
    fake_backend.kill_command(run.sandbox_id, command.handle)  # it ended meanwhile
    assert check_background_commands() == {"checked": 1, "finished": 1, "errors": 0}
    command.refresh_from_db()
    assert command.status == "killed"
    assert check_background_commands() == {"checked": 0, "finished": 0, "errors": 0}

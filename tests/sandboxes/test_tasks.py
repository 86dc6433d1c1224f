"""The start task and the command job, on real sandboxes: local bubblewrap, and the e2b
backend (the real SDK) against the E2B test double for provider faults."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from sandboxes import services
from sandboxes.backends import BackendError, TransientBackendError, override_backend
from sandboxes.models import SandboxRun
from sandboxes.tasks import start_sandbox_run
from tests.sandboxes.faults import FaultyBackend
from workspaces.access import Actor


def _create(workspace: Any, **fields: Any) -> SandboxRun:
    run, created = services.run_create(
        workspace=workspace,
        actor=Actor(user=workspace.owner),
        thread_id="t-1",
        prompt="test",
        **fields,
    )
    assert created
    return run


def _tagged(backend: Any, run: SandboxRun) -> list[Any]:
    return backend.list_sandboxes({"run_id": str(run.pk)})


@pytest.mark.django_db
def test_the_start_task_boots_a_tagged_sandbox_and_marks_the_run_running(
    local_sandboxes: Any, workspace: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        run = _create(workspace)
    assert len(callbacks) == 1  # the start task is enqueued on commit, not before

    start_sandbox_run(str(run.pk))

    run.refresh_from_db()
    assert run.status == "running"
    assert run.running_at is not None and run.cpu_count and run.memory_mb
    [info] = _tagged(local_sandboxes, run)
    assert info.sandbox_id == run.sandbox_id
    assert info.metadata == {
        "app": "airlock", "env": "local", "run_id": str(run.pk), "workspace_id": str(workspace.pk),
    }  # fmt: skip


@pytest.mark.django_db
def test_a_duplicated_start_message_never_makes_a_second_sandbox(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _create(workspace)
    start_sandbox_run(str(run.pk))
    start_sandbox_run(str(run.pk))
    assert len(_tagged(local_sandboxes, run)) == 1


@pytest.mark.django_db
def test_a_crash_between_create_and_save_is_healed_by_adopting_the_sandbox(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _create(workspace)

    def crash(info: Any) -> None:
        raise SystemExit("worker died")  # the provider made the sandbox; we never saved it

    faulty = FaultyBackend(local_sandboxes)
    faulty.after("create", crash)
    with override_backend(faulty), pytest.raises(SystemExit):
        start_sandbox_run(str(run.pk))
    [orphan] = _tagged(local_sandboxes, run)

    start_sandbox_run(str(run.pk))  # redelivered at once: the first attempt's lease still holds
    run.refresh_from_db()
    assert run.status == "booting"

    with time_machine.travel(timezone.now() + services.boot_lease() + timedelta(seconds=1)):
        start_sandbox_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == "running"
    assert run.sandbox_id == orphan.sandbox_id
    assert len(_tagged(local_sandboxes, run)) == 1


@pytest.mark.django_db
def test_a_run_canceled_while_booting_kills_the_sandbox_the_boot_made(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _create(workspace)

    def the_user_cancels(info: Any) -> None:
        services.run_cancel(
            run=SandboxRun.objects.get(pk=run.pk), actor=Actor(user=workspace.owner)
        )

    faulty = FaultyBackend(local_sandboxes)
    faulty.after("create", the_user_cancels)
    with override_backend(faulty):
        start_sandbox_run(str(run.pk))

    run.refresh_from_db()
    assert run.status == "canceled"
    assert _tagged(local_sandboxes, run) == []


@pytest.mark.django_db
def test_a_permanent_boot_failure_fails_the_run_with_its_error(
    e2b_sandboxes: Any, e2b_server: Any, workspace: Any
) -> None:
    run = _create(workspace)
    e2b_server.state.fail_next(401, method="POST", path=r"/v2/sandboxes")

    start_sandbox_run(str(run.pk))

    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "boot_error")
    assert run.error is not None
    assert run.error["code"] == BackendError.code
    assert "API key" in run.error["message"]
    assert e2b_server.state.live_sandboxes() == []


@pytest.mark.django_db
def test_a_transient_boot_failure_is_retried_and_then_succeeds(
    e2b_sandboxes: Any, e2b_server: Any, workspace: Any, monkeypatch: Any
) -> None:
    run = _create(workspace)
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
    run = _create(workspace)
    monkeypatch.setattr("sandboxes.tasks.START_MAX_RETRIES", 1)
    monkeypatch.setattr(start_sandbox_run, "max_retries", 1)
    monkeypatch.setattr("sandboxes.tasks.backoff_s", lambda retries: 0)
    e2b_server.state.fail_next(503, times=100, method="POST", path=r"/v2/sandboxes")

    start_sandbox_run.apply(args=(str(run.pk),))

    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "boot_error")
    assert run.error is not None
    assert run.error["code"] == TransientBackendError.code

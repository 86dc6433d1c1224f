"""An idle run is killed and canceled by the beat-scheduled sweep alone: a real Celery worker
and a real beat (subprocesses, one-second intervals), E2B through the SDK against the test
double. Nobody calls the API after creating the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from sandboxes.models import SandboxRun
from tests.e2e.conftest import CeleryProcess, wait_for
from tests.factories import UserFactory, make_api_key, make_workspace, transitions

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_on_e2b(e2b_sandboxes: Any, start_celery: Any) -> Callable[..., CeleryProcess]:
    """start_celery, once the settings the worker copies point at the E2B double."""
    return start_celery


def test_an_idle_run_is_killed_and_canceled_by_the_scheduled_sweep(
    celery_on_e2b: Callable[..., CeleryProcess], e2b_server: Any
) -> None:
    intervals = {"SANDBOX_SWEEP_INTERVAL_S": "1", "SANDBOX_RECONCILE_INTERVAL_S": "2"}
    worker = celery_on_e2b("worker", **intervals)
    beat = celery_on_e2b("beat", **intervals)

    def logs() -> str:
        return f"--- worker\n{worker.log()}\n--- beat\n{beat.log()}"

    workspace = make_workspace(owner=UserFactory())
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(workspace=workspace)[1]}")
    response = api.post(
        f"/api/v1/workspaces/{workspace.pk}/runs/",
        {"thread_id": "e2e", "prompt": "wait for me", "idle_timeout_ms": 1000},
        format="json",
    )
    assert response.status_code == 201, response.json()
    run_id = response.json()["id"]

    def status() -> str:
        return SandboxRun.objects.filter(pk=run_id).values_list("status", flat=True).get()

    wait_for(lambda: status() != "booting", 20, what="the worker to boot the run", logs=logs)
    run = SandboxRun.objects.get(pk=run_id)
    assert run.status == "running", logs()
    assert [s.sandbox_id for s in e2b_server.state.live_sandboxes()] == [run.sandbox_id]

    wait_for(lambda: status() != "running", 20, what="the sweep to end the idle run", logs=logs)
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("canceled", "idle_timeout"), logs()
    assert e2b_server.state.live_sandboxes() == []  # killed, long before its E2B deadline
    assert e2b_server.state.sandboxes[run.sandbox_id].killed_at is not None
    assert run.cost_usd is not None and run.cost_usd > 0
    last = transitions(run_id).last()
    assert last is not None and (last.actor, last.data["to"]) == ("system:sweep", "canceled")
    assert "sandboxes.tasks.sweep_sandboxes" in beat.log()
    wait_for(
        lambda: "sandboxes.tasks.reconcile_sandboxes" in worker.log(),
        10,
        what="beat to schedule the reconcile too",
        logs=logs,
    )

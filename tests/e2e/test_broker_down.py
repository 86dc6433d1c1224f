"""The broker down (a wrong port) when a run is posted: the run is accepted (201, never a 500)
and boots once the broker is back — the sweep sends its start, a real worker boots it, once."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from sandboxes.models import SandboxRun
from sandboxes.sweep import sandboxes_sweep
from tests.e2e.conftest import wait_for
from tests.factories import UserFactory, make_api_key, make_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_run_posted_while_the_broker_is_down_boots_once_it_is_back(
    local_sandboxes: Any, start_celery: Any, broker_down: Any
) -> None:
    workspace = make_workspace(owner=UserFactory())
    _, key = make_api_key(workspace=workspace)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    response = api.post(
        f"/api/v1/workspaces/{workspace.pk}/runs/",
        {"thread_id": "down", "prompt": "p", "command": "echo booted"},
        format="json",
    )

    assert response.status_code == 201, response.content  # accepted, not a 500
    run_id = response.json()["id"]
    assert SandboxRun.objects.get(pk=run_id).start_enqueued_at is None  # not sent

    broker_down()  # the broker is back
    worker = start_celery("worker")
    report = sandboxes_sweep()  # what beat runs every SANDBOX_SWEEP_INTERVAL_S
    assert report.resent == 1

    def ended() -> bool:
        return SandboxRun.objects.get(pk=run_id).status in ("succeeded", "failed", "canceled")

    wait_for(ended, 60, what="the run to end", logs=worker.log)
    run = SandboxRun.objects.get(pk=run_id)
    assert (run.status, run.end_reason) == ("succeeded", "completed"), worker.log()
    assert SandboxRun.objects.filter(workspace=workspace).count() == 1  # no duplicate
    assert worker.log().count(f"run running id={run_id}") == 1  # booted once
    assert sandboxes_sweep().resent == 0
    assert run.finished_at is not None and run.finished_at <= timezone.now()

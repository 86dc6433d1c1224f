"""From POST to `succeeded` through a real Celery worker (on Redis in CI) and a real local
bubblewrap sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from sandboxes.models import SandboxRun
from tests.e2e.conftest import wait_for
from tests.factories import UserFactory, make_api_key, make_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_run_goes_from_post_to_succeeded_through_a_real_worker(
    local_sandboxes: Any, start_celery: Any
) -> None:
    worker = start_celery("worker")
    workspace = make_workspace(owner=UserFactory())
    _, key = make_api_key(workspace=workspace)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    response = api.post(
        f"/api/v1/workspaces/{workspace.pk}/runs/",
        {"thread_id": "e2e", "prompt": "answer", "command": "python3 -c 'print(42)'"},
        format="json",
    )
    assert response.status_code == 201
    run_id = response.json()["id"]

    def ended() -> bool:
        return SandboxRun.objects.get(pk=run_id).status in ("succeeded", "failed", "canceled")

    wait_for(ended, 60, what="the run to end", logs=worker.log)
    run = SandboxRun.objects.get(pk=run_id)
    assert (run.status, run.exit_code, run.end_reason) == ("succeeded", 0, "completed"), (
        worker.log()
    )
    assert api.get(f"/api/v1/runs/{run_id}/").json()["status"] == "succeeded"
    assert local_sandboxes.list_sandboxes({"run_id": run_id}) == []  # killed when it ended
    assert "Task sandboxes.tasks.start_sandbox_run[" in worker.log()

    # Its output waits behind the airlock: listed, pending, not downloadable by a member key.
    [log] = api.get(f"/api/v1/runs/{run_id}/artifacts/").json()["results"]
    assert (log["type"], log["review_state"]) == ("log", "pending")
    assert api.get(f"/api/v1/artifacts/{log['id']}/content/").status_code == 404
    owner = APIClient()
    owner.force_authenticate(workspace.owner)
    content = owner.get(f"/api/v1/artifacts/{log['id']}/content/")
    assert b"42\n" in content.getvalue()

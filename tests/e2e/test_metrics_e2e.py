"""/metrics across processes: a real worker boots the run and runs its job, a real beat has the
sweep run in that worker, and the scrape — over HTTP from uvicorn in the test process —
shows all of it. The worker and beat log JSON (LOG_FORMAT=json)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandboxes.models import MaintenanceCount, SandboxRun
from tests.e2e.conftest import wait_for
from tests.factories import make_api_key, make_user, make_workspace

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = "scrape-token-e2e"


def _scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_a_scrape_of_the_web_process_counts_what_the_worker_and_beat_did(
    asgi_server: Any, local_sandboxes: Any, start_celery: Any, settings: Any
) -> None:
    settings.METRICS_TOKEN = TOKEN
    assert httpx.get(f"{asgi_server.url}/metrics", timeout=30).status_code == 404
    owner = make_user(username="olivia")
    workspace = make_workspace(owner=owner)
    _, key = make_api_key(workspace=workspace, role="member")
    worker = start_celery("worker", LOG_FORMAT="json")
    start_celery("beat", LOG_FORMAT="json", SANDBOX_SWEEP_INTERVAL_S="1")

    created = httpx.post(
        f"{asgi_server.url}/api/v1/workspaces/{workspace.pk}/runs/",
        headers={"Authorization": f"Bearer {key}"},
        json={"thread_id": "t", "prompt": "p", "command": "echo hello"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    wait_for(
        lambda: SandboxRun.objects.get(pk=run_id).status == "succeeded",
        60,
        what="the job to succeed in the worker",
        logs=worker.log,
    )
    wait_for(
        lambda: MaintenanceCount.objects.filter(task="sweep", outcome="passes").exists(),
        60,
        what="a sweep pass in the worker",
        logs=worker.log,
    )

    samples = _scrape(asgi_server.url)
    run = SandboxRun.objects.get(pk=run_id)
    assert run.running_at is not None
    boot_s = (run.running_at - run.created_at).total_seconds()

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("airlock_runs", status="succeeded", end_reason="completed") == 1
    assert value("airlock_run_boot_seconds_count") == 1
    assert value("airlock_run_boot_seconds_sum") == pytest.approx(boot_s, abs=1e-3)
    assert value("airlock_command_duration_seconds_count", kind="job") == 1
    assert value("airlock_maintenance_total", task="sweep", outcome="passes") >= 1
    assert value("airlock_reviews_pending") == 1  # the job's log
    assert value("airlock_broker_up") == 1

    # The worker logged JSON: every log line is one object (its banner is not logging).
    entries = [json.loads(line) for line in worker.output if line.startswith("{")]
    assert any(
        e["logger"] == "sandboxes.services" and e["message"].startswith("run running")
        for e in entries
    ), worker.log()
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)

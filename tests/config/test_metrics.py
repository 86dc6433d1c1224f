"""config/metrics.py: GET /metrics, scraped as Prometheus would and read back with
prometheus-client's own parser, after real runs on real local sandboxes, a real sweep and
reconcile, real webhook deliveries to loopback receivers and the real broker."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from artifacts.models import Artifact
from config.celery import app as celery_app
from sandboxes import reconcile, sweep
from sandboxes.backends import app_tags
from sandboxes.models import SandboxRun
from tests.config.test_health import closed_port, dead_broker  # noqa: F401 (fixtures)
from tests.conftest import client_as
from workspaces import services, webhooks
from workspaces.access import Actor
from workspaces.models import WebhookDelivery

TOKEN = "metrics-secret-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_on(settings: Any) -> Any:
    settings.METRICS_TOKEN = TOKEN
    return settings


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# --- who may scrape ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post", "head"])
def test_metrics_are_a_404_unless_a_token_is_set(settings: Any, method: str) -> None:
    settings.METRICS_TOKEN = ""
    for auth in ({}, {"HTTP_AUTHORIZATION": "Bearer "}, {"HTTP_AUTHORIZATION": "Bearer x"}):
        assert getattr(Client(), method)("/metrics", **auth).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Token {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"bearer {TOKEN}",
     TOKEN],
)  # fmt: skip
def test_only_the_token_gets_an_answer_anyone_else_the_same_404(
    metrics_on: Any, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    for method in ("get", "post"):
        response = getattr(Client(), method)("/metrics", **headers)
        nothing = getattr(Client(), method)("/no-such-route", **headers)
        assert (response.status_code, response.content) == (404, nothing.content)


@pytest.mark.django_db
def test_the_token_scrapes_and_only_reads(metrics_on: Any) -> None:
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    samples = scrape()
    assert value(samples, "airlock_runs", status="booting", end_reason="") == 0
    assert value(samples, "airlock_reviews_pending") == 0
    assert value(samples, "airlock_run_boot_seconds_count") == 0


@pytest.mark.django_db
def test_a_scraper_that_asks_for_openmetrics_gets_it(metrics_on: Any) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    response = Client().get(
        "/metrics",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
        HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    assert response["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in openmetrics_families(response.content.decode())}
    assert families["airlock_maintenance"].type == "counter"
    assert families["airlock_run_boot_seconds"].type == "histogram"


# --- after real activity ------------------------------------------------------------------


def _wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_a_scrape_shows_what_happened(
    metrics_on: Any,
    api: Any,
    owner: Any,
    workspace: Any,
    task_runner: Any,
    local_sandboxes: Any,
    receivers: Any,
) -> None:
    client = client_as(api, owner)
    runs_url = f"/api/v1/workspaces/{workspace.pk}/runs/"
    job = client.post(
        runs_url,
        {"thread_id": "t", "prompt": "p", "command": "mkdir -p artifacts && echo 1 > artifacts/a"},
        format="json",
    ).json()["id"]
    interactive = client.post(runs_url, {"thread_id": "t", "prompt": "p"}, format="json").json()
    _wait_until(lambda: SandboxRun.objects.get(pk=job).status == "succeeded", "the job")
    _wait_until(
        lambda: SandboxRun.objects.get(pk=interactive["id"]).status == "running", "the boot"
    )
    for _ in range(2):
        exec_url = f"/api/v1/runs/{interactive['id']}/exec/"
        assert client.post(exec_url, {"command": "echo hi"}, format="json").status_code == 200

    # The sweep ends the interactive run as idle; reconcile kills a sandbox no run owns.
    two_hours_ago = timezone.now() - timedelta(hours=2)
    SandboxRun.objects.filter(pk=interactive["id"]).update(
        last_activity_at=two_hours_ago, expires_at=two_hours_ago
    )
    assert sweep.sandboxes_sweep().killed == 1
    orphan = local_sandboxes.create(
        template="",
        metadata={**app_tags(), "run_id": str(uuid.uuid4()), "workspace_id": "w"},
        envs={},
        timeout_s=600,
    )
    report = reconcile.sandboxes_reconcile()
    assert (report.killed, report.errors) == (1, 0), report.actions
    assert orphan.sandbox_id not in {s.sandbox_id for s in local_sandboxes.list_sandboxes({})}
    reconcile.sandboxes_reconcile()  # a second pass, with nothing to do

    # Webhooks: one receiver answers 500 (retrying), another 200 (succeeded).
    metrics_on.WEBHOOK_ALLOW_PRIVATE = metrics_on.WEBHOOK_ALLOW_HTTP = True
    for answer in (500, 200):
        webhooks.webhook_create(
            workspace=workspace,
            actor=Actor(user=owner),
            url=receivers(answer).url,
            event_types=["workspace.renamed"],
        )
    services.workspace_rename(workspace=workspace, name="Renamed", actor=Actor(user=owner))
    webhooks.deliver(list(WebhookDelivery.objects.values_list("pk", flat=True)))

    # The job's artifacts wait for review; the older one for two hours.
    pending = Artifact.objects.filter(review_state="pending")
    assert pending.count() == 2  # the file and the job's log
    Artifact.objects.filter(pk=pending.earliest("created_at").pk).update(
        created_at=timezone.now() - timedelta(hours=2)
    )

    samples = scrape()

    assert value(samples, "airlock_runs", status="succeeded", end_reason="completed") == 1
    assert value(samples, "airlock_runs", status="canceled", end_reason="idle_timeout") == 1
    assert value(samples, "airlock_runs", status="booting", end_reason="") == 0
    assert value(samples, "airlock_runs", status="running", end_reason="") == 0
    assert value(samples, "airlock_run_oldest_booting_age_seconds") == 0

    boots = [r.running_at - r.created_at for r in SandboxRun.objects.all() if r.running_at]
    assert value(samples, "airlock_run_boot_seconds_count") == 2
    assert value(samples, "airlock_run_boot_seconds_sum") == pytest.approx(
        sum(b.total_seconds() for b in boots), abs=1e-3
    )
    assert value(samples, "airlock_run_boot_seconds_bucket", le="+Inf") == 2
    assert value(samples, "airlock_run_boot_seconds_bucket", le="300.0") == 2
    within_1s = sum(1 for b in boots if b.total_seconds() <= 1)
    assert value(samples, "airlock_run_boot_seconds_bucket", le="1.0") == within_1s

    assert value(samples, "airlock_command_duration_seconds_count", kind="exec") == 2
    assert value(samples, "airlock_command_duration_seconds_count", kind="job") == 1
    assert value(samples, "airlock_command_duration_seconds_count", kind="background") == 0
    assert value(samples, "airlock_command_duration_seconds_bucket", kind="exec", le="+Inf") == 2
    assert value(samples, "airlock_command_duration_seconds_sum", kind="exec") > 0

    assert value(samples, "airlock_maintenance_total", task="sweep", outcome="passes") == 1
    assert value(samples, "airlock_maintenance_total", task="sweep", outcome="killed") == 1
    assert ("airlock_maintenance_total", frozenset({("task", "sweep"), ("outcome", "errors")})) \
        not in samples  # fmt: skip
    assert value(samples, "airlock_maintenance_total", task="reconcile", outcome="passes") == 2
    assert value(samples, "airlock_maintenance_total", task="reconcile", outcome="killed") == 1
    last_sweep = value(samples, "airlock_maintenance_last_pass_timestamp_seconds", task="sweep")
    assert time.time() - 120 < last_sweep <= time.time()

    assert value(samples, "airlock_reviews_pending") == 2
    assert 7200 <= value(samples, "airlock_review_oldest_pending_age_seconds") < 7200 + 300

    assert value(samples, "airlock_webhook_deliveries", outcome="succeeded") == 1
    assert value(samples, "airlock_webhook_deliveries", outcome="retrying") == 1
    assert value(samples, "airlock_webhook_deliveries", outcome="failed") == 0
    assert value(samples, "airlock_broker_up") == 1


@pytest.mark.django_db
def test_a_run_stuck_booting_shows_its_age(metrics_on: Any, workspace: Any) -> None:
    from tests.factories import make_run

    run = make_run(workspace=workspace)  # booting, and no worker will boot it
    SandboxRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    samples = scrape()
    assert value(samples, "airlock_runs", status="booting", end_reason="") == 1
    assert 600 <= value(samples, "airlock_run_oldest_booting_age_seconds") < 900


# --- the broker --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_queue_depth_is_what_waits_in_the_broker(metrics_on: Any) -> None:
    with celery_app.connection_for_write() as conn:
        celery_app.control.purge(connection=conn)
    queue = celery_app.conf.task_default_queue
    assert value(scrape(), "airlock_queue_messages", queue=queue) == 0
    try:
        for _ in range(3):  # nothing consumes them: no worker in this test
            celery_app.send_task("sandboxes.tasks.sweep_sandboxes")
        assert value(scrape(), "airlock_queue_messages", queue=queue) == 3
    finally:
        with celery_app.connection_for_write() as conn:
            celery_app.control.purge(connection=conn)


@pytest.mark.django_db
@pytest.mark.usefixtures("dead_broker")
def test_a_broker_that_is_down_is_a_value_not_a_failed_scrape(metrics_on: Any) -> None:
    samples = scrape()
    assert value(samples, "airlock_broker_up") == 0
    assert not any(name == "airlock_queue_messages" for name, _ in samples)
    assert value(samples, "airlock_reviews_pending") == 0  # the rest is still there

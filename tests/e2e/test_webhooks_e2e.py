"""The webhook outbox with real Celery processes: a worker killed (SIGKILL) in the middle of a
delivery loses nothing — beat's sweep sends it again once the attempt's lease has run out."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tests.e2e.conftest import wait_for
from tests.factories import UserFactory, make_workspace
from tests.fakes.receiver import HANG
from workspaces import services, webhooks
from workspaces.access import Actor
from workspaces.models import WebhookDelivery

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WORKER_ENV = {
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_ALLOW_HTTP": "true",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_SWEEP_INTERVAL_S": "1",
}


def test_a_delivery_survives_a_worker_killed_between_commit_and_send(
    settings: Any, start_celery: Any, receivers: Any
) -> None:
    from config.celery import app

    settings.WEBHOOK_ALLOW_PRIVATE = settings.WEBHOOK_ALLOW_HTTP = True
    receiver = receivers(HANG)  # the first attempt never gets an answer
    workspace = make_workspace(owner=UserFactory())
    owner = Actor(user=workspace.owner)
    _, secret = webhooks.webhook_create(workspace=workspace, actor=owner, url=receiver.url)
    doomed = start_celery("worker", **WORKER_ENV)

    services.workspace_rename(workspace=workspace, name="Renamed", actor=owner)  # commits
    assert receiver.wait_for(1), doomed.log()  # the worker is inside the attempt …
    os.killpg(doomed.process.pid, signal.SIGKILL)  # … and dies there
    doomed.process.wait(10)
    with app.connection_for_write() as conn:  # its message is gone too: only the outbox is left
        app.control.purge(connection=conn)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)

    receiver.release()
    worker = start_celery("worker", **WORKER_ENV)
    beat = start_celery("beat", **WORKER_ENV)

    def delivered() -> bool:
        delivery.refresh_from_db()
        return delivery.status == "succeeded"

    wait_for(delivered, 60, what="the delivery", logs=lambda: worker.log() + beat.log())
    assert delivery.attempts == 2
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.verified(secret)["type"] == "workspace.renamed"

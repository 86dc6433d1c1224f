"""workspaces/migrations/0005_webhook_secrets_sealed.py: secrets kept in clear by the first
webhook release are sealed, and still sign."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from workspaces.models import WebhookEndpoint

BEFORE = [("workspaces", "0004_webhook_delivery_retried_event")]
AFTER = [("workspaces", "0005_webhook_secrets_sealed")]


def _migrate(targets: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def back_to_the_latest() -> Any:
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest")
def test_secrets_in_clear_are_sealed_and_unsealed_back() -> None:
    old = _migrate(BEFORE)
    User = old.get_model("auth", "User")
    Workspace = old.get_model("workspaces", "Workspace")
    Endpoint = old.get_model("workspaces", "WebhookEndpoint")
    owner = User.objects.create(username="olivia")
    workspace = Workspace.objects.create(name="Lab", owner=owner)
    endpoint = Endpoint.objects.create(
        workspace=workspace, url="https://example.com/hook", secret="whsec_plain"
    )

    _migrate(AFTER)
    sealed = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert "whsec_plain" not in sealed.sealed_secret
    assert sealed.secret == "whsec_plain"

    back = _migrate(BEFORE)
    assert back.get_model("workspaces", "WebhookEndpoint").objects.get(pk=endpoint.pk).secret == (
        "whsec_plain"
    )

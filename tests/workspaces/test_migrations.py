"""workspaces/migrations/0005_webhook_secrets_sealed.py: secrets kept in clear by the first
webhook release are sealed, and still sign."""

from __future__ import annotations

import pytest

from tests.conftest import migrate_to
from workspaces.models import WebhookEndpoint

BEFORE = [("workspaces", "0004_webhook_delivery_retried_event")]
AFTER = [("workspaces", "0005_webhook_secrets_sealed")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest")
def test_secrets_in_clear_are_sealed_and_unsealed_back() -> None:
    old = migrate_to(BEFORE)
    User = old.get_model("auth", "User")
    Workspace = old.get_model("workspaces", "Workspace")
    Endpoint = old.get_model("workspaces", "WebhookEndpoint")
    owner = User.objects.create(username="olivia")
    workspace = Workspace.objects.create(name="Lab", owner=owner)
    endpoint = Endpoint.objects.create(
        workspace=workspace, url="https://example.com/hook", secret="whsec_plain"
    )

    migrate_to(AFTER)
    sealed = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert "whsec_plain" not in sealed.sealed_secret
    assert sealed.secret == "whsec_plain"

    back = migrate_to(BEFORE)
    assert back.get_model("workspaces", "WebhookEndpoint").objects.get(pk=endpoint.pk).secret == (
        "whsec_plain"
    )

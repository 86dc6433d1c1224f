"""The workspaces app's operator commands (workspaces/management/commands/): thin wrappers
over the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError

from tests.conftest import run_command
from workspaces.models import ApiKey, Event


@pytest.mark.django_db
def test_create_api_key_prints_the_secret_once(workspace: Any) -> None:
    out, _ = run_command("create_api_key", str(workspace.pk), "--name", "ci", "--role", "admin")
    assert "alk_" in out and "not shown again" in out
    key = ApiKey.objects.get(name="ci")
    assert (key.role, key.created_by) == ("admin", workspace.owner)
    assert Event.objects.filter(type="api_key.created", subject_id=str(key.pk)).count() == 1


@pytest.mark.django_db
def test_create_api_key_refuses_an_unknown_workspace(db: Any) -> None:
    with pytest.raises(CommandError, match="No workspace"):
        run_command("create_api_key", "00000000-0000-0000-0000-000000000000", "--name", "ci")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_bootstrap_demo_is_idempotent(settings: Any, tmp_path: Any) -> None:
    settings.VAR_DIR = tmp_path
    (first, _), (second, _) = run_command("bootstrap_demo"), run_command("bootstrap_demo")
    assert first == second
    assert "Password:" in first and "curl" in first

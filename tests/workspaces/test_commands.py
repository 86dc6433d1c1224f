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
    for reference in ("00000000-0000-0000-0000-000000000000", "Nowhere"):
        with pytest.raises(CommandError, match=f"^No workspace '{reference}'"):
            run_command("create_api_key", reference, "--name", "ci")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_create_api_key_takes_the_workspace_by_name(workspace: Any) -> None:
    run_command("create_api_key", "Lab", "--name", "ci")
    assert ApiKey.objects.get(name="ci").workspace == workspace


@pytest.mark.django_db
def test_bootstrap_demo_is_idempotent(settings: Any, tmp_path: Any) -> None:
    settings.VAR_DIR = tmp_path
    (first, _), (second, _) = run_command("bootstrap_demo"), run_command("bootstrap_demo")
    assert first == second
    assert "Password:" in first and "curl" in first


@pytest.mark.django_db
def test_bootstrap_demo_keeps_what_it_prints_in_var_demo_txt(settings: Any, tmp_path: Any) -> None:
    settings.VAR_DIR = tmp_path
    out, _ = run_command("bootstrap_demo", "--base-url", "http://127.0.0.1:9123")
    demo = tmp_path / "demo.txt"
    assert demo.read_text() == out.lstrip("\n")
    assert "curl -s -X POST http://127.0.0.1:9123/api/v1/workspaces/" in out
    assert demo.stat().st_mode & 0o777 == 0o600  # it holds the passwords and the key


@pytest.mark.django_db
def test_bootstrap_demo_makes_a_reviewer_who_can_decide_the_demo_keys_runs(
    settings: Any, tmp_path: Any
) -> None:
    import json

    from django.contrib.auth import get_user_model

    from artifacts import review
    from config.exceptions import PermissionDenied
    from tests.artifacts.conftest import make_artifact
    from tests.factories import make_run
    from workspaces import selectors
    from workspaces.access import Actor

    settings.VAR_DIR = tmp_path
    out, _ = run_command("bootstrap_demo")
    saved = json.loads((tmp_path / "demo_credentials.json").read_text())
    reviewer = get_user_model().objects.get(username="reviewer")
    assert reviewer.is_staff and not reviewer.is_superuser
    assert reviewer.check_password(saved["reviewer_password"])
    assert saved["reviewer_password"] in out and "Reviewer:" in out
    assert "wait_s=60" in out and "approve answer.txt" in out

    # What the printed flow does: the demo key starts a run; the reviewer decides; the agent
    # (the key) sees the decision.
    key = selectors.api_key_find(raw_key=saved["api_key"])
    assert key is not None
    run = make_run(workspace=key.workspace, status="succeeded", created_by=key.created_by,
                   api_key=key)  # fmt: skip
    artifact = make_artifact(run, title="answer.txt", data=b"42\n")
    with pytest.raises(PermissionDenied):  # the demo user started it: not theirs to review
        review.artifact_review(
            artifact=artifact, actor=Actor(user=key.created_by), decision="approve"
        )
    review.artifact_review(artifact=artifact, actor=Actor(user=reviewer), decision="approve")
    artifact.refresh_from_db()
    assert artifact.review_state == "approved"

    run_command("bootstrap_demo")  # again: the same reviewer, still an admin, same password
    again = json.loads((tmp_path / "demo_credentials.json").read_text())
    assert again["reviewer_password"] == saved["reviewer_password"]
    assert get_user_model().objects.filter(username="reviewer").count() == 1

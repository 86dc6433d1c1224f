"""sandboxes/migrations/0003_transitions_to_trail.py: the first release's transition records
move onto the trail, with every run's and artifact's creation, in the order they happened."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tests.conftest import migrate_to

BEFORE = [
    ("sandboxes", "0002_command_history"),
    ("workspaces", "0002_event"),
    ("artifacts", "0001_initial"),
]
AFTER = [("sandboxes", "0003_transitions_to_trail")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_the_latest")
def test_transition_records_become_events_in_time_order() -> None:
    old = migrate_to(BEFORE)
    User = old.get_model("auth", "User")
    Workspace = old.get_model("workspaces", "Workspace")
    SandboxRun = old.get_model("sandboxes", "SandboxRun")
    Artifact = old.get_model("artifacts", "Artifact")
    TransitionLog = old.get_model("sandboxes", "TransitionLog")
    ContentType = old.get_model("contenttypes", "ContentType")

    t0 = timezone.now() - timedelta(hours=1)
    owner = User.objects.create(username="olivia")
    workspace = Workspace.objects.create(name="Lab", owner=owner, created_at=t0)
    run = SandboxRun.objects.create(
        workspace=workspace, created_by=owner, thread_id="t", prompt="p", created_at=t0,
        env={"TOKEN": "secret"}, max_duration_ms=60_000, idle_timeout_ms=60_000,
    )  # fmt: skip
    artifact = Artifact.objects.create(
        run=run, workspace=workspace, thread_id="t", type="log", title="Command output",
        file="artifacts/x/log", content_type="text/plain", size=3, sha256="0" * 64,
        created_at=t0 + timedelta(seconds=3),
    )  # fmt: skip
    run_type = ContentType.objects.get_or_create(app_label="sandboxes", model="sandboxrun")[0]
    artifact_type = ContentType.objects.get_or_create(app_label="artifacts", model="artifact")[0]
    for seconds, content_type, object_id, transition, source, state, actor, by in [
        (1, run_type, run.pk, "mark_running", "booting", "running", "system:start", None),
        (2, run_type, run.pk, "succeed", "running", "succeeded", "system:job", None),
        (4, artifact_type, artifact.pk, "approve", "pending", "approved", "user:olivia", owner),
        (5, run_type, "00000000-0000-0000-0000-000000000000", "cancel", "running", "canceled",
         "user:ghost", None),  # its run was deleted: nowhere to file it
    ]:  # fmt: skip
        TransitionLog.objects.create(
            timestamp=t0 + timedelta(seconds=seconds), content_type=content_type,
            object_id=str(object_id), transition=transition, source_state=source, state=state,
            actor=actor, by=by,
        )  # fmt: skip

    new = migrate_to(AFTER)
    Event = new.get_model("workspaces", "Event")
    rows = list(Event.objects.order_by("id"))

    assert [(e.type, e.actor) for e in rows] == [
        ("run.created", "user:olivia"),
        ("run.running", "system:start"),
        ("run.succeeded", "system:job"),
        ("artifact.created", "system:execute_run_command"),
        ("artifact.approved", "user:olivia"),
    ]
    assert all(e.workspace_id == workspace.pk and e.run_id == run.pk for e in rows)
    approved = rows[-1]
    assert approved.actor_user_id == owner.pk
    assert approved.data["transition"] == "approve"
    assert (approved.data["from"], approved.data["to"]) == ("pending", "approved")
    assert rows[0].data["env_names"] == ["TOKEN"]
    assert "secret" not in str(rows[0].data)
    assert "sandboxes_transitionlog" not in connection.introspection.table_names()

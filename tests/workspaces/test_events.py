"""workspaces/events.py: the one trail. Every write of SPEC §10 records exactly one event, with
its actor, in the write's own transaction; transitions are events; nothing secret is recorded."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from artifacts import capture, review
from sandboxes import execution, services
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import make_artifact
from tests.factories import UserFactory, make_run, make_workspace
from tests.sandboxes.fake_backend import FakeBackend, fake_backend_fixture, start_run  # noqa: F401
from workspaces import events
from workspaces import services as workspace_services
from workspaces.access import Actor
from workspaces.models import Event, Workspace

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-value-never-on-the-trail"


def _new_events(action: Callable[[], Any]) -> list[Event]:
    last = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    action()
    return list(Event.objects.filter(id__gt=last).order_by("id"))


def _one(action: Callable[[], Any]) -> Event:
    [event] = _new_events(action)
    return event


# --- the helper --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # no test transaction around it
def test_an_event_outside_a_transaction_is_refused(workspace: Workspace, owner: Any) -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        events.record(actor=Actor(user=owner), type="workspace.renamed", subject=workspace)


def test_an_event_rolls_back_with_its_write(workspace: Workspace, owner: Any) -> None:
    before = Event.objects.count()

    def write_then_fail() -> None:
        with transaction.atomic():
            events.record(actor=Actor(user=owner), type="workspace.renamed", subject=workspace)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        write_then_fail()
    assert Event.objects.count() == before


def test_ids_only_grow_and_are_the_cursor(workspace: Workspace, owner: Any) -> None:
    for name in ("a", "b", "c"):
        workspace_services.workspace_rename(workspace=workspace, name=name, actor=Actor(user=owner))
    ids = list(Event.objects.filter(type="workspace.renamed").values_list("id", flat=True))
    assert len(ids) == 3
    assert ids == sorted(ids)


def test_a_transition_without_an_actor_is_refused(workspace: Workspace) -> None:
    run = make_run(workspace=workspace, status="running")
    with pytest.raises(TypeError), transaction.atomic():
        run.cancel()  # type: ignore[call-arg]


def test_a_transition_is_one_event_carrying_the_state_change(workspace: Workspace) -> None:
    run = make_run(workspace=workspace, status="running")
    event = _one(lambda: services.run_cancel(run=run, actor=Actor(user=workspace.owner)))
    assert (event.type, event.actor, event.actor_user_id) == (
        "run.canceled",
        "user:olivia",
        workspace.owner.pk,
    )
    assert (event.subject_type, event.subject_id) == ("run", str(run.pk))
    assert (event.run_id, event.thread_id, event.workspace_id) == (
        run.pk,
        run.thread_id,
        workspace.pk,
    )
    assert event.data["transition"] == "cancel"
    assert (event.data["from"], event.data["to"]) == ("running", "canceled")
    assert event.data["end_reason"] == "canceled_by_user"


def test_a_key_is_recorded_as_the_key_and_its_creator(workspace: Workspace) -> None:
    key, _ = workspace_services.api_key_create(
        workspace=workspace, name="agent", role="admin", actor=Actor(user=workspace.owner)
    )
    actor = Actor(user=workspace.owner, api_key=key)
    event = _one(lambda: workspace_services.api_key_revoke(api_key=key, actor=actor))
    assert event.actor == f"api_key:{key.prefix}"
    assert (event.actor_user_id, event.actor_api_key_id) == (workspace.owner.pk, key.pk)


def test_a_deleted_workspace_keeps_its_trail(fake_backend: FakeBackend, owner: Any) -> None:
    workspace = make_workspace(owner=owner, name="Gone soon")
    workspace_id = workspace.pk
    workspace_services.workspace_delete(workspace=workspace, actor=Actor(user=owner))
    types = list(Event.objects.filter(workspace_id=workspace_id).values_list("type", flat=True))
    assert types == ["workspace.created", "workspace.deleted"]


# --- every write of SPEC §10, exactly one event each -------------------------------------------


def test_workspace_writes(owner: Any) -> None:
    actor = Actor(user=owner)
    holder: dict[str, Workspace] = {}

    def create() -> None:
        holder["ws"] = workspace_services.workspace_create(name="Lab", owner=owner)

    created = _one(create)
    workspace = holder["ws"]
    assert (created.type, created.actor, created.data) == (
        "workspace.created",
        "user:olivia",
        {"name": "Lab"},
    )
    renamed = _one(
        lambda: workspace_services.workspace_rename(workspace=workspace, name="Lab 2", actor=actor)
    )
    assert (renamed.type, renamed.data) == ("workspace.renamed", {"from": "Lab", "to": "Lab 2"})
    # Nothing changes, nothing is recorded.
    assert (
        _new_events(
            lambda: workspace_services.workspace_rename(
                workspace=workspace, name="Lab 2", actor=actor
            )
        )
        == []
    )


def test_member_writes(workspace: Workspace, owner: Any) -> None:
    actor = Actor(user=owner)
    newcomer: Any = UserFactory(username="nina")
    holder: dict[str, Any] = {}

    def add() -> None:
        holder["m"] = workspace_services.membership_add(
            workspace=workspace, user=newcomer, role="member", actor=actor
        )

    added = _one(add)
    membership = holder["m"]
    assert (added.type, added.subject_type, added.subject_id) == (
        "member.added",
        "member",
        str(newcomer.pk),
    )
    assert added.data == {"user_id": newcomer.pk, "username": "nina", "role": "member"}
    changed = _one(
        lambda: workspace_services.membership_change_role(
            membership=membership, role="admin", actor=actor
        )
    )
    assert (changed.type, changed.data["from"], changed.data["to"]) == (
        "member.role_changed",
        "member",
        "admin",
    )
    assert (
        _new_events(
            lambda: workspace_services.membership_change_role(
                membership=membership, role="admin", actor=actor
            )
        )
        == []
    )
    removed = _one(lambda: workspace_services.membership_remove(membership=membership, actor=actor))
    assert (removed.type, removed.data["left"]) == ("member.removed", False)


def test_leaving_is_recorded_as_leaving(workspace: Workspace, member: Any) -> None:
    membership = workspace.memberships.get(user=member)
    event = _one(
        lambda: workspace_services.membership_remove(
            membership=membership, actor=Actor(user=member)
        )
    )
    assert (event.type, event.actor, event.data["left"]) == ("member.removed", "user:mia", True)


def test_api_key_writes_never_record_the_secret(workspace: Workspace, owner: Any) -> None:
    actor = Actor(user=owner)
    holder: dict[str, Any] = {}

    def create() -> None:
        holder["key"], holder["secret"] = workspace_services.api_key_create(
            workspace=workspace, name="ci", role="member", actor=actor
        )

    created = _one(create)
    key, secret = holder["key"], holder["secret"]
    assert (created.type, created.data) == (
        "api_key.created",
        {"name": "ci", "role": "member", "prefix": key.prefix},
    )
    assert secret not in json.dumps(created.data)
    revoked = _one(lambda: workspace_services.api_key_revoke(api_key=key, actor=actor))
    assert revoked.type == "api_key.revoked"
    assert _new_events(lambda: workspace_services.api_key_revoke(api_key=key, actor=actor)) == []


def test_run_lifecycle_writes(fake_backend: FakeBackend, workspace: Workspace) -> None:
    actor = Actor(user=workspace.owner)
    holder: dict[str, SandboxRun] = {}

    def create() -> None:
        holder["run"], _ = services.run_create(
            workspace=workspace,
            actor=actor,
            thread_id="t-1",
            prompt="do it",
            env={"TOKEN": SECRET},
            files={"/home/user/in.txt": SECRET},
            command="cat in.txt",
        )

    created = _one(create)
    run = holder["run"]
    assert (created.type, created.data["env_names"], created.data["files"]) == (
        "run.created",
        ["TOKEN"],
        ["/home/user/in.txt"],
    )
    running = _one(lambda: services.run_boot(run_id=str(run.pk)))
    assert (running.type, running.actor) == ("run.running", "system:start_sandbox_run")
    run.refresh_from_db()
    succeeded = _one(lambda: services.run_complete(run=run, actor=actor, status="succeeded"))
    assert succeeded.type == "run.succeeded"
    failed_run = start_run(workspace=workspace)
    failed = _one(lambda: services.run_complete(run=failed_run, actor=actor, status="failed"))
    assert (failed.type, failed.data["end_reason"]) == ("run.failed", "command_failed")
    _assert_no_secret()


def test_exec_is_two_command_events_and_never_its_env(
    fake_backend: FakeBackend, workspace: Workspace
) -> None:
    run = start_run(workspace=workspace)
    actor = Actor(user=workspace.owner)
    started, finished = _new_events(
        lambda: execution.run_exec(
            run=run, actor=actor, command="echo hi", env={"TOKEN": SECRET}, cwd="/home/user/x"
        )
    )
    assert (started.type, started.subject_type, started.run_id) == (
        "command.started",
        "command",
        run.pk,
    )
    assert started.data == {
        "kind": "exec",
        "command": "echo hi",
        "cwd": "/home/user/x",
        "env_names": ["TOKEN"],
    }
    assert finished.type == "command.finished"
    assert finished.subject_id == started.subject_id
    assert (finished.data["exit_code"], finished.data["timed_out"]) == (0, False)
    _assert_no_secret()


def test_an_upload_is_one_event_with_path_and_size(
    fake_backend: FakeBackend, workspace: Workspace
) -> None:
    run = start_run(workspace=workspace)
    event = _one(
        lambda: execution.run_upload_file(
            run=run,
            actor=Actor(user=workspace.owner),
            path="/home/user/data.csv",
            stream=io.BytesIO(SECRET.encode()),
        )
    )
    assert (event.type, event.data) == (
        "file.uploaded",
        {"path": "/home/user/data.csv", "size": len(SECRET)},
    )
    _assert_no_secret()


def test_artifact_writes_never_record_content(
    fake_backend: FakeBackend, workspace: Workspace, admin_user: Any
) -> None:
    run = start_run(workspace=workspace)
    fake_backend.write_file(run.sandbox_id, "/home/user/out.txt", SECRET.encode())
    holder: dict[str, Any] = {}

    def capture_it() -> None:
        holder["a"] = capture.artifact_capture(
            run=run, actor=Actor(user=workspace.owner), path="/home/user/out.txt"
        )

    created = _one(capture_it)
    artifact = holder["a"]
    assert (created.type, created.subject_id, created.data["sandbox_path"]) == (
        "artifact.created",
        str(artifact.pk),
        "/home/user/out.txt",
    )
    approved = _one(
        lambda: review.artifact_review(
            artifact=artifact, actor=Actor(user=admin_user), decision="approve"
        )
    )
    assert (approved.type, approved.actor) == ("artifact.approved", "user:adam")
    other = make_artifact(run)
    rejected = _one(
        lambda: review.artifact_review(
            artifact=other, actor=Actor(user=admin_user), decision="reject", comment="no"
        )
    )
    assert (rejected.type, rejected.data["comment"]) == ("artifact.rejected", "no")
    _assert_no_secret()


def _assert_no_secret() -> None:
    for event in Event.objects.all():
        assert SECRET not in json.dumps(event.data), event

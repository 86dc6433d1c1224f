from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import factory
from django.contrib.auth import get_user_model

from sandboxes.models import SandboxRun
from workspaces import services
from workspaces.access import Actor
from workspaces.models import ApiKey, Role, Workspace

if TYPE_CHECKING:
    from django.contrib.auth.models import User as DjangoUser

User = get_user_model()


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    # Hashed before the row is written: a post-generation set_password is never saved.
    password = factory.django.Password("correct horse battery")


def make_user(**fields: Any) -> DjangoUser:
    """A user (username user<n>, password "correct horse battery" unless given)."""
    return cast("DjangoUser", UserFactory(**fields))


def make_workspace(
    *, owner: Any, name: str = "Lab", members: dict[Any, str] | None = None
) -> Workspace:
    """A workspace made the way users make them: through the services."""
    workspace = services.workspace_create(name=name, owner=owner)
    for user, role in (members or {}).items():
        services.membership_add(workspace=workspace, user=user, role=role, actor=Actor(user=owner))
    return workspace


def make_api_key(
    *, workspace: Workspace, role: str = Role.MEMBER, name: str = "agent"
) -> tuple[ApiKey, str]:
    return services.api_key_create(
        workspace=workspace, name=name, role=role, actor=Actor(user=workspace.owner)
    )


def make_run(*, workspace: Workspace, status: str = "booting", **fields: object) -> SandboxRun:
    """A run in any status, written directly: tests of the state machine need runs in states
    that only a sandbox could otherwise produce."""
    from django.utils import timezone

    defaults: dict[str, object] = {
        "thread_id": "thread-1",
        "prompt": "do the thing",
        "created_by": workspace.owner,
        "max_duration_ms": 3_600_000,
        "idle_timeout_ms": 900_000,
    }
    if status != "booting":
        defaults.update(sandbox_id=f"sbx-{SandboxRun.objects.count()}", running_at=timezone.now())
    run = SandboxRun(workspace=workspace, **{**defaults, **fields})
    if status == "running" and "expires_at" not in fields:
        run.expires_at = run.sweep_due()[0]  # as mark_running sets it
    if status == "paused":  # as pause sets them
        run.paused_at = fields.get("paused_at", timezone.now())  # type: ignore[assignment]
        run.expires_at = fields.get("expires_at", run.deadline)  # type: ignore[assignment]
    run.save()
    if status != "booting":
        SandboxRun.objects.filter(pk=run.pk).update(status=status)
        run.refresh_from_db()
    return run


def transitions(*subject_ids: Any) -> Any:
    """The trail's transition events of the given objects (runs, artifacts), oldest first."""
    from workspaces.models import Event

    return Event.objects.filter(
        subject_id__in=[str(pk) for pk in subject_ids], data__has_key="transition"
    ).order_by("id")


def create_run(*, workspace: Workspace, actor: Actor | None = None, **fields: Any) -> SandboxRun:
    """A new booting run made the way the API makes it (sandboxes.services.run_create), by the
    owner unless told otherwise; its start task is enqueued on commit, not run."""
    from sandboxes import services as run_services

    fields = {"thread_id": "t-1", "prompt": "test", **fields}
    run, created = run_services.run_create(
        workspace=workspace, actor=actor or Actor(user=workspace.owner), **fields
    )
    assert created
    return run


def sandboxes_of(backend: Any, run: SandboxRun) -> list[Any]:
    """The live sandboxes a backend holds for a run, found by the run_id tag."""
    return backend.list_sandboxes({"run_id": str(run.pk)})


def run_state(run: SandboxRun) -> tuple[str, str]:
    """The run's status and end reason as stored now (the copy in hand is refreshed)."""
    run.refresh_from_db()
    return run.status, run.end_reason


def key_actor(*, workspace: Workspace, role: str = Role.MEMBER) -> Actor:
    """The actor of a new API key of the workspace (made by its owner), as the API sees it."""
    key, _ = make_api_key(workspace=workspace, role=role)
    return Actor(user=key.created_by, api_key=key)


def record_event(subject: Any, type: str, actor: Actor | None = None) -> Any:
    """One event on the trail about `subject`, as a service would record it in its write."""
    from django.db import transaction

    from workspaces import events

    with transaction.atomic():
        return events.record(actor=actor or Actor.system("test"), type=type, subject=subject)

"""Reads, always scoped to what the actor may see."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import uuid
from typing import Any

from django.db.models import QuerySet

from config.exceptions import NotFound
from workspaces import access, keycache
from workspaces.access import Actor
from workspaces.models import (
    ApiKey,
    Event,
    Membership,
    Role,
    WebhookDelivery,
    WebhookEndpoint,
    Workspace,
)


def workspace_list(*, actor: Actor) -> QuerySet[Workspace]:
    """The workspaces the actor belongs to (a key: its one workspace), with `my_role`."""
    if actor.api_key is not None:
        queryset = Workspace.objects.filter(pk=actor.api_key.workspace_id)
    else:
        queryset = Workspace.objects.filter(memberships__user=actor.user)
    return queryset.annotate(my_role=access.role_annotation(actor))


def workspace_get(
    *, actor: Actor, workspace_id: uuid.UUID | str, minimum: Role = Role.MEMBER
) -> tuple[Workspace, Role]:
    """The workspace and the actor's role in it: 404 for outsiders, 403 below `minimum`."""
    workspace = Workspace.objects.filter(pk=workspace_id).first()
    role = access.require(
        access.role_in(actor, workspace.pk if workspace else None), minimum, what="workspace"
    )
    assert workspace is not None
    return workspace, role


def workspace_find(*, reference: str) -> Workspace:
    """An operator's lookup (management commands: shell access, every workspace): the
    workspace whose id or exact name is `reference`. NotFound when none is, or when the name
    is shared (then the error lists the ids to choose from)."""
    with contextlib.suppress(ValueError):
        workspace = Workspace.objects.select_related("owner").filter(pk=uuid.UUID(reference))
        if found := workspace.first():
            return found
    named = list(Workspace.objects.select_related("owner").filter(name=reference)[:10])
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(str(w.pk) for w in named)
        raise NotFound(f"{len(named)} workspaces are named {reference!r}: give an id ({ids}).")
    raise NotFound(f"No workspace {reference!r} (neither an id nor an exact name).")


def membership_list(*, workspace: Workspace) -> QuerySet[Membership]:
    return Membership.objects.filter(workspace=workspace).select_related("user")


def membership_get(*, workspace: Workspace, user_id: int) -> Membership:
    membership = membership_list(workspace=workspace).filter(user_id=user_id).first()
    if membership is None:
        raise NotFound("No such member.")
    return membership


def api_key_list(*, workspace: Workspace) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(workspace=workspace).select_related("created_by")


def api_key_get(*, workspace: Workspace, key_id: uuid.UUID) -> ApiKey:
    key = api_key_list(workspace=workspace).filter(pk=key_id).first()
    if key is None:
        raise NotFound("No such API key.")
    return key


# What services.api_key_create makes: "alk_", 8 hex digits, "_", a URL-safe secret.
_RAW_KEY = re.compile(r"alk_(?P<prefix>[0-9a-f]{8})_[A-Za-z0-9_-]{16,128}")


def api_key_find(*, raw_key: str) -> ApiKey | None:
    """The key a raw secret belongs to, revoked or not; None when it matches nothing.

    Anything not shaped like a key is refused before the database sees it (PostgreSQL rejects
    strings holding NUL, which would otherwise be a 500 from a garbage header)."""
    match = _RAW_KEY.fullmatch(raw_key)
    if match is None:
        return None
    digest = hashlib.sha256(raw_key.encode()).hexdigest()
    cached = keycache.get(digest)  # found under its own digest: the secret matched
    if cached is not None:
        return cached
    key = (
        ApiKey.objects.select_related("workspace", "created_by")
        .filter(prefix=match["prefix"])
        .first()
    )
    if key is None or not hmac.compare_digest(digest, key.secret_hash):
        return None
    keycache.put(key)
    return key


def event_list(
    *,
    workspace: Workspace,
    after: int | None = None,
    types: list[str] | None = None,
    run_id: uuid.UUID | None = None,
    thread_id: str | None = None,
) -> QuerySet[Event]:
    """The workspace's trail, oldest first, after the cursor `after` (an event id)."""
    queryset = Event.objects.filter(workspace_id=workspace.pk)
    if after is not None:
        queryset = queryset.filter(id__gt=after)
    if types:
        queryset = queryset.filter(type__in=types)
    if run_id is not None:
        queryset = queryset.filter(run_id=run_id)
    if thread_id is not None:
        queryset = queryset.filter(thread_id=thread_id)
    return queryset.order_by("id")


def subject_events(*, kind: str, subject_id: Any) -> QuerySet[Event]:
    """What the trail holds about one object, oldest first (the admin's history panels)."""
    return Event.objects.filter(subject_type=kind, subject_id=str(subject_id)).order_by("id")


# What a workspace's own history shows: its settings and people, not its runs' work.
WORKSPACE_SUBJECTS = ("workspace", "member", "api_key", "webhook", "review_policy")


def workspace_history(*, workspace: Workspace) -> QuerySet[Event]:
    """The workspace's own writes (renames, members, keys, webhooks, policy), oldest first."""
    return Event.objects.filter(
        workspace_id=workspace.pk, subject_type__in=WORKSPACE_SUBJECTS
    ).order_by("id")


def webhook_list(*, workspace: Workspace) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(workspace=workspace)


def webhook_get(*, workspace: Workspace, webhook_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = webhook_list(workspace=workspace).filter(pk=webhook_id).first()
    if endpoint is None:
        raise NotFound("No such webhook endpoint.")
    return endpoint


def delivery_list(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(endpoint=endpoint).select_related("endpoint")


def delivery_get(*, workspace: Workspace, delivery_id: uuid.UUID) -> WebhookDelivery:
    delivery = (
        WebhookDelivery.objects.select_related("endpoint")
        .filter(pk=delivery_id, workspace=workspace)
        .first()
    )
    if delivery is None:
        raise NotFound("No such delivery.")
    return delivery


def review_recipients(*, workspace_id: uuid.UUID | str) -> QuerySet[Membership]:
    """Who is told that a run's artifacts wait: the workspace's admins and owners who kept
    `notify_reviews` on, active, with an email address."""
    return (
        Membership.objects.filter(
            workspace_id=workspace_id,
            role__in=access.REVIEWER_ROLES,
            notify_reviews=True,
            user__is_active=True,
        )
        .exclude(user__email="")
        .select_related("user")
    )

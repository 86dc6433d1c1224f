"""Reads, always scoped to what the actor may see."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery, Value

from config.exceptions import NotFound
from workspaces.models import ApiKey, Membership, Role, Workspace
from workspaces.permissions import Actor, effective_role, require_role


def _my_role(actor: Actor) -> Any:
    return Subquery(
        Membership.objects.filter(workspace=OuterRef("pk"), user=actor.user).values("role")[:1]
    )


def workspace_list(*, actor: Actor) -> QuerySet[Workspace]:
    """The workspaces the actor belongs to (a key: its one workspace), with `my_role`."""
    if actor.api_key is not None:
        return Workspace.objects.filter(pk=actor.api_key.workspace_id).annotate(
            my_role=_key_role(actor.api_key)
        )
    return Workspace.objects.filter(memberships__user=actor.user).annotate(my_role=_my_role(actor))


def _key_role(api_key: ApiKey) -> Any:
    return Value(api_key.role)


def workspace_get(
    *, actor: Actor, workspace_id: uuid.UUID | str, minimum: Role = Role.MEMBER
) -> tuple[Workspace, Role]:
    """The workspace and the actor's role in it: 404 for outsiders, 403 below `minimum`."""
    workspace = Workspace.objects.filter(pk=workspace_id).annotate(my_role=_my_role(actor)).first()
    role = effective_role(actor, workspace.pk, workspace.my_role) if workspace is not None else None
    role = require_role(role, minimum)
    assert workspace is not None
    if actor.api_key is not None:
        workspace.my_role = actor.api_key.role
    return workspace, role


def workspace_ids_visible(*, actor: Actor) -> QuerySet[Workspace] | None:
    """Ids of every workspace the actor may read in, for cross-workspace lists.

    None for a superuser (everything)."""
    if actor.is_superuser:
        return None
    return workspace_list(actor=actor).values("pk")  # type: ignore[return-value]


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
    key = (
        ApiKey.objects.select_related("workspace", "created_by")
        .filter(prefix=match["prefix"])
        .first()
    )
    if key is None:
        return None
    digest = hashlib.sha256(raw_key.encode()).hexdigest()
    return key if hmac.compare_digest(digest, key.secret_hash) else None

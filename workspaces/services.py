"""Every write to workspaces, memberships and API keys."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.utils import timezone

from config.exceptions import Conflict, InvalidInput, PermissionDenied
from workspaces.models import ApiKey, ApiKeyRole, Membership, Role, Workspace
from workspaces.permissions import Actor

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

NAME_MAX_LENGTH = 100
# Writing last_used_at on every request would turn each API call into a write.
API_KEY_TOUCH_INTERVAL = timedelta(seconds=60)


def _clean_name(name: str) -> str:
    cleaned = (name or "").strip()
    if not cleaned:
        raise InvalidInput("Name must not be blank.", code="blank")
    if len(cleaned) > NAME_MAX_LENGTH:
        raise InvalidInput(f"Name must be at most {NAME_MAX_LENGTH} characters.", code="too_long")
    return cleaned


@transaction.atomic
def workspace_create(*, name: str, owner: User) -> Workspace:
    """The workspace and its one owner membership, together or not at all."""
    workspace = Workspace.objects.create(name=_clean_name(name), owner=owner)
    Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    logger.info("workspace created id=%s owner=%s", workspace.pk, owner.pk)
    return workspace


def workspace_rename(*, workspace: Workspace, name: str, actor: Actor) -> Workspace:
    workspace.name = _clean_name(name)
    workspace.save(update_fields=["name"])
    logger.info("workspace renamed id=%s by=%s", workspace.pk, actor)
    return workspace


def workspace_delete(*, workspace: Workspace, actor: Actor) -> None:
    """Cancel the workspace's active runs (killing their sandboxes), then delete it all,
    artifact files in storage included."""
    from artifacts.services import workspace_artifact_files_delete
    from sandboxes.services import workspace_runs_cancel

    workspace_id = workspace.pk
    workspace_runs_cancel(workspace=workspace, actor=actor)
    with transaction.atomic():
        workspace_artifact_files_delete(workspace=workspace)  # the stored bytes, on commit
        workspace.delete()
    logger.info("workspace deleted id=%s by=%s", workspace_id, actor)


def _assignable_role(role: str) -> Role:
    if role == Role.OWNER:
        raise InvalidInput("Nobody can be made owner; a workspace has exactly one.", code="owner")
    if role not in (Role.MEMBER, Role.ADMIN):
        raise InvalidInput(f"Unknown role {role!r}.", code="invalid_choice")
    return Role(role)


def membership_add(*, workspace: Workspace, user: User, role: str, actor: Actor) -> Membership:
    assigned = _assignable_role(role)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(workspace=workspace, user=user, role=assigned)
    except IntegrityError as exc:
        raise Conflict(
            f"{user.get_username()} is already a member.", code="already_member"
        ) from exc
    logger.info("member added ws=%s user=%s role=%s by=%s", workspace.pk, user.pk, role, actor)
    return membership


def membership_change_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    assigned = _assignable_role(role)
    if membership.role == Role.OWNER:
        raise PermissionDenied("The owner's role cannot be changed.", code="owner_protected")
    if membership.role != assigned:
        membership.role = assigned
        membership.save(update_fields=["role"])
        logger.info("role changed membership=%s role=%s by=%s", membership.pk, role, actor)
    return membership


def membership_remove(*, membership: Membership, actor: Actor) -> None:
    """Remove a member, or leave when the member is the actor. The owner can do neither."""
    if membership.role == Role.OWNER:
        raise PermissionDenied(
            "The owner cannot be removed and cannot leave the workspace.", code="owner_protected"
        )
    membership.delete()
    logger.info(
        "member removed ws=%s user=%s by=%s", membership.workspace_id, membership.user_id, actor
    )


def api_key_create(
    *, workspace: Workspace, name: str, role: str, actor: Actor
) -> tuple[ApiKey, str]:
    """A new key and its secret. The secret is returned once and never stored."""
    if role not in ApiKeyRole.values:
        raise InvalidInput("An API key's role is member or admin.", code="invalid_choice")
    if actor.user is None:
        # A key acts for the person who made it (and stops when they are deactivated).
        raise PermissionDenied("An API key is created by a person.", code="needs_user")
    prefix = secrets.token_hex(4)
    raw_key = f"alk_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        workspace=workspace,
        name=_clean_name(name),
        role=role,
        prefix=prefix,
        secret_hash=hashlib.sha256(raw_key.encode()).hexdigest(),
        created_by=actor.user,
    )
    logger.info("api key created ws=%s prefix=%s by=%s", workspace.pk, prefix, actor)
    return key, raw_key


def api_key_revoke(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        logger.info("api key revoked prefix=%s by=%s", api_key.prefix, actor)
    return api_key


def api_key_mark_used(*, api_key: ApiKey) -> None:
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= API_KEY_TOUCH_INTERVAL:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now

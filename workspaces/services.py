"""Every write to workspaces, memberships and API keys, each recorded on the trail."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from config.exceptions import Conflict, InvalidInput, PermissionDenied
from workspaces import events, keycache
from workspaces.access import Actor
from workspaces.models import ApiKey, ApiKeyRole, EventType, Membership, Role, Workspace

if TYPE_CHECKING:
    from django.contrib.auth.models import User

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
    events.record(
        actor=Actor(user=owner),
        type=EventType.WORKSPACE_CREATED,
        subject=workspace,
        data={"name": workspace.name},
    )
    return workspace


def workspace_rename(*, workspace: Workspace, name: str, actor: Actor) -> Workspace:
    new_name = _clean_name(name)
    with transaction.atomic():
        current = Workspace.objects.select_for_update().get(pk=workspace.pk)
        if current.name != new_name:
            Workspace.objects.filter(pk=workspace.pk).update(name=new_name)
            events.record(
                actor=actor,
                type=EventType.WORKSPACE_RENAMED,
                subject=workspace,
                data={"from": current.name, "to": new_name},
            )
    workspace.name = new_name
    return workspace


# What apps built on workspaces do when one is deleted (sandboxes: cancel its active runs,
# killing their sandboxes; artifacts: delete its stored files). Each hook runs before the
# deleting transaction and may return a callable to run once the deletion commits. They
# register in their AppConfig.ready(): workspaces never imports the apps above it.
DeleteHook = Callable[[Workspace, Actor], Callable[[], None] | None]
_delete_hooks: list[DeleteHook] = []


def on_workspace_delete(hook: DeleteHook) -> DeleteHook:
    if hook not in _delete_hooks:
        _delete_hooks.append(hook)
    return hook


def workspace_delete(*, workspace: Workspace, actor: Actor) -> None:
    """Everything of the workspace goes: its runs are canceled (sandboxes killed) first, then
    the rows are deleted and, once that commits, the stored artifact files. The trail keeps
    the workspace's events, this one last."""
    after_commit = [then for hook in _delete_hooks if (then := hook(workspace, actor))]
    with transaction.atomic():
        events.record(
            actor=actor,
            type=EventType.WORKSPACE_DELETED,
            subject=workspace,
            data={"name": workspace.name},
        )
        workspace.delete()
        for then in after_commit:
            transaction.on_commit(then)


def _assignable_role(role: str) -> Role:
    if role == Role.OWNER:
        raise InvalidInput("Nobody can be made owner; a workspace has exactly one.", code="owner")
    if role not in (Role.MEMBER, Role.ADMIN):
        raise InvalidInput(f"Unknown role {role!r}.", code="invalid_choice")
    return Role(role)


def _member_data(membership: Membership) -> dict[str, Any]:
    return {"user_id": membership.user_id, "username": membership.user.get_username()}


def membership_add(*, workspace: Workspace, user: User, role: str, actor: Actor) -> Membership:
    assigned = _assignable_role(role)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(workspace=workspace, user=user, role=assigned)
            events.record(
                actor=actor,
                type=EventType.MEMBER_ADDED,
                subject=membership,
                data={**_member_data(membership), "role": assigned.value},
            )
    except IntegrityError as exc:
        raise Conflict(
            f"{user.get_username()} is already a member.", code="already_member"
        ) from exc
    return membership


def membership_change_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    assigned = _assignable_role(role)
    with transaction.atomic():
        current = Membership.objects.select_for_update().get(pk=membership.pk)
        if current.role == Role.OWNER:
            raise PermissionDenied("The owner's role cannot be changed.", code="owner_protected")
        if current.role != assigned:
            Membership.objects.filter(pk=membership.pk).update(role=assigned)
            events.record(
                actor=actor,
                type=EventType.MEMBER_ROLE_CHANGED,
                subject=membership,
                data={**_member_data(membership), "from": current.role, "to": assigned.value},
            )
    membership.role = assigned
    return membership


def membership_set_notify_reviews(
    *, membership: Membership, notify_reviews: bool, actor: Actor
) -> Membership:
    """Whether the member is emailed when a run's artifacts wait for review (admins and
    owners are; members never review)."""
    with transaction.atomic():
        changed = (
            Membership.objects.filter(pk=membership.pk)
            .exclude(notify_reviews=notify_reviews)
            .update(notify_reviews=notify_reviews)
        )
        if changed:
            events.record(
                actor=actor,
                type=EventType.MEMBER_NOTIFY_CHANGED,
                subject=membership,
                data={**_member_data(membership), "notify_reviews": notify_reviews},
            )
    membership.notify_reviews = notify_reviews
    return membership


def membership_remove(*, membership: Membership, actor: Actor) -> None:
    """Remove a member, or leave when the member is the actor. The owner can do neither."""
    if membership.role == Role.OWNER:
        raise PermissionDenied(
            "The owner cannot be removed and cannot leave the workspace.", code="owner_protected"
        )
    leaving = actor.is_person and actor.user is not None and actor.user.pk == membership.user_id
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(pk=membership.pk).exclude(role=Role.OWNER).delete()
        if deleted:
            events.record(
                actor=actor,
                type=EventType.MEMBER_REMOVED,
                subject=membership,
                data={**_member_data(membership), "role": membership.role, "left": leaving},
            )


def api_key_create(
    *, workspace: Workspace, name: str, role: str, actor: Actor
) -> tuple[ApiKey, str]:
    """A new key and its secret. The secret is returned once and never stored."""
    if role not in ApiKeyRole.values:
        raise InvalidInput("An API key's role is member or admin.", code="invalid_choice")
    if actor.user is None:
        # A key acts for the person who made it (and stops when they are deactivated); one
        # an admin key makes acts for that key's creator.
        raise PermissionDenied("An API key is created by a person.", code="needs_user")
    prefix = secrets.token_hex(4)
    raw_key = f"alk_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        key = ApiKey.objects.create(
            workspace=workspace,
            name=_clean_name(name),
            role=role,
            prefix=prefix,
            secret_hash=hashlib.sha256(raw_key.encode()).hexdigest(),
            created_by=actor.user,
        )
        events.record(
            actor=actor,
            type=EventType.API_KEY_CREATED,
            subject=key,
            data={"name": key.name, "role": key.role, "prefix": prefix},
        )
    return key, raw_key


def api_key_revoke(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    """Revoke a key; revoking a revoked key changes nothing and records nothing."""
    now = timezone.now()
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if revoked:
            events.record(
                actor=actor,
                type=EventType.API_KEY_REVOKED,
                subject=api_key,
                data={"name": api_key.name, "prefix": api_key.prefix},
            )
    if revoked:
        api_key.revoked_at = now
        # Forgotten now, and again at the commit of a transaction this one is part of (a
        # request reading the key before that commit may have cached it unrevoked).
        keycache.forget([api_key.secret_hash])
        transaction.on_commit(lambda: keycache.forget([api_key.secret_hash]))
    else:
        api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_mark_used(*, api_key: ApiKey) -> None:
    now = timezone.now()
    due = api_key.last_used_at is None or now - api_key.last_used_at >= API_KEY_TOUCH_INTERVAL
    # A cached copy of the key keeps the time it was cached with: the cache says whether
    # another request marked it within the interval (never re-caching the key itself, which
    # might have been revoked meanwhile).
    if due and keycache.claim_touch(api_key, API_KEY_TOUCH_INTERVAL):
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now

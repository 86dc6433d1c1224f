"""The one tenant resolver: who is acting, and what role they hold in a workspace.

Every selector, API view base, admin and command asks here. Outsiders get 404 (they must not
learn a workspace exists), members whose role is too low get 403. A workspace API key acts only
inside its own workspace, with its own role, whoever created it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.db.models import OuterRef, QuerySet, Subquery, Value

from config.exceptions import NotFound, PermissionDenied
from workspaces.models import ApiKey, Membership, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User

ROLE_RANK = {Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}
REVIEWER_ROLES = (Role.ADMIN, Role.OWNER)


@dataclass(frozen=True)
class Actor:
    """Who does something: a person, a workspace API key (acting for the person who created
    it), or a system task such as the sweep (`Actor.system("sweep")`, no user)."""

    user: User | None
    api_key: ApiKey | None = None
    system_task: str | None = None

    @classmethod
    def system(cls, task: str) -> Actor:
        return cls(user=None, system_task=task)

    @classmethod
    def for_user(cls, user: AbstractBaseUser | AnonymousUser) -> Actor:
        """A signed-in person, e.g. `request.user` in the admin (which lets only signed-in
        staff through) or a user a management command resolved."""
        if not user.is_authenticated:
            raise PermissionDenied("Sign in first.", code="not_authenticated")
        return cls(user=cast("User", user))  # the project's user model is Django's User

    @classmethod
    def from_request(cls, request: Any) -> Actor:
        """The API caller: DRF put the key (if any) in `request.auth`, its creator in
        `request.user`."""
        auth = getattr(request, "auth", None)
        if isinstance(auth, ApiKey):
            return cls(user=request.user, api_key=auth)
        return cls.for_user(request.user)

    @property
    def is_superuser(self) -> bool:
        # A key is limited to its workspace and role, whoever created it.
        return self.api_key is None and self.user is not None and bool(self.user.is_superuser)

    @property
    def is_person(self) -> bool:
        """A person acting as themselves (not through a key, not a system task)."""
        return self.api_key is None and self.user is not None

    def __str__(self) -> str:
        if self.system_task is not None:
            return f"system:{self.system_task}"
        if self.api_key is not None:
            return f"api_key:{self.api_key.prefix}"
        assert self.user is not None
        return f"user:{self.user.get_username()}"


def role_in(actor: Actor, workspace_id: uuid.UUID | str | None) -> Role | None:
    """The role the actor acts with in the workspace; None means outsider. At most one query
    (the membership), none for keys and system tasks."""
    if workspace_id is None:
        return None
    if actor.api_key is not None:
        return Role(actor.api_key.role) if _same(actor.api_key.workspace_id, workspace_id) else None
    if actor.system_task is not None:
        return Role.OWNER  # system tasks act on what they were handed, in any workspace
    if actor.user is None:
        return None
    role = (
        Membership.objects.filter(workspace_id=workspace_id, user=actor.user)
        .values_list("role", flat=True)
        .first()
    )
    if role is not None:
        return Role(role)
    return Role.OWNER if actor.is_superuser else None


def require(role: Role | None, minimum: Role, *, what: str = "workspace") -> Role:
    """404 for an outsider, 403 below `minimum`; the role otherwise."""
    if role is None:
        raise NotFound(f"No such {what}.")
    if ROLE_RANK[role] < ROLE_RANK[minimum]:
        raise PermissionDenied(f"This needs the {minimum.label.lower()} role or higher.")
    return role


def has_role(role: Role | None, minimum: Role) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[minimum]


def visible_workspaces(actor: Actor) -> QuerySet[Any] | list[Any] | None:
    """Ids of every workspace the actor may read in (member or higher), for cross-workspace
    lists; None means every workspace (a superuser)."""
    return _workspaces_with(actor, Role.MEMBER)


def administered_workspaces(actor: Actor) -> QuerySet[Any] | list[Any] | None:
    """Ids of the workspaces where the actor is admin or owner (where they review, manage
    keys and see everything); None means every workspace (a superuser)."""
    return _workspaces_with(actor, Role.ADMIN)


def _workspaces_with(actor: Actor, minimum: Role) -> QuerySet[Any] | list[Any] | None:
    if actor.api_key is not None:
        return [actor.api_key.workspace_id] if has_role(Role(actor.api_key.role), minimum) else []
    if actor.is_superuser:
        return None
    if actor.user is None:
        return []
    roles = [role for role in Role if has_role(role, minimum)]
    return Membership.objects.filter(user=actor.user, role__in=roles).values("workspace_id")


def role_annotation(actor: Actor) -> Any:
    """The actor's role as an annotation on a Workspace queryset (`my_role`)."""
    if actor.api_key is not None:
        return Value(actor.api_key.role)
    return Subquery(
        Membership.objects.filter(workspace=OuterRef("pk"), user=actor.user).values("role")[:1]
    )


def _same(left: Any, right: Any) -> bool:
    return str(left) == str(right)

"""The one permission layer: who is acting, and what role they hold in a workspace.

Outsiders get 404 (they must not learn a workspace exists), members whose role is too low
get 403. Every workspace-scoped route and selector goes through `require_role`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config.exceptions import NotFound, PermissionDenied
from workspaces.models import ApiKey, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import User

ROLE_RANK = {Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


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
    def from_request(cls, request: Any) -> Actor:
        auth = getattr(request, "auth", None)
        return cls(user=request.user, api_key=auth if isinstance(auth, ApiKey) else None)

    @property
    def is_superuser(self) -> bool:
        # A key is limited to its workspace and role, whoever created it.
        return self.api_key is None and self.user is not None and bool(self.user.is_superuser)

    def __str__(self) -> str:
        if self.system_task is not None:
            return f"system:{self.system_task}"
        if self.api_key is not None:
            return f"api_key:{self.api_key.prefix}"
        assert self.user is not None
        return f"user:{self.user.get_username()}"


def effective_role(actor: Actor, workspace_id: Any, membership_role: str | None) -> Role | None:
    """The role the actor acts with in the workspace; None means outsider."""
    if actor.api_key is not None:
        if actor.api_key.workspace_id != workspace_id:
            return None
        return Role(actor.api_key.role)
    if membership_role is not None:
        return Role(membership_role)
    if actor.is_superuser:
        return Role.OWNER
    return None


def require_role(role: Role | None, minimum: Role, *, what: str = "workspace") -> Role:
    if role is None:
        raise NotFound(f"No such {what}.")
    if ROLE_RANK[role] < ROLE_RANK[minimum]:
        raise PermissionDenied(f"This needs the {minimum.label.lower()} role or higher.")
    return role


def has_role(role: Role | None, minimum: Role) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[minimum]

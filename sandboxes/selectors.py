"""Reads of runs, always scoped to what the actor may see."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet

from sandboxes.models import ACTIVE_STATUSES, SandboxRun
from workspaces.models import Membership, Role, Workspace
from workspaces.permissions import Actor, effective_role, has_role, require_role
from workspaces.selectors import workspace_ids_visible

RUN_LIST_RELATED = ("workspace", "created_by", "api_key")


def run_list(*, actor: Actor, workspace: Workspace | None = None) -> QuerySet[SandboxRun]:
    """Runs of one workspace, or of every workspace the actor belongs to."""
    queryset = SandboxRun.objects.select_related(*RUN_LIST_RELATED)
    if workspace is not None:
        return queryset.filter(workspace=workspace)
    visible = workspace_ids_visible(actor=actor)
    return queryset if visible is None else queryset.filter(workspace__in=visible)


def run_get(
    *, actor: Actor, run_id: uuid.UUID | str, minimum: Role = Role.MEMBER
) -> tuple[SandboxRun, Role]:
    """The run and the actor's role in its workspace: 404 for outsiders, 403 below `minimum`."""
    run = SandboxRun.objects.select_related(*RUN_LIST_RELATED).filter(pk=run_id).first()
    role = None
    if run is not None:
        membership_role: Any = None
        if actor.user is not None and actor.api_key is None:
            membership_role = (
                Membership.objects.filter(workspace_id=run.workspace_id, user=actor.user)
                .values_list("role", flat=True)
                .first()
            )
        role = effective_role(actor, run.workspace_id, membership_role)
    role = require_role(role, minimum, what="run")
    assert run is not None
    return run, role


def run_is_controlled_by(*, run: SandboxRun, actor: Actor, role: Role) -> bool:
    """Cancel and complete: admins and owners any run, members their own runs (a key: the
    runs it started)."""
    if has_role(role, Role.ADMIN):
        return True
    if actor.api_key is not None:
        return run.api_key_id == actor.api_key.pk
    return actor.user is not None and run.created_by_id == actor.user.pk


def active_run_count(*, workspace: Workspace) -> int:
    return SandboxRun.objects.filter(workspace=workspace, status__in=ACTIVE_STATUSES).count()

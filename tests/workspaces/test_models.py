"""workspaces/models.py: the constraints the database itself holds, whatever code writes, and
what each model says about itself on the trail."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction

from tests.factories import make_api_key, make_user
from workspaces import services
from workspaces.access import Actor
from workspaces.models import Membership, Role, Subject, Workspace


def test_the_single_owner_constraint_holds_in_the_database(
    workspace: Workspace, member: Any
) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.filter(workspace=workspace, user=member).update(role=Role.OWNER)
    assert Membership.objects.filter(workspace=workspace, role=Role.OWNER).count() == 1


def test_a_second_owner_membership_cannot_be_created(workspace: Workspace) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(workspace=workspace, user=make_user(), role=Role.OWNER)


def test_a_user_is_a_member_of_a_workspace_at_most_once(workspace: Workspace, member: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(workspace=workspace, user=member, role=Role.ADMIN)


def test_a_key_is_active_until_it_is_revoked(workspace: Workspace) -> None:
    key, _ = make_api_key(workspace=workspace)
    assert key.is_active
    services.api_key_revoke(api_key=key, actor=Actor(user=workspace.owner))
    assert not key.is_active


def test_each_model_names_itself_and_its_workspace_as_a_subject(
    workspace: Workspace, member: Any
) -> None:
    key, _ = make_api_key(workspace=workspace)
    membership = Membership.objects.get(workspace=workspace, user=member)
    assert workspace.trail_subject() == Subject("workspace", workspace.pk, workspace.pk)
    assert membership.trail_subject() == Subject("member", member.pk, workspace.pk)
    assert key.trail_subject() == Subject("api_key", key.pk, workspace.pk)

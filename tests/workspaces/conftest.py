"""Fixtures and helpers of the workspaces app's tests (the named people and their workspace
are the root conftest's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import make_workspace
from workspaces.models import Membership, Workspace

PASSWORD = "correct horse battery"


@pytest.fixture
def elsewhere(outsider: Any) -> Workspace:
    """Another workspace: the outsider's own."""
    return make_workspace(owner=outsider, name="Elsewhere")


def with_password(user: Any) -> Any:
    """The user, able to sign in with PASSWORD."""
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    return user


def keys_url(workspace: Workspace) -> str:
    return f"/api/v1/workspaces/{workspace.pk}/api-keys/"


def role_of(workspace: Workspace, user: Any) -> str | None:
    """The user's role in the workspace as stored now; None for a non-member."""
    membership = Membership.objects.filter(workspace=workspace, user=user).first()
    return membership.role if membership is not None else None

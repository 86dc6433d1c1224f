"""workspaces/services.py: owner protections, membership rules, names, atomicity — through the
services and through the API that calls them."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token

from config.exceptions import Conflict, InvalidInput, PermissionDenied
from tests.conftest import client_as
from tests.factories import UserFactory
from workspaces import services
from workspaces.access import Actor
from workspaces.models import Membership, Role, Workspace


def _new_user(**fields: Any) -> Any:
    return UserFactory(**fields)


def _members_url(workspace: Workspace, user: Any = None) -> str:
    base = f"/api/v1/workspaces/{workspace.pk}/members/"
    return base if user is None else f"{base}{user.pk}/"


def _role_of(workspace: Workspace, user: Any) -> str | None:
    membership = Membership.objects.filter(workspace=workspace, user=user).first()
    return membership.role if membership is not None else None


def _membership(workspace: Workspace, user: Any) -> Membership:
    return Membership.objects.get(workspace=workspace, user=user)


# --- Owner protections: services -------------------------------------------------------------


def test_creating_a_workspace_makes_the_creator_its_one_owner(owner: Any) -> None:
    workspace = services.workspace_create(name="Lab", owner=owner)
    assert workspace.owner == owner
    assert list(workspace.memberships.values_list("user", "role")) == [(owner.pk, Role.OWNER)]


def test_the_owner_cannot_be_removed_by_the_service(workspace: Workspace, admin_user: Any) -> None:
    with pytest.raises(PermissionDenied) as raised:
        services.membership_remove(
            membership=_membership(workspace, workspace.owner), actor=Actor(user=admin_user)
        )
    assert raised.value.code == "owner_protected"
    assert _role_of(workspace, workspace.owner) == Role.OWNER


def test_the_owner_cannot_leave_by_the_service(workspace: Workspace, owner: Any) -> None:
    with pytest.raises(PermissionDenied):
        services.membership_remove(
            membership=_membership(workspace, owner), actor=Actor(user=owner)
        )
    assert _role_of(workspace, owner) == Role.OWNER


@pytest.mark.parametrize("role", ["admin", "member"])
def test_the_owner_cannot_be_demoted_by_the_service(
    workspace: Workspace, owner: Any, admin_user: Any, role: str
) -> None:
    with pytest.raises(PermissionDenied) as raised:
        services.membership_change_role(
            membership=_membership(workspace, owner), role=role, actor=Actor(user=admin_user)
        )
    assert raised.value.code == "owner_protected"
    assert _role_of(workspace, owner) == Role.OWNER


def test_nobody_can_be_promoted_to_owner_by_the_service(
    workspace: Workspace, owner: Any, member: Any
) -> None:
    with pytest.raises(InvalidInput) as raised:
        services.membership_change_role(
            membership=_membership(workspace, member), role="owner", actor=Actor(user=owner)
        )
    assert raised.value.code == "owner"
    assert _role_of(workspace, member) == Role.MEMBER


def test_nobody_can_be_added_as_owner_by_the_service(workspace: Workspace, owner: Any) -> None:
    newcomer = _new_user()
    with pytest.raises(InvalidInput):
        services.membership_add(
            workspace=workspace, user=newcomer, role="owner", actor=Actor(user=owner)
        )
    assert _role_of(workspace, newcomer) is None


def test_an_unknown_role_is_refused_by_the_service(workspace: Workspace, owner: Any) -> None:
    with pytest.raises(InvalidInput) as raised:
        services.membership_add(
            workspace=workspace, user=_new_user(), role="superhero", actor=Actor(user=owner)
        )
    assert raised.value.code == "invalid_choice"


def test_adding_an_existing_member_is_a_conflict_in_the_service(
    workspace: Workspace, owner: Any, member: Any
) -> None:
    with pytest.raises(Conflict) as raised:
        services.membership_add(
            workspace=workspace, user=member, role="admin", actor=Actor(user=owner)
        )
    assert raised.value.code == "already_member"
    assert _role_of(workspace, member) == Role.MEMBER


def test_the_single_owner_constraint_holds_in_the_database(
    workspace: Workspace, member: Any
) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.filter(workspace=workspace, user=member).update(role=Role.OWNER)
    assert Membership.objects.filter(workspace=workspace, role=Role.OWNER).count() == 1


def test_a_second_owner_membership_cannot_be_created(workspace: Workspace) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(workspace=workspace, user=_new_user(), role=Role.OWNER)


def test_a_user_is_a_member_of_a_workspace_at_most_once(workspace: Workspace, member: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(workspace=workspace, user=member, role=Role.ADMIN)


# --- Atomicity -------------------------------------------------------------------------------


def test_a_failure_creating_the_owner_membership_leaves_no_workspace(
    owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(**kwargs: Any) -> Membership:
        raise IntegrityError("simulated failure")

    monkeypatch.setattr(Membership.objects, "create", fail)
    before = Workspace.objects.count()
    with pytest.raises(IntegrityError):
        services.workspace_create(name="Doomed", owner=owner)
    assert Workspace.objects.count() == before
    assert not Workspace.objects.filter(name="Doomed").exists()


def test_a_failed_workspace_create_through_the_api_leaves_no_workspace(
    client: Any, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(**kwargs: Any) -> Membership:
        raise IntegrityError("simulated failure")

    monkeypatch.setattr(Membership.objects, "create", fail)
    client.raise_request_exception = False
    token = Token.objects.create(user=owner)
    response = client.post(
        "/api/v1/workspaces/",
        {"name": "Doomed"},
        content_type="application/json",
        headers={"Authorization": f"Token {token.key}"},
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "Server error.", "code": "server_error"}
    assert not Workspace.objects.filter(name="Doomed").exists()


# --- Names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * 101])
def test_a_bad_name_is_refused_by_the_service(owner: Any, name: str) -> None:
    with pytest.raises(InvalidInput):
        services.workspace_create(name=name, owner=owner)
    assert not Workspace.objects.exists()


def test_a_name_is_stripped_by_the_service(owner: Any) -> None:
    assert services.workspace_create(name="  Lab \n", owner=owner).name == "Lab"


def test_a_bad_rename_is_refused_and_keeps_the_old_name(workspace: Workspace, owner: Any) -> None:
    with pytest.raises(InvalidInput):
        services.workspace_rename(workspace=workspace, name="  ", actor=Actor(user=owner))
    workspace.refresh_from_db()
    assert workspace.name == "Lab"


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_the_api_refuses_a_bad_workspace_name(api: Any, owner: Any, name: str) -> None:
    response = client_as(api, owner).post("/api/v1/workspaces/", {"name": name}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert "name" in body["errors"]
    assert not Workspace.objects.exists()


def test_the_api_accepts_a_name_of_100_characters(api: Any, owner: Any) -> None:
    response = client_as(api, owner).post("/api/v1/workspaces/", {"name": "x" * 100}, format="json")
    assert response.status_code == 201
    assert response.json()["name"] == "x" * 100


def test_the_api_strips_the_name(api: Any, owner: Any) -> None:
    response = client_as(api, owner).post(
        "/api/v1/workspaces/", {"name": "  " + "x" * 100 + "  "}, format="json"
    )
    assert response.status_code == 201
    assert Workspace.objects.get(pk=response.json()["id"]).name == "x" * 100


def test_the_api_refuses_a_blank_rename(api: Any, workspace: Workspace, owner: Any) -> None:
    response = client_as(api, owner).patch(
        f"/api/v1/workspaces/{workspace.pk}/", {"name": " "}, format="json"
    )
    assert response.status_code == 400
    assert "name" in response.json()["errors"]
    workspace.refresh_from_db()
    assert workspace.name == "Lab"


# --- Owner protections: API ------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_the_owner_cannot_be_removed_through_the_api(
    api: Any, workspace: Workspace, request: Any, who: str
) -> None:
    caller = request.getfixturevalue({"owner": "owner", "admin": "admin_user"}[who])
    response = client_as(api, caller).delete(_members_url(workspace, workspace.owner))
    assert response.status_code == 403
    assert response.json()["code"] == "owner_protected"
    assert _role_of(workspace, workspace.owner) == Role.OWNER


def test_the_owner_cannot_be_removed_with_an_admin_key(
    api: Any, workspace: Workspace, admin_key: str
) -> None:
    response = client_as(api, admin_key).delete(_members_url(workspace, workspace.owner))
    assert response.status_code == 403
    assert _role_of(workspace, workspace.owner) == Role.OWNER


@pytest.mark.parametrize("role", ["admin", "member"])
def test_the_owner_cannot_be_demoted_through_the_api(
    api: Any, workspace: Workspace, admin_user: Any, role: str
) -> None:
    response = client_as(api, admin_user).patch(
        _members_url(workspace, workspace.owner), {"role": role}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "owner_protected"
    assert _role_of(workspace, workspace.owner) == Role.OWNER


def test_the_owner_cannot_demote_themselves(api: Any, workspace: Workspace, owner: Any) -> None:
    response = client_as(api, owner).patch(
        _members_url(workspace, owner), {"role": "admin"}, format="json"
    )
    assert response.status_code == 403
    assert _role_of(workspace, owner) == Role.OWNER


def test_nobody_can_be_promoted_to_owner_through_the_api(
    api: Any, workspace: Workspace, owner: Any, admin_user: Any
) -> None:
    response = client_as(api, owner).patch(
        _members_url(workspace, admin_user), {"role": "owner"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["errors"]
    assert _role_of(workspace, admin_user) == Role.ADMIN
    assert Workspace.objects.get(pk=workspace.pk).owner == owner


def test_nobody_can_be_added_as_owner_through_the_api(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    newcomer = _new_user()
    response = client_as(api, owner).post(
        _members_url(workspace), {"user_id": newcomer.pk, "role": "owner"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["errors"]
    assert _role_of(workspace, newcomer) is None


def test_the_owner_cannot_leave(api: Any, workspace: Workspace, owner: Any) -> None:
    response = client_as(api, owner).delete(_members_url(workspace, owner))
    assert response.status_code == 403
    assert response.json()["code"] == "owner_protected"
    assert _role_of(workspace, owner) == Role.OWNER


@pytest.mark.parametrize("who", ["member", "admin_user"])
def test_a_member_can_leave(api: Any, workspace: Workspace, request: Any, who: str) -> None:
    user = request.getfixturevalue(who)
    response = client_as(api, user).delete(_members_url(workspace, user))
    assert response.status_code == 204
    assert _role_of(workspace, user) is None


def test_after_leaving_the_workspace_is_not_found(
    api: Any, workspace: Workspace, member: Any
) -> None:
    client = client_as(api, member)
    assert client.delete(_members_url(workspace, member)).status_code == 204
    assert client.get(f"/api/v1/workspaces/{workspace.pk}/").status_code == 404


def test_a_member_cannot_remove_others(
    api: Any, workspace: Workspace, member: Any, admin_user: Any
) -> None:
    response = client_as(api, member).delete(_members_url(workspace, admin_user))
    assert response.status_code == 403
    assert _role_of(workspace, admin_user) == Role.ADMIN


def test_a_member_key_cannot_make_its_creator_leave(
    api: Any, workspace: Workspace, member_key: str
) -> None:
    # A key acts for the workspace, not as its creator: "leaving" is a person's act.
    response = client_as(api, member_key).delete(_members_url(workspace, workspace.owner))
    assert response.status_code == 403
    assert _role_of(workspace, workspace.owner) == Role.OWNER


def test_an_admin_can_change_a_members_role(
    api: Any, workspace: Workspace, admin_user: Any, member: Any
) -> None:
    response = client_as(api, admin_user).patch(
        _members_url(workspace, member), {"role": "admin"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["role"] == "admin"
    assert _role_of(workspace, member) == Role.ADMIN


def test_changing_the_role_of_a_non_member_is_not_found(
    api: Any, workspace: Workspace, owner: Any, outsider: Any
) -> None:
    response = client_as(api, owner).patch(
        _members_url(workspace, outsider), {"role": "admin"}, format="json"
    )
    assert response.status_code == 404
    assert _role_of(workspace, outsider) is None


# --- Adding members --------------------------------------------------------------------------


def test_a_member_can_be_added_by_username(api: Any, workspace: Workspace, owner: Any) -> None:
    newcomer = _new_user(username="nina")
    response = client_as(api, owner).post(
        _members_url(workspace), {"username": "nina"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["user_id"] == newcomer.pk
    assert response.json()["role"] == "member"
    assert _role_of(workspace, newcomer) == Role.MEMBER


def test_a_member_can_be_added_by_id_as_admin(api: Any, workspace: Workspace, owner: Any) -> None:
    newcomer = _new_user()
    response = client_as(api, owner).post(
        _members_url(workspace), {"user_id": newcomer.pk, "role": "admin"}, format="json"
    )
    assert response.status_code == 201
    assert _role_of(workspace, newcomer) == Role.ADMIN


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": 999_999}, "user_id"),
        ({"username": "nobody-by-that-name"}, "username"),
    ],
)
def test_adding_an_unknown_user_names_the_field(
    api: Any, workspace: Workspace, owner: Any, body: dict[str, Any], field: str
) -> None:
    response = client_as(api, owner).post(_members_url(workspace), body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_adding_an_inactive_user_is_refused(api: Any, workspace: Workspace, owner: Any) -> None:
    UserFactory(username="gone", is_active=False)
    response = client_as(api, owner).post(
        _members_url(workspace), {"username": "gone"}, format="json"
    )
    assert response.status_code == 400
    assert "username" in response.json()["errors"]


@pytest.mark.parametrize("who", ["member", "owner"])
def test_adding_an_existing_member_is_a_conflict(
    api: Any, workspace: Workspace, owner: Any, request: Any, who: str
) -> None:
    user = request.getfixturevalue(who)
    response = client_as(api, owner).post(
        _members_url(workspace), {"user_id": user.pk, "role": "admin"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "already_member"
    assert _role_of(workspace, user) == (Role.MEMBER if who == "member" else Role.OWNER)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"role": "member"}, id="neither"),
        pytest.param({"user_id": 1, "username": "mia", "role": "member"}, id="both"),
        pytest.param({}, id="empty"),
    ],
)
def test_adding_a_member_needs_exactly_one_of_user_id_or_username(
    api: Any, workspace: Workspace, owner: Any, body: dict[str, Any]
) -> None:
    before = Membership.objects.count()
    response = client_as(api, owner).post(_members_url(workspace), body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "user_id or username" in str(response.json()["errors"])
    assert Membership.objects.count() == before

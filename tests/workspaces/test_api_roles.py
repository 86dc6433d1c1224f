"""The role matrix of SPEC §3 for every workspace route, for every kind of caller."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import client_as
from tests.factories import UserFactory, make_api_key, make_workspace
from workspaces import services
from workspaces.access import Actor
from workspaces.models import ApiKey, Membership, Workspace

CALLERS = [
    "owner", "admin", "member", "outsider", "anonymous",
    "member_key", "admin_key", "revoked_key", "foreign_key",
]  # fmt: skip


@pytest.fixture
def target(workspace: Any) -> dict[str, Any]:
    """Things the routes act on: a second member to change/remove, a key to revoke, a newcomer."""
    other: Any = UserFactory(username="max")
    services.membership_add(
        workspace=workspace, user=other, role="member", actor=Actor(user=workspace.owner)
    )
    key, _ = make_api_key(workspace=workspace, name="to-revoke")
    return {"other": other, "key": key, "newcomer": UserFactory(username="nina")}


@pytest.fixture
def caller(
    request: Any, api: Any, workspace: Any, owner: Any, admin_user: Any, member: Any, outsider: Any
) -> Any:
    name = request.param
    if name == "anonymous":
        return client_as(api, None)
    if name in ("owner", "admin", "member", "outsider"):
        return client_as(
            api, {"owner": owner, "admin": admin_user, "member": member, "outsider": outsider}[name]
        )
    if name == "foreign_key":
        foreign = make_workspace(owner=outsider, name="Elsewhere")
        return client_as(api, make_api_key(workspace=foreign, role="admin")[1])
    key, secret = make_api_key(
        workspace=workspace, role="admin" if name == "admin_key" else "member"
    )
    if name == "revoked_key":
        services.api_key_revoke(api_key=key, actor=Actor(user=owner))
    return client_as(api, secret)


def expect(**overrides: int) -> list[Any]:
    """Expected status per caller; outsiders and foreign keys see 404, the anonymous 401."""
    base = {"outsider": 404, "anonymous": 401, "revoked_key": 401, "foreign_key": 404}
    table = {**base, **overrides}
    return [pytest.param(name, table[name], id=name) for name in CALLERS]


def _send(client: Any, method: str, url: str, body: Any = None) -> Any:
    return (
        getattr(client, method)(url, body, format="json")
        if body is not None
        else getattr(client, method)(url)
    )


READ = dict(owner=200, admin=200, member=200, member_key=200, admin_key=200)
OWNER_ONLY = dict(owner=None, admin=403, member=403, member_key=403, admin_key=403)
ADMIN_UP = dict(owner=None, admin=None, member=403, member_key=403, admin_key=None)


def _table(ok: int, shape: dict[str, int | None]) -> dict[str, int]:
    return {name: (ok if code is None else code) for name, code in shape.items()}


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**READ), indirect=["caller"])
def test_view_workspace(caller: Any, status: int, workspace: Workspace) -> None:
    assert caller.get(f"/api/v1/workspaces/{workspace.pk}/").status_code == status


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"), expect(**_table(200, OWNER_ONLY)), indirect=["caller"]
)
def test_rename_workspace(caller: Any, status: int, workspace: Workspace) -> None:
    response = caller.patch(
        f"/api/v1/workspaces/{workspace.pk}/", {"name": "Renamed"}, format="json"
    )
    assert response.status_code == status
    workspace.refresh_from_db()
    assert (workspace.name == "Renamed") == (status == 200)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"), expect(**_table(204, OWNER_ONLY)), indirect=["caller"]
)
def test_delete_workspace(caller: Any, status: int, workspace: Workspace) -> None:
    assert caller.delete(f"/api/v1/workspaces/{workspace.pk}/").status_code == status
    assert Workspace.objects.filter(pk=workspace.pk).exists() == (status != 204)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**READ), indirect=["caller"])
def test_list_members(caller: Any, status: int, workspace: Workspace) -> None:
    response = caller.get(f"/api/v1/workspaces/{workspace.pk}/members/")
    assert response.status_code == status
    if status == 200:
        assert {m["username"] for m in response.json()["results"]} == {"olivia", "adam", "mia"}


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**_table(201, ADMIN_UP)), indirect=["caller"])
def test_add_member(caller: Any, status: int, workspace: Workspace, target: dict[str, Any]) -> None:
    body = {"username": "nina", "role": "member"}
    assert (
        caller.post(f"/api/v1/workspaces/{workspace.pk}/members/", body, format="json").status_code
        == status
    )
    assert Membership.objects.filter(workspace=workspace, user=target["newcomer"]).exists() == (
        status == 201
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**_table(200, ADMIN_UP)), indirect=["caller"])
def test_change_role(
    caller: Any, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    url = f"/api/v1/workspaces/{workspace.pk}/members/{target['other'].pk}/"
    assert caller.patch(url, {"role": "admin"}, format="json").status_code == status
    role = Membership.objects.get(workspace=workspace, user=target["other"]).role
    assert role == ("admin" if status == 200 else "member")


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**_table(204, ADMIN_UP)), indirect=["caller"])
def test_remove_member(
    caller: Any, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    url = f"/api/v1/workspaces/{workspace.pk}/members/{target['other'].pk}/"
    assert caller.delete(url).status_code == status
    assert Membership.objects.filter(workspace=workspace, user=target["other"]).exists() == (
        status != 204
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**_table(200, ADMIN_UP)), indirect=["caller"])
def test_list_api_keys(
    caller: Any, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    response = caller.get(f"/api/v1/workspaces/{workspace.pk}/api-keys/")
    assert response.status_code == status
    if status == 200:
        body = response.json()["results"]
        assert "to-revoke" in {k["name"] for k in body}
        assert all("key" not in k and "secret_hash" not in k for k in body)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**_table(201, ADMIN_UP)), indirect=["caller"])
def test_create_api_key(caller: Any, status: int, workspace: Workspace) -> None:
    response = caller.post(
        f"/api/v1/workspaces/{workspace.pk}/api-keys/",
        {"name": "ci", "role": "member"},
        format="json",
    )
    assert response.status_code == status
    assert ApiKey.objects.filter(workspace=workspace, name="ci").exists() == (status == 201)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), expect(**_table(204, ADMIN_UP)), indirect=["caller"])
def test_revoke_api_key(
    caller: Any, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    assert (
        caller.delete(f"/api/v1/workspaces/{workspace.pk}/api-keys/{target['key'].pk}/").status_code
        == status
    )
    target["key"].refresh_from_db()
    assert (target["key"].revoked_at is not None) == (status == 204)


VISIBLE = {
    "owner": {"Lab"}, "admin": {"Lab"}, "member": {"Lab"}, "member_key": {"Lab"},
    "admin_key": {"Lab"}, "outsider": set(), "foreign_key": {"Elsewhere"},
}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("caller", CALLERS, indirect=True)
def test_list_my_workspaces(caller: Any, request: Any, workspace: Workspace) -> None:
    name = request.node.callspec.params["caller"]
    response = caller.get("/api/v1/workspaces/")
    if name in VISIBLE:
        assert response.status_code == 200
        assert {w["name"] for w in response.json()["results"]} == VISIBLE[name]
    else:
        assert response.status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"),
    expect(
        owner=201,
        admin=201,
        member=201,
        outsider=201,
        member_key=403,
        admin_key=403,
        foreign_key=403,
    ),
    indirect=["caller"],
)
def test_create_workspace(caller: Any, status: int) -> None:
    response = caller.post("/api/v1/workspaces/", {"name": "New"}, format="json")
    assert response.status_code == status
    if status == 201:
        assert response.json()["role"] == "owner"

"""workspaces/api.py: the workspace, member, API key and event routes. First the role matrix of
SPEC §3, every route for every kind of caller; then each route's own rules. Every response is
checked against the OpenAPI schema by the `api` client."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token

from tests.conftest import CALLERS, assert_error, client_as, table
from tests.factories import make_api_key, make_run, make_user, make_workspace, record_event
from tests.workspaces.conftest import keys_url, role_of
from workspaces import events, services
from workspaces.access import Actor
from workspaces.models import ApiKey, Event, EventType, Membership, Role, Subject, Workspace


def _members_url(workspace: Workspace, user: Any = None) -> str:
    base = f"/api/v1/workspaces/{workspace.pk}/members/"
    return base if user is None else f"{base}{user.pk}/"


def _events_url(workspace: Workspace) -> str:
    return f"/api/v1/workspaces/{workspace.pk}/events/"


# --- the role matrix ---------------------------------------------------------------------


@pytest.fixture
def target(workspace: Any) -> dict[str, Any]:
    """Things the routes act on: a second member to change/remove, a key to revoke, a newcomer."""
    other = make_user(username="max")
    services.membership_add(
        workspace=workspace, user=other, role="member", actor=Actor(user=workspace.owner)
    )
    key, _ = make_api_key(workspace=workspace, name="to-revoke")
    return {"other": other, "key": key, "newcomer": make_user(username="nina")}


READ = dict(owner=200, admin=200, member=200, member_key=200, admin_key=200)
OWNER_ONLY = dict(owner=None, admin=403, member=403, member_key=403, admin_key=403)
ADMIN_UP = dict(owner=None, admin=None, member=403, member_key=403, admin_key=None)


def _table(ok: int, shape: dict[str, int | None]) -> dict[str, int]:
    return {name: (ok if code is None else code) for name, code in shape.items()}


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**READ))
def test_view_workspace(as_caller: Any, caller: str, status: int, workspace: Workspace) -> None:
    assert as_caller(caller).get(f"/api/v1/workspaces/{workspace.pk}/").status_code == status


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(200, OWNER_ONLY)))
def test_rename_workspace(as_caller: Any, caller: str, status: int, workspace: Workspace) -> None:
    response = as_caller(caller).patch(
        f"/api/v1/workspaces/{workspace.pk}/", {"name": "Renamed"}, format="json"
    )
    assert response.status_code == status
    workspace.refresh_from_db()
    assert (workspace.name == "Renamed") == (status == 200)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(204, OWNER_ONLY)))
def test_delete_workspace(as_caller: Any, caller: str, status: int, workspace: Workspace) -> None:
    assert as_caller(caller).delete(f"/api/v1/workspaces/{workspace.pk}/").status_code == status
    assert Workspace.objects.filter(pk=workspace.pk).exists() == (status != 204)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**READ))
def test_list_members(as_caller: Any, caller: str, status: int, workspace: Workspace) -> None:
    response = as_caller(caller).get(_members_url(workspace))
    assert response.status_code == status
    if status == 200:
        assert {m["username"] for m in response.json()["results"]} == {"olivia", "adam", "mia"}


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(201, ADMIN_UP)))
def test_add_member(
    as_caller: Any, caller: str, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    body = {"username": "nina", "role": "member"}
    assert (
        as_caller(caller).post(_members_url(workspace), body, format="json").status_code == status
    )
    assert Membership.objects.filter(workspace=workspace, user=target["newcomer"]).exists() == (
        status == 201
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(200, ADMIN_UP)))
def test_change_role(
    as_caller: Any, caller: str, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    url = _members_url(workspace, target["other"])
    assert as_caller(caller).patch(url, {"role": "admin"}, format="json").status_code == status
    role = Membership.objects.get(workspace=workspace, user=target["other"]).role
    assert role == ("admin" if status == 200 else "member")


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(204, ADMIN_UP)))
def test_remove_member(
    as_caller: Any, caller: str, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    url = _members_url(workspace, target["other"])
    assert as_caller(caller).delete(url).status_code == status
    assert Membership.objects.filter(workspace=workspace, user=target["other"]).exists() == (
        status != 204
    )


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(200, ADMIN_UP)))
def test_list_api_keys(
    as_caller: Any, caller: str, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    response = as_caller(caller).get(keys_url(workspace))
    assert response.status_code == status
    if status == 200:
        body = response.json()["results"]
        assert "to-revoke" in {k["name"] for k in body}
        assert all("key" not in k and "secret_hash" not in k for k in body)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(201, ADMIN_UP)))
def test_create_api_key(as_caller: Any, caller: str, status: int, workspace: Workspace) -> None:
    response = as_caller(caller).post(
        keys_url(workspace), {"name": "ci", "role": "member"}, format="json"
    )
    assert response.status_code == status
    assert ApiKey.objects.filter(workspace=workspace, name="ci").exists() == (status == 201)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(204, ADMIN_UP)))
def test_revoke_api_key(
    as_caller: Any, caller: str, status: int, workspace: Workspace, target: dict[str, Any]
) -> None:
    url = f"{keys_url(workspace)}{target['key'].pk}/"
    assert as_caller(caller).delete(url).status_code == status
    target["key"].refresh_from_db()
    assert (target["key"].revoked_at is not None) == (status == 204)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**READ))
def test_list_events(as_caller: Any, caller: str, status: int, workspace: Workspace) -> None:
    response = as_caller(caller).get(_events_url(workspace))
    assert response.status_code == status
    if status == 200:
        assert response.json()["results"][0]["type"] == "workspace.created"


# Every caller sees the workspaces it may act in: its own (the outsider owns "Elsewhere", where
# the foreign key was made), never another's.
VISIBLE = {
    "owner": {"Lab"}, "admin": {"Lab"}, "member": {"Lab"}, "member_key": {"Lab"},
    "admin_key": {"Lab"}, "outsider": {"Elsewhere"}, "foreign_key": {"Elsewhere"},
}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("caller", CALLERS)
def test_list_my_workspaces(as_caller: Any, caller: str, workspace: Workspace) -> None:
    response = as_caller(caller).get("/api/v1/workspaces/")
    if caller in VISIBLE:
        assert response.status_code == 200
        assert {w["name"] for w in response.json()["results"]} == VISIBLE[caller]
    else:
        assert response.status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"),
    table(
        owner=201,
        admin=201,
        member=201,
        outsider=201,
        member_key=403,
        admin_key=403,
        foreign_key=403,
    ),
)
def test_create_workspace(as_caller: Any, caller: str, status: int) -> None:
    response = as_caller(caller).post("/api/v1/workspaces/", {"name": "New"}, format="json")
    assert response.status_code == status
    if status == 201:
        assert response.json()["role"] == "owner"


# --- workspaces: names and atomicity ---------------------------------------------------------


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


# --- members: owner protections ------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_the_owner_cannot_be_removed_through_the_api(
    api: Any, workspace: Workspace, request: Any, who: str
) -> None:
    caller = request.getfixturevalue({"owner": "owner", "admin": "admin_user"}[who])
    response = client_as(api, caller).delete(_members_url(workspace, workspace.owner))
    assert response.status_code == 403
    assert response.json()["code"] == "owner_protected"
    assert role_of(workspace, workspace.owner) == Role.OWNER


def test_the_owner_cannot_be_removed_with_an_admin_key(
    api: Any, workspace: Workspace, admin_key: str
) -> None:
    response = client_as(api, admin_key).delete(_members_url(workspace, workspace.owner))
    assert response.status_code == 403
    assert role_of(workspace, workspace.owner) == Role.OWNER


@pytest.mark.parametrize("role", ["admin", "member"])
def test_the_owner_cannot_be_demoted_through_the_api(
    api: Any, workspace: Workspace, admin_user: Any, role: str
) -> None:
    response = client_as(api, admin_user).patch(
        _members_url(workspace, workspace.owner), {"role": role}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "owner_protected"
    assert role_of(workspace, workspace.owner) == Role.OWNER


def test_the_owner_cannot_demote_themselves(api: Any, workspace: Workspace, owner: Any) -> None:
    response = client_as(api, owner).patch(
        _members_url(workspace, owner), {"role": "admin"}, format="json"
    )
    assert response.status_code == 403
    assert role_of(workspace, owner) == Role.OWNER


def test_nobody_can_be_promoted_to_owner_through_the_api(
    api: Any, workspace: Workspace, owner: Any, admin_user: Any
) -> None:
    response = client_as(api, owner).patch(
        _members_url(workspace, admin_user), {"role": "owner"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["errors"]
    assert role_of(workspace, admin_user) == Role.ADMIN
    assert Workspace.objects.get(pk=workspace.pk).owner == owner


def test_nobody_can_be_added_as_owner_through_the_api(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    newcomer = make_user()
    response = client_as(api, owner).post(
        _members_url(workspace), {"user_id": newcomer.pk, "role": "owner"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["errors"]
    assert role_of(workspace, newcomer) is None


def test_the_owner_cannot_leave(api: Any, workspace: Workspace, owner: Any) -> None:
    response = client_as(api, owner).delete(_members_url(workspace, owner))
    assert response.status_code == 403
    assert response.json()["code"] == "owner_protected"
    assert role_of(workspace, owner) == Role.OWNER


# --- members: leaving, removing, roles ------------------------------------------------------


@pytest.mark.parametrize("who", ["member", "admin_user"])
def test_a_member_can_leave(api: Any, workspace: Workspace, request: Any, who: str) -> None:
    user = request.getfixturevalue(who)
    response = client_as(api, user).delete(_members_url(workspace, user))
    assert response.status_code == 204
    assert role_of(workspace, user) is None


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
    assert role_of(workspace, admin_user) == Role.ADMIN


def test_a_member_key_cannot_make_its_creator_leave(
    api: Any, workspace: Workspace, member_key: str
) -> None:
    # A key acts for the workspace, not as its creator: "leaving" is a person's act.
    response = client_as(api, member_key).delete(_members_url(workspace, workspace.owner))
    assert response.status_code == 403
    assert role_of(workspace, workspace.owner) == Role.OWNER


def test_an_admin_can_change_a_members_role(
    api: Any, workspace: Workspace, admin_user: Any, member: Any
) -> None:
    response = client_as(api, admin_user).patch(
        _members_url(workspace, member), {"role": "admin"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["role"] == "admin"
    assert role_of(workspace, member) == Role.ADMIN


def test_changing_the_role_of_a_non_member_is_not_found(
    api: Any, workspace: Workspace, owner: Any, outsider: Any
) -> None:
    response = client_as(api, owner).patch(
        _members_url(workspace, outsider), {"role": "admin"}, format="json"
    )
    assert response.status_code == 404
    assert role_of(workspace, outsider) is None


def test_removing_a_non_member_is_not_found(
    api: Any, workspace: Workspace, owner: Any, outsider: Any
) -> None:
    response = client_as(api, owner).delete(_members_url(workspace, outsider))
    assert assert_error(response, 404)["code"] == "not_found"


# --- members: adding -------------------------------------------------------------------------


def test_a_member_can_be_added_by_username(api: Any, workspace: Workspace, owner: Any) -> None:
    newcomer = make_user(username="nina")
    response = client_as(api, owner).post(
        _members_url(workspace), {"username": "nina"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["user_id"] == newcomer.pk
    assert response.json()["role"] == "member"
    assert role_of(workspace, newcomer) == Role.MEMBER


def test_a_member_can_be_added_by_id_as_admin(api: Any, workspace: Workspace, owner: Any) -> None:
    newcomer = make_user()
    response = client_as(api, owner).post(
        _members_url(workspace), {"user_id": newcomer.pk, "role": "admin"}, format="json"
    )
    assert response.status_code == 201
    assert role_of(workspace, newcomer) == Role.ADMIN


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
    make_user(username="gone", is_active=False)
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
    assert role_of(workspace, user) == (Role.MEMBER if who == "member" else Role.OWNER)


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


# --- API keys: the secret, and what a key may reach -------------------------------------------


def test_the_secret_is_shown_once_at_create_and_never_in_lists(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    client = client_as(api, owner)
    created = client.post(keys_url(workspace), {"name": "ci", "role": "admin"}, format="json")
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith(f"alk_{created.json()['prefix']}_")

    listed = client.get(keys_url(workspace))
    assert listed.status_code == 200
    assert secret not in listed.content.decode()
    assert all("key" not in item for item in listed.json()["results"])


def test_revoking_an_unknown_key_is_not_found(api: Any, workspace: Workspace, owner: Any) -> None:
    elsewhere = make_workspace(owner=owner, name="Elsewhere")
    foreign, _ = make_api_key(workspace=elsewhere)
    for key_id in ("00000000-0000-0000-0000-000000000000", foreign.pk):
        response = client_as(api, owner).delete(f"{keys_url(workspace)}{key_id}/")
        assert assert_error(response, 404)["detail"] == "No such API key."
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_a_key_acts_only_in_its_own_workspace(
    api: Any, workspace: Workspace, owner: Any, member_key: str
) -> None:
    elsewhere = make_workspace(owner=owner, name="Elsewhere")
    client = client_as(api, member_key)
    assert client.get(f"/api/v1/workspaces/{workspace.pk}/").status_code == 200
    # Its creator owns "Elsewhere", but the key was made for "Lab" only.
    for url in (
        f"/api/v1/workspaces/{elsewhere.pk}/",
        f"/api/v1/workspaces/{elsewhere.pk}/members/",
    ):
        assert_error(client.get(url), 404)
    listed = client.get("/api/v1/workspaces/").json()["results"]
    assert [w["id"] for w in listed] == [str(workspace.pk)]


def test_an_admin_key_of_a_superuser_is_still_limited_to_its_workspace(
    api: Any, outsider: Any
) -> None:
    boss = make_user(username="boss", is_superuser=True, is_staff=True)
    own = make_workspace(owner=boss, name="Boss's")
    _, secret = make_api_key(workspace=own, role="admin")
    other = make_workspace(owner=outsider, name="Someone else's")
    client = client_as(api, secret)
    assert_error(client.get(f"/api/v1/workspaces/{other.pk}/"), 404)
    assert_error(client.delete(f"/api/v1/workspaces/{other.pk}/"), 404)
    assert Workspace.objects.filter(pk=other.pk).exists()


def test_a_member_key_cannot_do_admin_things(
    api: Any, workspace: Workspace, member: Any, member_key: str
) -> None:
    client = client_as(api, member_key)
    url = f"/api/v1/workspaces/{workspace.pk}"
    assert client.get(f"{url}/api-keys/").status_code == 403
    assert client.post(f"{url}/api-keys/", {"name": "x"}, format="json").status_code == 403
    newcomer = make_user()
    body = {"user_id": newcomer.pk}
    assert client.post(f"{url}/members/", body, format="json").status_code == 403
    assert client.delete(f"{url}/members/{member.pk}/").status_code == 403
    assert client.patch(f"{url}/", {"name": "Renamed"}, format="json").status_code == 403


def test_an_admin_key_cannot_rename_or_delete_the_workspace(
    api: Any, workspace: Workspace, admin_key: str
) -> None:
    client = client_as(api, admin_key)
    url = f"/api/v1/workspaces/{workspace.pk}/"
    assert client.patch(url, {"name": "Renamed"}, format="json").status_code == 403
    assert client.delete(url).status_code == 403
    assert Workspace.objects.get(pk=workspace.pk).name == "Lab"


def test_a_key_cannot_create_workspaces(api: Any, admin_key: str) -> None:
    response = client_as(api, admin_key).post("/api/v1/workspaces/", {"name": "X"}, format="json")
    assert_error(response, 403)


# --- the trail -------------------------------------------------------------------------------


def _types(response: Any) -> list[str]:
    assert response.status_code == 200, response.json()
    return [event["type"] for event in response.json()["results"]]


def test_renaming_adding_a_member_and_revoking_a_key_appear_in_the_trail_with_their_actor(
    api: Any, workspace: Workspace, owner: Any, admin_user: Any
) -> None:
    newcomer = make_user(username="nina")
    key, _ = make_api_key(workspace=workspace, name="ci")
    rename = client_as(api, owner).patch(
        f"/api/v1/workspaces/{workspace.pk}/", {"name": "Lab 2"}, format="json"
    )
    assert rename.status_code == 200
    add = client_as(api, admin_user).post(
        _members_url(workspace), {"username": "nina"}, format="json"
    )
    assert add.status_code == 201
    assert client_as(api, owner).delete(f"{keys_url(workspace)}{key.pk}/").status_code == 204

    results = client_as(api, owner).get(_events_url(workspace)).json()["results"]
    by_type = {event["type"]: event for event in results}
    renamed = by_type["workspace.renamed"]
    assert (renamed["actor"], renamed["data"]) == ("user:olivia", {"from": "Lab", "to": "Lab 2"})
    assert renamed["subject"] == {"type": "workspace", "id": str(workspace.pk)}
    added = by_type["member.added"]
    assert added["actor"] == "user:adam"
    assert added["data"] == {"user_id": newcomer.pk, "username": "nina", "role": "member"}
    revoked = by_type["api_key.revoked"]
    assert revoked["actor"] == "user:olivia"
    assert revoked["subject"] == {"type": "api_key", "id": str(key.pk)}
    assert [e["id"] for e in results] == sorted(e["id"] for e in results)  # oldest first


def test_the_trail_filters_by_type_run_and_thread(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    first = make_run(workspace=workspace, thread_id="thread-a")
    second = make_run(workspace=workspace, thread_id="thread-b")
    record_event(first, EventType.RUN_CREATED)
    record_event(second, EventType.RUN_CREATED)
    record_event(second, EventType.RUN_CANCELED)
    client = client_as(api, owner)
    url = _events_url(workspace)

    assert _types(client.get(url, {"type": "run.created"})) == ["run.created", "run.created"]
    assert _types(client.get(url, {"type": "run.canceled, workspace.created"})) == [
        "workspace.created",
        "run.canceled",
    ]
    assert _types(client.get(url, {"run_id": str(second.pk)})) == ["run.created", "run.canceled"]
    assert _types(client.get(url, {"thread_id": "thread-a"})) == ["run.created"]
    assert _types(client.get(url, {"thread_id": "thread-a", "type": "run.canceled"})) == []


def test_the_trail_pages_by_its_cursor(api: Any, workspace: Workspace, owner: Any) -> None:
    for n in range(4):
        services.workspace_rename(workspace=workspace, name=f"Lab {n}", actor=Actor(user=owner))
    client = client_as(api, owner)
    everything = client.get(_events_url(workspace)).json()
    assert everything["next"] is None
    ids = [event["id"] for event in everything["results"]]
    assert len(ids) == 7  # created, two members added, four renames

    seen: list[int] = []
    page = client.get(_events_url(workspace), {"page_size": 3}).json()
    while True:
        seen += [event["id"] for event in page["results"]]
        if page["next"] is None:
            break
        assert f"after={seen[-1]}" in page["next"]
        page = client.get(page["next"]).json()
    assert seen == ids

    after = client.get(_events_url(workspace), {"after": ids[4]}).json()
    assert [event["id"] for event in after["results"]] == ids[5:]


def test_the_trail_shows_only_its_own_workspace(api: Any, workspace: Workspace, owner: Any) -> None:
    elsewhere = make_workspace(owner=owner, name="Elsewhere")
    results = client_as(api, owner).get(_events_url(workspace)).json()["results"]
    assert {event["workspace_id"] for event in results} == {str(workspace.pk)}
    mine = client_as(api, owner).get(_events_url(elsewhere)).json()["results"]
    assert [(e["type"], e["workspace_id"]) for e in mine] == [
        ("workspace.created", str(elsewhere.pk))
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"type": "run.exploded"}, "type"),
        ({"type": "run.created,nope"}, "type"),
        ({"after": "-1"}, "after"),
        ({"after": "soon"}, "after"),
        ({"run_id": "not-a-uuid"}, "run_id"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_trail_queries_are_a_400_naming_the_field(
    api: Any, workspace: Workspace, owner: Any, query: dict[str, str], field: str
) -> None:
    response = client_as(api, owner).get(_events_url(workspace), query)
    body = assert_error(response, 400)
    assert body["code"] == "invalid"
    assert field in body["errors"]


def test_the_trail_outlives_what_it_describes_but_not_the_route(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    client = client_as(api, owner)
    assert client.delete(f"/api/v1/workspaces/{workspace.pk}/").status_code == 204
    assert Event.objects.filter(workspace_id=workspace.pk, type="workspace.deleted").exists()
    assert_error(client.get(_events_url(workspace)), 404)


def test_an_event_about_a_run_names_its_run_and_thread(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    run = make_run(workspace=workspace, thread_id="thread-x")
    with transaction.atomic():
        events.record(
            actor=Actor(user=owner),
            type=EventType.FILE_UPLOADED,
            subject=Subject("run", run.pk, workspace.pk, run_id=run.pk, thread_id="thread-x"),
            data={"path": "/home/user/a.txt", "size": 1},
        )
    [event] = (
        client_as(api, owner)
        .get(_events_url(workspace), {"type": "file.uploaded"})
        .json()["results"]
    )
    assert (event["run_id"], event["thread_id"]) == (str(run.pk), "thread-x")
    assert event["data"] == {"path": "/home/user/a.txt", "size": 1}


# --- members: review emails ------------------------------------------------------------


@pytest.mark.django_db
def test_members_show_whether_they_get_review_emails(
    api: Any, workspace: Workspace, member: Any
) -> None:
    results = client_as(api, member).get(_members_url(workspace)).json()["results"]
    assert {m["notify_reviews"] for m in results} == {True}  # on by default


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["owner", "admin_user", "member"])
def test_anyone_may_turn_their_own_review_emails_off(
    api: Any, workspace: Workspace, request: Any, who: str
) -> None:
    user = request.getfixturevalue(who)
    response = client_as(api, user).patch(
        _members_url(workspace, user), {"notify_reviews": False}, format="json"
    )
    assert (response.status_code, response.json()["notify_reviews"]) == (200, False)
    assert not Membership.objects.get(workspace=workspace, user=user).notify_reviews
    event = Event.objects.filter(type=EventType.MEMBER_NOTIFY_CHANGED).latest("id")
    assert event.data["notify_reviews"] is False


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(200, ADMIN_UP)))
def test_turning_someone_elses_review_emails_off_needs_an_admin(
    as_caller: Any, caller: str, status: int, workspace: Workspace, admin_user: Any
) -> None:
    url = _members_url(workspace, admin_user)
    response = as_caller(caller).patch(url, {"notify_reviews": False}, format="json")
    assert response.status_code == status
    stored = Membership.objects.get(workspace=workspace, user=admin_user).notify_reviews
    assert stored is (status != 200)


@pytest.mark.django_db
def test_a_member_change_needs_something_to_change(
    api: Any, workspace: Workspace, member: Any
) -> None:
    response = client_as(api, member).patch(_members_url(workspace, member), {}, format="json")
    assert_error(response, 400)


@pytest.mark.django_db
def test_a_member_cannot_change_their_own_role(api: Any, workspace: Workspace, member: Any) -> None:
    url = _members_url(workspace, member)
    response = client_as(api, member).patch(url, {"role": "admin"}, format="json")
    assert_error(response, 403)


# --- webhooks --------------------------------------------------------------------------


def _webhooks_url(workspace: Workspace, *rest: Any) -> str:
    tail = "".join(f"{part}/" for part in rest)
    return f"/api/v1/workspaces/{workspace.pk}/webhooks/{tail}"


@pytest.fixture
def loopback_hooks(settings: Any) -> Any:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_TIMEOUT_S = 2
    return settings


@pytest.fixture
def hook(loopback_hooks: Any, workspace: Workspace, receivers: Any) -> Any:
    from workspaces import webhooks

    endpoint, _ = webhooks.webhook_create(
        workspace=workspace, actor=Actor(user=workspace.owner), url=receivers().url
    )
    return endpoint


ADMINS_ONLY = _table(200, ADMIN_UP)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**ADMINS_ONLY))
def test_list_webhooks(
    as_caller: Any, caller: str, status: int, workspace: Workspace, hook: Any
) -> None:
    response = as_caller(caller).get(_webhooks_url(workspace))
    assert response.status_code == status
    if status == 200:
        [listed] = response.json()["results"]
        assert listed["id"] == str(hook.pk) and "secret" not in listed


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(201, ADMIN_UP)))
def test_create_webhook(
    as_caller: Any, caller: str, status: int, workspace: Workspace, loopback_hooks: Any
) -> None:
    body = {
        "url": "http://127.0.0.1:9/hook",
        "event_types": ["artifact.created", "artifact.approved"],
        "description": "CI",
    }
    response = as_caller(caller).post(_webhooks_url(workspace), body, format="json")
    assert response.status_code == status
    if status == 201:
        created = response.json()
        assert created["secret"].startswith("whsec_")
        assert created["event_types"] == body["event_types"]
        again = as_caller(caller).get(_webhooks_url(workspace, created["id"])).json()
        assert "secret" not in again  # shown once


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**ADMINS_ONLY))
def test_change_webhook(
    as_caller: Any, caller: str, status: int, workspace: Workspace, hook: Any
) -> None:
    url = _webhooks_url(workspace, hook.pk)
    response = as_caller(caller).patch(url, {"active": False}, format="json")
    assert response.status_code == status
    hook.refresh_from_db()
    assert hook.active is (status != 200)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(204, ADMIN_UP)))
def test_delete_webhook(
    as_caller: Any, caller: str, status: int, workspace: Workspace, hook: Any
) -> None:
    from workspaces.models import WebhookEndpoint

    response = as_caller(caller).delete(_webhooks_url(workspace, hook.pk))
    assert response.status_code == status
    assert WebhookEndpoint.objects.filter(pk=hook.pk).exists() is (status != 204)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(202, ADMIN_UP)))
def test_send_a_test_event(
    as_caller: Any, caller: str, status: int, workspace: Workspace, hook: Any
) -> None:
    response = as_caller(caller).post(_webhooks_url(workspace, hook.pk, "test"))
    assert response.status_code == status
    if status == 202:
        delivery = response.json()
        assert (delivery["event_type"], delivery["status"]) == ("webhook.test", "pending")
        listed = as_caller(caller).get(_webhooks_url(workspace, hook.pk, "deliveries"))
        assert [d["id"] for d in listed.json()["results"]] == [delivery["id"]]


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**_table(202, ADMIN_UP)))
def test_retry_a_delivery(
    as_caller: Any, caller: str, status: int, workspace: Workspace, hook: Any
) -> None:
    from workspaces.models import WebhookDelivery

    services.workspace_rename(workspace=workspace, name="Again", actor=Actor(user=workspace.owner))
    delivery = WebhookDelivery.objects.get(endpoint=hook)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", next_attempt_at=None)
    url = _webhooks_url(workspace, "deliveries", delivery.pk, "retry")
    response = as_caller(caller).post(url)
    assert response.status_code == status
    delivery.refresh_from_db()
    assert delivery.status == ("pending" if status == 202 else "failed")
    retried = Event.objects.filter(type=EventType.WEBHOOK_DELIVERY_RETRIED, subject_id=hook.pk)
    if status == 202:  # on the trail, with its actor and what was retried
        [event] = retried
        assert event.data["delivery_id"] == str(delivery.pk)
        assert event.data["previous_status"] == "failed"
        assert event.actor.startswith(("user:", "api_key:"))
    else:
        assert not retried.exists()


@pytest.mark.django_db
def test_a_webhook_of_another_workspace_is_not_found(
    api: Any, workspace: Workspace, hook: Any, outsider: Any
) -> None:
    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    response = client_as(api, outsider).get(_webhooks_url(elsewhere, hook.pk))
    assert_error(response, 404)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://127.0.0.1/hook"}, "webhook_target"),
        ({"url": "https://10.0.0.1/hook"}, "webhook_target"),
        ({"url": "https://169.254.169.254/latest/meta-data/"}, "webhook_target"),
        ({"url": "https://localhost/hook"}, "webhook_target"),
        ({"url": "http://example.com/hook"}, "invalid_url"),
        ({"url": "https://example.com/", "event_types": ["nope"]}, "invalid"),
        ({"url": "https://example.com/", "secret": "mine"}, "invalid"),
    ],
)
def test_creating_a_webhook_refuses_bad_input(
    api: Any, workspace: Workspace, owner: Any, settings: Any, body: dict[str, Any], field: str
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_ALLOW_HTTP = False
    response = client_as(api, owner).post(_webhooks_url(workspace), body, format="json")
    assert assert_error(response, 400)["code"] == field

"""workspaces/access.py, the one tenant resolver: who acts (Actor), the role each kind of caller
holds in a workspace, 404 for outsiders and 403 below the role needed, and the workspaces each
caller may read in and administer."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from rest_framework.test import APIRequestFactory

from config.exceptions import NotFound, PermissionDenied
from tests.factories import key_actor, make_api_key, make_user, make_workspace
from workspaces import access, services
from workspaces.access import Actor
from workspaces.models import Role, Workspace


@pytest.fixture
def actors(
    workspace: Workspace,
    elsewhere: Workspace,
    owner: Any,
    admin_user: Any,
    member: Any,
    outsider: Any,
    superuser: Any,
) -> dict[str, Actor]:
    """Every kind of caller: people by their role in Lab, keys of Lab and of Elsewhere (all
    made by their workspace's owner), and a system task."""

    return {
        "owner": Actor(user=owner),
        "admin": Actor(user=admin_user),
        "member": Actor(user=member),
        "outsider": Actor(user=outsider),
        "superuser": Actor(user=superuser),
        "member_key": key_actor(workspace=workspace, role="member"),
        "admin_key": key_actor(workspace=workspace, role="admin"),
        "foreign_key": key_actor(workspace=elsewhere, role="admin"),
        "system": Actor.system("sweep"),
    }


def _ids(workspaces: Any) -> set[Any]:
    """Workspace ids from what visible_/administered_workspaces return; None stays None."""
    if workspaces is None:
        return {None}
    return set(Workspace.objects.filter(pk__in=workspaces).values_list("pk", flat=True))


# --- role_in ---------------------------------------------------------------------------------

ROLE_IN_LAB = {
    "owner": Role.OWNER, "admin": Role.ADMIN, "member": Role.MEMBER, "outsider": None,
    "superuser": Role.OWNER, "member_key": Role.MEMBER, "admin_key": Role.ADMIN,
    "foreign_key": None, "system": Role.OWNER,
}  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), ROLE_IN_LAB.items(), ids=ROLE_IN_LAB.keys())
def test_role_in_gives_each_caller_its_role_and_outsiders_none(
    actors: dict[str, Actor], workspace: Workspace, name: str, expected: Role | None
) -> None:
    assert access.role_in(actors[name], workspace.pk) == expected
    assert access.role_in(actors[name], str(workspace.pk)) == expected  # ids from URLs


def test_a_key_has_no_role_outside_its_workspace_whoever_made_it(
    actors: dict[str, Actor], owner: Any
) -> None:
    # The owner's keys are Lab's: in another workspace of the owner's they are outsiders.
    owners_other = make_workspace(owner=owner, name="Owner's other")
    assert access.role_in(actors["owner"], owners_other.pk) == Role.OWNER
    assert access.role_in(actors["admin_key"], owners_other.pk) is None


def test_a_superusers_key_is_limited_like_any_key(workspace: Workspace, superuser: Any) -> None:
    own = make_workspace(owner=superuser, name="Root's")
    api_key, _ = make_api_key(workspace=own, role="member")
    key = Actor(user=superuser, api_key=api_key)
    assert not key.is_superuser
    assert access.role_in(key, own.pk) == Role.MEMBER
    assert access.role_in(key, workspace.pk) is None
    assert access.role_in(Actor(user=superuser), workspace.pk) == Role.OWNER


def test_a_superuser_who_is_a_member_acts_with_their_membership(
    workspace: Workspace, superuser: Any
) -> None:
    services.membership_add(
        workspace=workspace, user=superuser, role="member", actor=Actor(user=workspace.owner)
    )
    assert access.role_in(Actor(user=superuser), workspace.pk) == Role.MEMBER


def test_no_workspace_and_no_user_are_outsiders(workspace: Workspace, owner: Any) -> None:
    assert access.role_in(Actor(user=owner), None) is None
    assert access.role_in(Actor(user=None), workspace.pk) is None
    assert access.role_in(Actor(user=owner), "00000000-0000-0000-0000-000000000000") is None


@pytest.mark.parametrize(
    ("name", "queries"),
    [("owner", 1), ("outsider", 1), ("member_key", 0), ("foreign_key", 0), ("system", 0)],
)
def test_role_in_costs_at_most_the_membership_query(
    actors: dict[str, Actor],
    workspace: Workspace,
    name: str,
    queries: int,
    django_assert_num_queries: Any,
) -> None:
    with django_assert_num_queries(queries):
        access.role_in(actors[name], workspace.pk)


# --- require and has_role --------------------------------------------------------------------


def test_require_hides_the_workspace_from_an_outsider() -> None:
    with pytest.raises(NotFound) as raised:
        access.require(None, Role.MEMBER, what="run")
    assert (raised.value.status_code, raised.value.detail) == (404, "No such run.")


@pytest.mark.parametrize(
    ("role", "minimum"),
    [
        (Role.MEMBER, Role.ADMIN),
        (Role.MEMBER, Role.OWNER),
        (Role.ADMIN, Role.OWNER),
    ],
)
def test_require_refuses_a_role_below_the_minimum_with_a_403(role: Role, minimum: Role) -> None:
    with pytest.raises(PermissionDenied) as raised:
        access.require(role, minimum)
    assert raised.value.status_code == 403
    assert minimum.label.lower() in raised.value.detail


@pytest.mark.parametrize("minimum", list(Role))
@pytest.mark.parametrize("role", list(Role))
def test_require_lets_the_minimum_and_above_through(role: Role, minimum: Role) -> None:
    enough = access.ROLE_RANK[role] >= access.ROLE_RANK[minimum]
    assert access.has_role(role, minimum) is enough
    if enough:
        assert access.require(role, minimum) == role
    assert access.has_role(None, minimum) is False


# --- visible_workspaces and administered_workspaces ------------------------------------------

VISIBLE = {
    "owner": {"lab"}, "admin": {"lab"}, "member": {"lab"}, "outsider": {"elsewhere"},
    "superuser": {None}, "member_key": {"lab"}, "admin_key": {"lab"},
    "foreign_key": {"elsewhere"}, "system": set(),
}  # fmt: skip
ADMINISTERED = {
    "owner": {"lab"}, "admin": {"lab"}, "member": set(), "outsider": {"elsewhere"},
    "superuser": {None}, "member_key": set(), "admin_key": {"lab"},
    "foreign_key": {"elsewhere"}, "system": set(),
}  # fmt: skip


def _named(ids: set[Any], workspace: Workspace, elsewhere: Workspace) -> set[str | None]:
    names = {workspace.pk: "lab", elsewhere.pk: "elsewhere", None: None}
    return {names[pk] for pk in ids}


@pytest.mark.parametrize("name", VISIBLE)
def test_visible_workspaces_are_where_the_caller_is_a_member_or_more(
    actors: dict[str, Actor], workspace: Workspace, elsewhere: Workspace, name: str
) -> None:
    visible = _ids(access.visible_workspaces(actors[name]))
    assert _named(visible, workspace, elsewhere) == VISIBLE[name]


@pytest.mark.parametrize("name", ADMINISTERED)
def test_administered_workspaces_are_where_the_caller_is_admin_or_owner(
    actors: dict[str, Actor], workspace: Workspace, elsewhere: Workspace, name: str
) -> None:
    administered = _ids(access.administered_workspaces(actors[name]))
    assert _named(administered, workspace, elsewhere) == ADMINISTERED[name]


# --- role_annotation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "roles"),
    [
        ("owner", {"Lab": "owner", "Elsewhere": None}),
        ("member", {"Lab": "member", "Elsewhere": None}),
        ("outsider", {"Lab": None, "Elsewhere": "owner"}),
        ("admin_key", {"Lab": "admin", "Elsewhere": "admin"}),  # callers filter to its workspace
    ],
)
def test_role_annotation_puts_the_callers_role_on_each_workspace(
    actors: dict[str, Actor], elsewhere: Workspace, name: str, roles: dict[str, str | None]
) -> None:
    annotated = Workspace.objects.annotate(role_here=access.role_annotation(actors[name]))
    assert {w.name: w.role_here for w in annotated} == roles


# --- Actor -----------------------------------------------------------------------------------


def test_an_actor_names_itself_on_the_trail(actors: dict[str, Actor]) -> None:
    key = actors["member_key"].api_key
    assert key is not None
    assert str(actors["admin"]) == "user:adam"
    assert str(actors["member_key"]) == f"api_key:{key.prefix}"
    assert str(actors["system"]) == "system:sweep"


def test_only_a_person_acting_as_themselves_is_a_person(actors: dict[str, Actor]) -> None:
    assert actors["member"].is_person
    assert not actors["member_key"].is_person
    assert not actors["system"].is_person
    assert actors["superuser"].is_superuser
    assert not actors["owner"].is_superuser
    assert not actors["system"].is_superuser


def test_an_anonymous_user_is_not_an_actor(db: Any) -> None:
    with pytest.raises(PermissionDenied) as raised:
        Actor.for_user(AnonymousUser())
    assert raised.value.code == "not_authenticated"


def test_the_api_caller_is_the_key_when_a_key_authenticated(workspace: Workspace) -> None:
    api_key, _ = make_api_key(workspace=workspace, role="admin")
    request = APIRequestFactory().get("/")
    request.user = api_key.created_by
    request.auth = api_key  # as DRF sets it on its Request
    assert Actor.from_request(request) == Actor(user=api_key.created_by, api_key=api_key)

    person = make_user()
    request.user = person
    request.auth = None
    assert Actor.from_request(request) == Actor(user=person)

"""workspaces/services.py: owner protections, membership rules, names, API keys, atomicity, and
the one event on the trail that each write records (SPEC §10)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import IntegrityError
from django.utils import timezone

from config.exceptions import Conflict, InvalidInput, PermissionDenied
from tests.factories import make_api_key, make_user
from tests.workspaces.conftest import role_of
from workspaces import services
from workspaces.access import Actor
from workspaces.models import ApiKey, Event, Membership, Role, Workspace


def _membership(workspace: Workspace, user: Any) -> Membership:
    return Membership.objects.get(workspace=workspace, user=user)


def _trail(workspace: Workspace, type: str) -> list[Event]:
    return list(Event.objects.filter(workspace_id=workspace.pk, type=type).order_by("id"))


# --- owner protections -----------------------------------------------------------------------


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
    assert role_of(workspace, workspace.owner) == Role.OWNER


def test_the_owner_cannot_leave_by_the_service(workspace: Workspace, owner: Any) -> None:
    with pytest.raises(PermissionDenied):
        services.membership_remove(
            membership=_membership(workspace, owner), actor=Actor(user=owner)
        )
    assert role_of(workspace, owner) == Role.OWNER


@pytest.mark.parametrize("role", ["admin", "member"])
def test_the_owner_cannot_be_demoted_by_the_service(
    workspace: Workspace, owner: Any, admin_user: Any, role: str
) -> None:
    with pytest.raises(PermissionDenied) as raised:
        services.membership_change_role(
            membership=_membership(workspace, owner), role=role, actor=Actor(user=admin_user)
        )
    assert raised.value.code == "owner_protected"
    assert role_of(workspace, owner) == Role.OWNER


def test_nobody_can_be_promoted_to_owner_by_the_service(
    workspace: Workspace, owner: Any, member: Any
) -> None:
    with pytest.raises(InvalidInput) as raised:
        services.membership_change_role(
            membership=_membership(workspace, member), role="owner", actor=Actor(user=owner)
        )
    assert raised.value.code == "owner"
    assert role_of(workspace, member) == Role.MEMBER


def test_nobody_can_be_added_as_owner_by_the_service(workspace: Workspace, owner: Any) -> None:
    newcomer = make_user()
    with pytest.raises(InvalidInput):
        services.membership_add(
            workspace=workspace, user=newcomer, role="owner", actor=Actor(user=owner)
        )
    assert role_of(workspace, newcomer) is None


def test_an_unknown_role_is_refused_by_the_service(workspace: Workspace, owner: Any) -> None:
    with pytest.raises(InvalidInput) as raised:
        services.membership_add(
            workspace=workspace, user=make_user(), role="superhero", actor=Actor(user=owner)
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
    assert role_of(workspace, member) == Role.MEMBER


# --- atomicity -------------------------------------------------------------------------------


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
    assert not Event.objects.exists()  # the event rolled back with the write


def test_a_refused_member_leaves_no_event(workspace: Workspace, owner: Any, member: Any) -> None:
    before = Event.objects.count()
    with pytest.raises(Conflict):
        services.membership_add(
            workspace=workspace, user=member, role="admin", actor=Actor(user=owner)
        )
    assert Event.objects.count() == before


# --- names -----------------------------------------------------------------------------------


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


# --- the trail: one event per write ----------------------------------------------------------


def test_creating_a_workspace_is_on_the_trail_as_its_owner(owner: Any) -> None:
    workspace = services.workspace_create(name="Lab", owner=owner)
    [event] = _trail(workspace, "workspace.created")
    assert (event.actor, event.actor_user, event.data) == ("user:olivia", owner, {"name": "Lab"})
    assert (event.subject_type, event.subject_id) == ("workspace", str(workspace.pk))


def test_a_rename_records_the_old_and_new_name_and_a_same_name_rename_nothing(
    workspace: Workspace, owner: Any
) -> None:
    services.workspace_rename(workspace=workspace, name=" Lab 2 ", actor=Actor(user=owner))
    services.workspace_rename(workspace=workspace, name="Lab 2", actor=Actor(user=owner))
    workspace.refresh_from_db()
    assert workspace.name == "Lab 2"
    [event] = _trail(workspace, "workspace.renamed")
    assert (event.actor, event.data) == ("user:olivia", {"from": "Lab", "to": "Lab 2"})


def test_a_deleted_workspace_keeps_its_trail_with_the_deletion_last(
    workspace: Workspace, owner: Any
) -> None:
    workspace_id = workspace.pk
    key, _ = make_api_key(workspace=workspace)
    services.workspace_delete(workspace=workspace, actor=Actor(user=owner))

    assert not Workspace.objects.filter(pk=workspace_id).exists()
    assert not Membership.objects.filter(workspace_id=workspace_id).exists()
    assert not ApiKey.objects.filter(pk=key.pk).exists()
    trail = Event.objects.filter(workspace_id=workspace_id).order_by("id")
    last = trail.last()
    assert last is not None
    assert (last.type, last.actor, last.data) == (
        "workspace.deleted",
        "user:olivia",
        {"name": "Lab"},
    )
    assert trail.count() == 5  # created, two members added, a key created, deleted


def test_adding_changing_and_removing_a_member_each_record_one_event(
    workspace: Workspace, admin_user: Any
) -> None:
    adam = Actor(user=admin_user)
    newcomer = make_user(username="nina")
    membership = services.membership_add(
        workspace=workspace, user=newcomer, role="member", actor=adam
    )
    services.membership_change_role(membership=membership, role="admin", actor=adam)
    services.membership_change_role(membership=membership, role="admin", actor=adam)  # no-op
    services.membership_remove(membership=membership, actor=adam)

    person = {"user_id": newcomer.pk, "username": "nina"}
    [added] = [e for e in _trail(workspace, "member.added") if e.data["username"] == "nina"]
    assert (added.actor, added.data) == ("user:adam", {**person, "role": "member"})
    [changed] = _trail(workspace, "member.role_changed")
    assert changed.data == {**person, "from": "member", "to": "admin"}
    [removed] = _trail(workspace, "member.removed")
    assert removed.data == {**person, "role": "admin", "left": False}
    assert (removed.subject_type, removed.subject_id) == ("member", str(newcomer.pk))


def test_leaving_is_recorded_as_leaving(workspace: Workspace, member: Any) -> None:
    services.membership_remove(membership=_membership(workspace, member), actor=Actor(user=member))
    [event] = _trail(workspace, "member.removed")
    assert (event.actor, event.data["left"]) == ("user:mia", True)


def test_a_key_removing_its_creator_is_not_leaving(workspace: Workspace, admin_user: Any) -> None:
    # A key acts for the workspace, not as the person who made it: leaving is a person's act.
    key, _ = services.api_key_create(
        workspace=workspace, name="ops", role="admin", actor=Actor(user=admin_user)
    )
    services.membership_remove(
        membership=_membership(workspace, admin_user), actor=Actor(user=admin_user, api_key=key)
    )
    [event] = _trail(workspace, "member.removed")
    assert (event.actor, event.data["left"]) == (f"api_key:{key.prefix}", False)


# --- API keys --------------------------------------------------------------------------------


def test_only_the_sha256_of_the_secret_is_stored(workspace: Workspace) -> None:
    key, secret = make_api_key(workspace=workspace)
    stored = ApiKey.objects.filter(pk=key.pk).values()[0]
    assert secret not in {str(value) for value in stored.values()}
    assert stored["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()


def test_a_new_key_is_on_the_trail_without_its_secret(workspace: Workspace, owner: Any) -> None:
    key, secret = services.api_key_create(
        workspace=workspace, name=" ci ", role="admin", actor=Actor(user=owner)
    )
    assert (key.name, key.role, key.created_by) == ("ci", "admin", owner)
    assert secret.startswith(f"alk_{key.prefix}_")
    [event] = _trail(workspace, "api_key.created")
    assert event.data == {"name": "ci", "role": "admin", "prefix": key.prefix}
    assert secret not in str(event.data) and key.secret_hash not in str(event.data)


@pytest.mark.parametrize("role", ["owner", "superhero", ""])
def test_a_key_is_a_member_or_an_admin(workspace: Workspace, owner: Any, role: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        services.api_key_create(workspace=workspace, name="ci", role=role, actor=Actor(user=owner))
    assert raised.value.code == "invalid_choice"
    assert not ApiKey.objects.exists()


def test_a_key_is_created_by_a_person(workspace: Workspace) -> None:
    with pytest.raises(PermissionDenied) as raised:
        services.api_key_create(
            workspace=workspace, name="ci", role="member", actor=Actor.system("test")
        )
    assert raised.value.code == "needs_user"
    assert not ApiKey.objects.exists()


def test_revoking_twice_revokes_once_and_records_once(workspace: Workspace, owner: Any) -> None:
    key, _ = make_api_key(workspace=workspace, name="ci")
    first = services.api_key_revoke(api_key=key, actor=Actor(user=owner))
    revoked_at = first.revoked_at
    assert revoked_at is not None and not first.is_active

    stale = ApiKey.objects.get(pk=key.pk)
    stale.revoked_at = None  # a copy read before the first revoke
    again = services.api_key_revoke(api_key=stale, actor=Actor(user=owner))

    assert again.revoked_at == revoked_at
    [event] = _trail(workspace, "api_key.revoked")
    assert (event.actor, event.data) == ("user:olivia", {"name": "ci", "prefix": key.prefix})


def test_marking_a_key_used_writes_at_most_once_per_interval(workspace: Workspace) -> None:
    key, _ = make_api_key(workspace=workspace)
    events_before = Event.objects.count()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        services.api_key_mark_used(api_key=key)
    with time_machine.travel(start + services.API_KEY_TOUCH_INTERVAL / 2, tick=False):
        services.api_key_mark_used(api_key=key)
    key.refresh_from_db()
    assert key.last_used_at == start

    later = start + services.API_KEY_TOUCH_INTERVAL + timedelta(seconds=1)
    with time_machine.travel(later, tick=False):
        services.api_key_mark_used(api_key=key)
    key.refresh_from_db()
    assert key.last_used_at == later
    assert Event.objects.count() == events_before  # using a key is not a write on the trail

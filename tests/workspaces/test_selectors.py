"""workspaces/selectors.py: reads scoped to the actor — workspaces with the caller's role,
members and keys of one workspace, a key found by its secret, and the trail with its filters
and cursor."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import transaction

from config.exceptions import NotFound, PermissionDenied
from tests.factories import make_api_key, make_run, make_workspace, record_event
from workspaces import events, selectors, services
from workspaces.access import Actor
from workspaces.models import EventType, Role, Subject, Workspace

# --- workspaces ------------------------------------------------------------------------------


def test_workspace_list_is_the_callers_workspaces_with_their_role(
    workspace: Workspace, elsewhere: Workspace, member: Any, outsider: Any
) -> None:
    services.membership_add(
        workspace=elsewhere, user=member, role="admin", actor=Actor(user=outsider)
    )
    mine: list[Any] = list(selectors.workspace_list(actor=Actor(user=member)))
    listed = {w.name: w.my_role for w in mine}
    assert listed == {"Lab": "member", "Elsewhere": "admin"}
    assert {w.name for w in selectors.workspace_list(actor=Actor(user=outsider))} == {"Elsewhere"}


def test_workspace_list_for_a_key_is_its_one_workspace_with_the_keys_role(
    workspace: Workspace, owner: Any
) -> None:
    make_workspace(owner=owner, name="Owner's other")
    key, _ = make_api_key(workspace=workspace, role="admin")
    listed: list[Any] = list(selectors.workspace_list(actor=Actor(user=owner, api_key=key)))
    assert [(w.name, w.my_role) for w in listed] == [("Lab", "admin")]


def test_workspace_list_for_a_superuser_is_still_their_own(
    workspace: Workspace, superuser: Any
) -> None:
    # "My workspaces": a superuser may open any workspace, but lists only their own.
    assert list(selectors.workspace_list(actor=Actor(user=superuser))) == []
    workspace_, role = selectors.workspace_get(
        actor=Actor(user=superuser), workspace_id=workspace.pk
    )
    assert (workspace_, role) == (workspace, Role.OWNER)


def test_workspace_get_gives_the_workspace_and_the_callers_role(
    workspace: Workspace, admin_user: Any
) -> None:
    found, role = selectors.workspace_get(
        actor=Actor(user=admin_user), workspace_id=str(workspace.pk), minimum=Role.ADMIN
    )
    assert (found, role) == (workspace, Role.ADMIN)


def test_workspace_get_is_a_404_for_outsiders_and_unknown_ids(
    workspace: Workspace, outsider: Any
) -> None:
    for actor, workspace_id in (
        (Actor(user=outsider), workspace.pk),
        (Actor(user=workspace.owner), uuid.uuid4()),
    ):
        with pytest.raises(NotFound) as raised:
            selectors.workspace_get(actor=actor, workspace_id=workspace_id)
        assert raised.value.detail == "No such workspace."


def test_workspace_get_is_a_403_below_the_minimum(workspace: Workspace, member: Any) -> None:
    with pytest.raises(PermissionDenied):
        selectors.workspace_get(
            actor=Actor(user=member), workspace_id=workspace.pk, minimum=Role.ADMIN
        )


# --- members and keys ------------------------------------------------------------------------


def test_members_are_listed_oldest_first_with_their_users_in_one_query(
    workspace: Workspace, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        listed = [(m.user.username, m.role) for m in selectors.membership_list(workspace=workspace)]
    assert listed == [("olivia", "owner"), ("adam", "admin"), ("mia", "member")]


def test_a_member_is_found_only_in_their_workspace(
    workspace: Workspace, elsewhere: Workspace, member: Any, outsider: Any
) -> None:
    assert selectors.membership_get(workspace=workspace, user_id=member.pk).role == "member"
    for ws, user in ((workspace, outsider), (elsewhere, member)):
        with pytest.raises(NotFound) as raised:
            selectors.membership_get(workspace=ws, user_id=user.pk)
        assert raised.value.detail == "No such member."


def test_a_key_is_found_only_in_its_workspace(workspace: Workspace, elsewhere: Workspace) -> None:
    key, _ = make_api_key(workspace=workspace)
    foreign, _ = make_api_key(workspace=elsewhere)
    assert list(selectors.api_key_list(workspace=workspace)) == [key]
    assert selectors.api_key_get(workspace=workspace, key_id=key.pk) == key
    with pytest.raises(NotFound):
        selectors.api_key_get(workspace=workspace, key_id=foreign.pk)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "alk_\x00\x00\x00\x00\x00\x00\x00\x00_secretsecretsecretsecret",
        "alk_DEADBEEF_secretsecretsecretsecret",
        "alk_deadbeef_short",
        "alk_deadbeef_secretsecretsecretsecret\n",
        "alk_deadbeef_secret secretsecretsecret",
        "xyz_deadbeef_secretsecretsecretsecret",
    ],
)
def test_a_string_not_shaped_like_a_key_is_refused_before_any_lookup(
    db: Any, raw: str, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        assert selectors.api_key_find(raw_key=raw) is None


def test_a_real_key_is_found_by_its_secret(workspace: Workspace) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert selectors.api_key_find(raw_key=secret) == key


def test_a_key_is_found_revoked_or_not_but_never_by_a_wrong_secret(
    workspace: Workspace, owner: Any
) -> None:
    key, secret = make_api_key(workspace=workspace)
    services.api_key_revoke(api_key=key, actor=Actor(user=owner))
    found = selectors.api_key_find(raw_key=secret)
    assert found == key and found.revoked_at is not None  # the caller says why it is refused
    wrong = secret[: -len("secret")] + ("x" * len("secret"))
    assert selectors.api_key_find(raw_key=wrong) is None
    unknown_prefix = f"alk_{'0' * 8}_{secret.split('_', 2)[2]}"
    assert selectors.api_key_find(raw_key=unknown_prefix) is None


# --- the trail -------------------------------------------------------------------------------


@pytest.fixture
def trail(workspace: Workspace, elsewhere: Workspace) -> dict[str, Any]:
    """Lab's trail (created, two members added) plus events of two runs in two threads; and
    an event of the outsider's workspace that Lab's trail must never show."""
    first = make_run(workspace=workspace, thread_id="thread-a")
    second = make_run(workspace=workspace, thread_id="thread-b")
    return {
        "first": first,
        "second": second,
        "created": record_event(first, EventType.RUN_CREATED),
        "canceled": record_event(first, EventType.RUN_CANCELED),
        "other": record_event(second, EventType.RUN_CREATED),
        "foreign": record_event(make_run(workspace=elsewhere, thread_id="thread-a"), "run.created"),
    }


def _types(queryset: Any) -> list[str]:
    return [event.type for event in queryset]


def test_event_list_is_the_workspaces_trail_oldest_first(
    workspace: Workspace, trail: dict[str, Any]
) -> None:
    listed = list(selectors.event_list(workspace=workspace))
    assert _types(listed) == [
        "workspace.created", "member.added", "member.added",
        "run.created", "run.canceled", "run.created",
    ]  # fmt: skip
    assert [e.pk for e in listed] == sorted(e.pk for e in listed)
    assert trail["foreign"].pk not in {e.pk for e in listed}


def test_event_list_reads_on_after_the_cursor(workspace: Workspace, trail: dict[str, Any]) -> None:
    after = selectors.event_list(workspace=workspace, after=trail["created"].pk)
    assert [e.pk for e in after] == [trail["canceled"].pk, trail["other"].pk]
    assert not selectors.event_list(workspace=workspace, after=trail["other"].pk).exists()


def test_event_list_filters_by_type_run_and_thread(
    workspace: Workspace, trail: dict[str, Any]
) -> None:
    def listed(**filters: Any) -> list[int]:
        return [e.pk for e in selectors.event_list(workspace=workspace, **filters)]

    assert listed(types=["run.created"]) == [trail["created"].pk, trail["other"].pk]
    assert listed(types=["run.canceled", "run.created"]) == [
        trail["created"].pk, trail["canceled"].pk, trail["other"].pk,
    ]  # fmt: skip
    assert listed(types=[]) == listed()  # no types: every type
    assert listed(run_id=trail["second"].pk) == [trail["other"].pk]
    assert listed(thread_id="thread-a") == [trail["created"].pk, trail["canceled"].pk]
    assert listed(thread_id="thread-a", types=["run.created"], after=0) == [trail["created"].pk]


def test_subject_events_are_one_objects_history_oldest_first(
    workspace: Workspace, trail: dict[str, Any]
) -> None:
    history = selectors.subject_events(kind="run", subject_id=trail["first"].pk)
    assert [e.pk for e in history] == [trail["created"].pk, trail["canceled"].pk]
    about_the_workspace = selectors.subject_events(kind="workspace", subject_id=workspace.pk)
    assert _types(about_the_workspace) == ["workspace.created"]
    # The same id under another kind is another subject.
    with transaction.atomic():
        events.record(
            actor=Actor.system("test"),
            type=EventType.COMMAND_STARTED,
            subject=Subject("command", trail["first"].pk, workspace.pk),
        )
    assert [e.pk for e in selectors.subject_events(kind="run", subject_id=trail["first"].pk)] == [
        trail["created"].pk,
        trail["canceled"].pk,
    ]

"""sandboxes/selectors.py: runs scoped to the caller, who controls a run, the command history,
and usage — runs, sandbox-seconds and cost by status and by day."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from config.exceptions import NotFound, PermissionDenied
from sandboxes import selectors
from sandboxes.models import Command, CommandKind, SandboxRun
from tests.factories import make_api_key, make_run, make_workspace
from tests.sandboxes.conftest import DAY1, NOW, ended_run
from workspaces.access import Actor
from workspaces.models import Role, Workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(workspace: Workspace, outsider: Any) -> dict[str, SandboxRun]:
    """A run in Lab, and one in the outsider's own workspace."""
    return {
        "lab": make_run(workspace=workspace),
        "elsewhere": make_run(workspace=make_workspace(owner=outsider, name="Elsewhere")),
    }


# --- run_list and run_get ----------------------------------------------------------------


def test_run_list_of_a_workspace_is_its_runs(
    workspace: Workspace, runs: dict[str, SandboxRun], member: Any
) -> None:
    listed = selectors.run_list(actor=Actor(user=member), workspace=workspace)
    assert list(listed) == [runs["lab"]]


@pytest.mark.parametrize(
    ("who", "expected"),
    [("member", {"lab"}), ("outsider", {"elsewhere"}), ("superuser", {"lab", "elsewhere"})],
)
def test_run_list_across_workspaces_is_what_the_caller_may_read(
    runs: dict[str, SandboxRun], request: Any, who: str, expected: set[str]
) -> None:
    actor = Actor(user=request.getfixturevalue(who))
    by_id = {run.pk: name for name, run in runs.items()}
    assert {by_id[run.pk] for run in selectors.run_list(actor=actor)} == expected


def test_run_list_for_a_key_is_its_workspaces_runs(
    workspace: Workspace, runs: dict[str, SandboxRun]
) -> None:
    key, _ = make_api_key(workspace=workspace)
    assert list(selectors.run_list(actor=Actor(user=key.created_by, api_key=key))) == [runs["lab"]]


def test_run_list_needs_no_query_per_run(
    workspace: Workspace, member: Any, django_assert_num_queries: Any
) -> None:
    for _ in range(5):
        make_run(workspace=workspace)
    # The caller's workspaces are read first, as a list (a subquery would hide from the
    # planner how many runs each holds); then one query per list, the runs' own columns.
    with django_assert_num_queries(3):
        runs = list(selectors.run_list(actor=Actor(user=member)))
        assert {(run.workspace_id, run.created_by_id) for run in runs} == {
            (workspace.pk, workspace.owner_id)
        }
        assert list(selectors.run_list(actor=Actor(user=member), workspace=workspace))


def test_run_get_gives_the_run_and_the_callers_role(
    runs: dict[str, SandboxRun], admin_user: Any
) -> None:
    run, role = selectors.run_get(actor=Actor(user=admin_user), run_id=str(runs["lab"].pk))
    assert (run, role) == (runs["lab"], Role.ADMIN)


def test_run_get_is_a_404_for_an_outsider_or_an_unknown_run(
    runs: dict[str, SandboxRun], outsider: Any, member: Any
) -> None:
    for actor, run_id in (
        (Actor(user=outsider), runs["lab"].pk),
        (Actor(user=member), runs["elsewhere"].pk),
        (Actor(user=member), uuid.uuid4()),
    ):
        with pytest.raises(NotFound) as raised:
            selectors.run_get(actor=actor, run_id=run_id)
        assert raised.value.detail == "No such run."


def test_run_get_is_a_403_below_the_minimum(runs: dict[str, SandboxRun], member: Any) -> None:
    with pytest.raises(PermissionDenied):
        selectors.run_get(actor=Actor(user=member), run_id=runs["lab"].pk, minimum=Role.ADMIN)


# --- run_is_controlled_by ----------------------------------------------------------------


def test_admins_control_every_run_and_members_their_own(
    workspace: Workspace, admin_user: Any, member: Any
) -> None:
    owners = make_run(workspace=workspace)
    own = make_run(workspace=workspace, created_by=member)

    def controls(run: SandboxRun, actor: Actor, role: Role) -> bool:
        return selectors.run_is_controlled_by(run=run, actor=actor, role=role)

    assert controls(owners, Actor(user=admin_user), Role.ADMIN)
    assert controls(owners, Actor(user=workspace.owner), Role.OWNER)
    assert controls(own, Actor(user=member), Role.MEMBER)
    assert not controls(owners, Actor(user=member), Role.MEMBER)


def test_a_member_key_controls_only_the_runs_it_started(workspace: Workspace) -> None:
    key, _ = make_api_key(workspace=workspace)
    other_key, _ = make_api_key(workspace=workspace, name="other")
    as_key = Actor(user=key.created_by, api_key=key)
    started = make_run(workspace=workspace, api_key=key)
    by_hand = make_run(workspace=workspace)  # the key's creator's own run, not the key's
    by_other_key = make_run(workspace=workspace, api_key=other_key)

    assert selectors.run_is_controlled_by(run=started, actor=as_key, role=Role.MEMBER)
    assert not selectors.run_is_controlled_by(run=by_hand, actor=as_key, role=Role.MEMBER)
    assert not selectors.run_is_controlled_by(run=by_other_key, actor=as_key, role=Role.MEMBER)
    admin_key, _ = make_api_key(workspace=workspace, role="admin", name="ops")
    as_admin_key = Actor(user=admin_key.created_by, api_key=admin_key)
    assert selectors.run_is_controlled_by(run=by_hand, actor=as_admin_key, role=Role.ADMIN)


# --- command_list and active_run_count ---------------------------------------------------


def test_the_command_history_is_the_runs_oldest_first(workspace: Workspace) -> None:
    run, other = make_run(workspace=workspace, status="running"), make_run(workspace=workspace)
    now = timezone.now()

    def command(on: SandboxRun, text: str, seconds_ago: int) -> Command:
        return Command.objects.create(
            run=on, workspace=workspace, kind=CommandKind.EXEC, command=text, cwd="/home/user",
            actor="user:olivia", started_at=now - timedelta(seconds=seconds_ago),
        )  # fmt: skip

    command(run, "second", 10)
    command(run, "first", 20)
    command(other, "not this run's", 30)
    assert [c.command for c in selectors.command_list(run=run)] == ["first", "second"]


def test_active_runs_are_the_booting_and_running_runs_of_the_workspace(
    workspace: Workspace, outsider: Any
) -> None:
    for status in ("booting", "running", "paused", "succeeded", "failed", "canceled"):
        make_run(workspace=workspace, status=status)
    make_run(workspace=make_workspace(owner=outsider), status="running")
    assert selectors.active_run_count(workspace=workspace) == 2  # a paused run is not active


# --- usage -------------------------------------------------------------------------------


def test_usage_totals_and_splits_by_status_and_by_day(
    usage_history: None, workspace: Workspace
) -> None:
    usage = selectors.run_usage(workspace=workspace, start=date(2026, 1, 5), end=date(2026, 1, 7))
    assert (usage.runs, usage.sandbox_seconds, usage.cost_usd) == (5, 1200.0, Decimal("0.875"))
    assert {status: totals.runs for status, totals in usage.by_status.items()} == {
        "booting": 1, "running": 1, "paused": 0, "succeeded": 1, "failed": 1, "canceled": 1,
    }  # fmt: skip
    assert usage.by_status["running"].sandbox_seconds == 300.0  # so far, for a running run
    assert usage.by_status["running"].cost_usd == Decimal("0")  # cost comes when it ends
    assert [(d.day, d.runs, d.cost_usd) for d in usage.by_day] == [
        (date(2026, 1, 5), 2, Decimal("0.75")),
        (date(2026, 1, 6), 2, Decimal("0.125")),
        (date(2026, 1, 7), 1, Decimal("0")),
    ]


def test_every_status_and_every_day_is_listed_zeros_included(workspace: Workspace) -> None:
    usage = selectors.run_usage(workspace=workspace, start=date(2026, 1, 1), end=date(2026, 1, 3))
    assert (usage.runs, usage.sandbox_seconds, usage.cost_usd) == (0, 0.0, Decimal("0"))
    assert set(usage.by_status) == {
        "booting", "running", "paused", "succeeded", "failed", "canceled",
    }  # fmt: skip
    assert [d.day for d in usage.by_day] == [date(2026, 1, d) for d in (1, 2, 3)]
    assert str(usage.cost_usd) == "0.000000"  # cost_usd's six places, as the API shows them


def test_days_are_whole_and_inclusive(workspace: Workspace, time_machine: Any) -> None:
    time_machine.move_to(NOW, tick=False)
    ended_run(workspace, "succeeded", DAY1 + timedelta(seconds=5), 10, "1")  # created 00:00:00
    ended_run(workspace, "succeeded", DAY1 + timedelta(days=1), 10, "2")  # created 23:59:55 day 1
    ended_run(workspace, "succeeded", DAY1 + timedelta(days=1, seconds=5), 10, "4")  # 00:00 day 2

    one_day = selectors.run_usage(workspace=workspace, start=date(2026, 1, 5), end=date(2026, 1, 5))
    assert (one_day.runs, one_day.cost_usd) == (2, Decimal("3"))
    assert [(d.day, d.runs) for d in one_day.by_day] == [(date(2026, 1, 5), 2)]


def test_usage_takes_three_queries_whatever_the_number_of_runs(
    usage_history: None, workspace: Workspace, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(3):
        selectors.run_usage(workspace=workspace, start=date(2025, 1, 8), end=date(2026, 1, 7))


def test_usage_leaves_out_the_time_runs_were_paused(
    workspace: Workspace, time_machine: Any
) -> None:
    time_machine.move_to(NOW, tick=False)
    start = NOW - timedelta(hours=2)
    make_run(  # ran 2 h, paused 90 min of it
        workspace=workspace, status="succeeded", created_at=start, running_at=start,
        finished_at=NOW, paused_for=timedelta(minutes=90),
    )  # fmt: skip
    make_run(  # running for 1 h, of which 20 min in an earlier pause; paused again 10 min ago
        workspace=workspace, status="paused", created_at=NOW - timedelta(hours=1),
        running_at=NOW - timedelta(hours=1), paused_for=timedelta(minutes=20),
        paused_at=NOW - timedelta(minutes=10),
    )  # fmt: skip
    usage = selectors.run_usage(workspace=workspace, start=NOW.date(), end=NOW.date())
    assert usage.by_status["succeeded"].sandbox_seconds == 30 * 60
    assert usage.by_status["paused"].sandbox_seconds == 30 * 60
    assert usage.sandbox_seconds == 60 * 60

"""GET workspaces/{ws}/usage/: runs, sandbox-seconds and cost by status and by day, for
admins and owners only, with validated dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from sandboxes.selectors import run_usage
from tests.conftest import client_as
from tests.factories import make_api_key, make_run, make_workspace
from workspaces import services as workspace_services
from workspaces.access import Actor
from workspaces.models import Workspace

pytestmark = pytest.mark.django_db

DAY1 = datetime(2026, 1, 5, tzinfo=UTC)
NOW = DAY1 + timedelta(days=2, hours=12, minutes=5)  # day 3, 12:05


def _url(workspace: Workspace) -> str:
    return f"/api/v1/workspaces/{workspace.pk}/usage/"


def _ended(workspace: Workspace, status: str, start: datetime, seconds: int, cost: str) -> Any:
    return make_run(
        workspace=workspace, status=status, created_at=start - timedelta(seconds=5),
        running_at=start, finished_at=start + timedelta(seconds=seconds),
        cost_usd=Decimal(cost),
    )  # fmt: skip


@pytest.fixture
def history(workspace: Workspace, outsider: Any, time_machine: Any) -> None:
    """Three days of runs in the workspace, and some that must not count."""
    time_machine.move_to(NOW, tick=False)
    _ended(workspace, "succeeded", DAY1 + timedelta(hours=9), 600, "0.5")
    _ended(workspace, "failed", DAY1 + timedelta(hours=10), 100, "0.25")
    _ended(workspace, "canceled", DAY1 + timedelta(days=1, hours=8), 200, "0.125")
    make_run(workspace=workspace, created_at=DAY1 + timedelta(days=1, hours=9))  # booting
    make_run(  # running since 12:00 on day 3: 300 s so far, no cost yet
        workspace=workspace, status="running", created_at=NOW - timedelta(minutes=6),
        running_at=NOW - timedelta(minutes=5),
    )  # fmt: skip
    # Not counted: the day before, and another workspace.
    _ended(workspace, "succeeded", DAY1 - timedelta(seconds=10), 100, "9")
    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    _ended(elsewhere, "succeeded", DAY1 + timedelta(hours=9), 100, "9")


def _totals(runs: int, seconds: float, cost: str) -> dict[str, Any]:
    return {"runs": runs, "sandbox_seconds": seconds, "cost_usd": cost}


def test_usage_by_status_and_by_day(
    history: None, api: Any, owner: Any, workspace: Workspace
) -> None:
    query = {"from": "2026-01-05", "to": "2026-01-07"}
    response = client_as(api, owner).get(_url(workspace), query)

    assert response.status_code == 200, response.json()
    assert response.json() == {
        "from": "2026-01-05",
        "to": "2026-01-07",
        **_totals(5, 1200.0, "0.875000"),
        "by_status": {
            "booting": _totals(1, 0.0, "0.000000"),
            "running": _totals(1, 300.0, "0.000000"),
            "succeeded": _totals(1, 600.0, "0.500000"),
            "failed": _totals(1, 100.0, "0.250000"),
            "canceled": _totals(1, 200.0, "0.125000"),
        },
        "by_day": [
            {"day": "2026-01-05", **_totals(2, 700.0, "0.750000")},
            {"day": "2026-01-06", **_totals(2, 200.0, "0.125000")},
            {"day": "2026-01-07", **_totals(1, 300.0, "0.000000")},
        ],
    }


def test_days_are_whole_and_inclusive(workspace: Workspace, time_machine: Any) -> None:
    time_machine.move_to(NOW, tick=False)
    _ended(workspace, "succeeded", DAY1 + timedelta(seconds=5), 10, "1")  # created at 00:00:00
    _ended(workspace, "succeeded", DAY1 + timedelta(days=1), 10, "2")  # created 23:59:55 day 1
    _ended(workspace, "succeeded", DAY1 + timedelta(days=1, seconds=5), 10, "4")  # 00:00 day 2

    one_day = run_usage(workspace=workspace, start=date(2026, 1, 5), end=date(2026, 1, 5))
    assert (one_day.runs, one_day.cost_usd) == (2, Decimal("3"))
    assert [(d.day, d.runs) for d in one_day.by_day] == [(date(2026, 1, 5), 2)]


def test_usage_takes_three_queries_whatever_the_number_of_runs(
    history: None, workspace: Workspace, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(3):
        run_usage(workspace=workspace, start=date(2025, 1, 8), end=date(2026, 1, 7))


def test_by_default_usage_covers_the_last_30_days(
    history: None, api: Any, owner: Any, workspace: Workspace
) -> None:
    body = client_as(api, owner).get(_url(workspace)).json()
    assert (body["from"], body["to"]) == ("2025-12-09", "2026-01-07")
    assert len(body["by_day"]) == 30
    assert body["runs"] == 6  # the run of the day before the three days counts here


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-01-07", "to": "2026-01-05"}, "from"),
        ({"from": "2025-01-01", "to": "2026-01-05"}, "from"),  # 370 days
        ({"from": "2026-01-05\x00"}, "from"),
    ],
)
def test_bad_dates_are_a_400_naming_the_field(
    query: dict[str, str], field: str, api: Any, owner: Any, workspace: Workspace
) -> None:
    response = client_as(api, owner).get(_url(workspace), query)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert field in response.json()["errors"]


def test_a_year_is_allowed(api: Any, owner: Any, workspace: Workspace) -> None:
    query = {"from": "2025-01-06", "to": "2026-01-06"}  # 366 days
    response = client_as(api, owner).get(_url(workspace), query)
    assert response.status_code == 200
    assert len(response.json()["by_day"]) == 366


@pytest.fixture
def caller(
    request: Any, api: Any, workspace: Workspace, owner: Any, admin_user: Any, member: Any,
    outsider: Any,
) -> Any:  # fmt: skip
    name = request.param
    people = {"owner": owner, "admin": admin_user, "member": member, "outsider": outsider}
    if name in people:
        return client_as(api, people[name])
    if name == "anonymous":
        return client_as(api, None)
    if name == "foreign_key":
        elsewhere = make_workspace(owner=outsider, name="Elsewhere")
        return client_as(api, make_api_key(workspace=elsewhere, role="admin")[1])
    key, secret = make_api_key(workspace=workspace, role=name.removesuffix("_key"))
    if name == "revoked_key":
        workspace_services.api_key_revoke(api_key=key, actor=Actor(user=owner))
    return client_as(api, secret)


@pytest.mark.parametrize(
    ("caller", "status"),
    [
        ("owner", 200), ("admin", 200), ("member", 403), ("outsider", 404),
        ("anonymous", 401), ("admin_key", 200), ("member_key", 403), ("foreign_key", 404),
    ],
    indirect=["caller"],
)  # fmt: skip
def test_only_admins_and_owners_see_usage(caller: Any, status: int, workspace: Workspace) -> None:
    response = caller.get(_url(workspace))
    assert response.status_code == status, response.json()
    if status == 200:
        assert set(response.json()) >= {"runs", "sandbox_seconds", "cost_usd", "by_status"}

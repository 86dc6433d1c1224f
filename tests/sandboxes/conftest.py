"""Fixtures of the sandboxes app's tests: the in-memory backend (`fake_backend`), a frozen
clock, and a few days of runs for the usage figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from sandboxes.models import SandboxRun
from tests.factories import make_run, make_workspace
from tests.sandboxes.fake_backend import fake_backend_fixture
from workspaces.models import Workspace

__all__ = ["T0", "clock", "fake_backend_fixture", "usage_history"]

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock(time_machine: Any) -> Any:
    """clock(s): time stands still at T0 + s seconds."""

    def at(seconds: float) -> None:
        time_machine.move_to(T0 + timedelta(seconds=seconds), tick=False)

    at(0)
    return at


# --- usage ---------------------------------------------------------------------------------

DAY1 = datetime(2026, 1, 5, tzinfo=UTC)
NOW = DAY1 + timedelta(days=2, hours=12, minutes=5)  # day 3, 12:05


def ended_run(
    workspace: Workspace, status: str, start: datetime, seconds: int, cost: str
) -> SandboxRun:
    """A run that started (was created 5 s before `start`), ran `seconds` and cost `cost`."""
    return make_run(
        workspace=workspace, status=status, created_at=start - timedelta(seconds=5),
        running_at=start, finished_at=start + timedelta(seconds=seconds),
        cost_usd=Decimal(cost),
    )  # fmt: skip


@pytest.fixture
def usage_history(workspace: Workspace, outsider: Any, time_machine: Any) -> None:
    """Three days of runs in the workspace (2026-01-05 to 07, now 12:05 on the third), and
    some that must not count."""
    time_machine.move_to(NOW, tick=False)
    ended_run(workspace, "succeeded", DAY1 + timedelta(hours=9), 600, "0.5")
    ended_run(workspace, "failed", DAY1 + timedelta(hours=10), 100, "0.25")
    ended_run(workspace, "canceled", DAY1 + timedelta(days=1, hours=8), 200, "0.125")
    make_run(workspace=workspace, created_at=DAY1 + timedelta(days=1, hours=9))  # booting
    make_run(  # running since 12:00 on day 3: 300 s so far, no cost yet
        workspace=workspace, status="running", created_at=NOW - timedelta(minutes=6),
        running_at=NOW - timedelta(minutes=5),
    )  # fmt: skip
    # Not counted: the day before, and another workspace.
    ended_run(workspace, "succeeded", DAY1 - timedelta(seconds=10), 100, "9")
    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    ended_run(elsewhere, "succeeded", DAY1 + timedelta(hours=9), 100, "9")

"""Cost (SPEC §6): seconds running × (vCPUs × price per vCPU-second + GiB × price per
GiB-second), in Decimal, set when a run ends; and where the admin shows it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from sandboxes import services
from sandboxes.backends import BackendError
from sandboxes.models import SandboxRun, compute_cost
from sandboxes.sweep import sandboxes_sweep
from tests.factories import UserFactory, make_run
from tests.sandboxes.fake_backend import FakeBackend, fake_backend_fixture, start_run  # noqa: F401
from workspaces.access import Actor
from workspaces.models import Workspace

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def test_the_default_prices_are_e2bs_per_second_prices(settings: Any) -> None:
    assert Decimal("0.000014") == settings.SANDBOX_PRICE_VCPU_S
    assert Decimal("0.0000045") == settings.SANDBOX_PRICE_GIB_S
    # 100 s of 2 vCPUs and 512 MiB: 100 × (2 × 0.000014 + 0.5 × 0.0000045)
    assert compute_cost(seconds=100, cpu_count=2, memory_mb=512) == Decimal("0.003025")


def test_cost_follows_the_configured_prices(settings: Any) -> None:
    settings.SANDBOX_PRICE_VCPU_S = Decimal("0.01")
    settings.SANDBOX_PRICE_GIB_S = Decimal("0.001")
    # 10.5 s × (4 × 0.01 + 2 × 0.001) = 10.5 × 0.042
    assert compute_cost(seconds=10.5, cpu_count=4, memory_mb=2048) == Decimal("0.441000")


def test_cost_is_decimal_arithmetic_without_float_error(settings: Any) -> None:
    settings.SANDBOX_PRICE_VCPU_S = Decimal("0.01")
    settings.SANDBOX_PRICE_GIB_S = Decimal("0")
    cost = compute_cost(seconds=0.1 + 0.2, cpu_count=1, memory_mb=None)  # 0.30000000000000004
    assert isinstance(cost, Decimal)
    assert cost == Decimal("0.003000")
    assert str(cost) == "0.003000"  # six places, the column's precision


def test_cost_is_rounded_to_a_millionth_of_a_dollar() -> None:
    # 1 s of 1 vCPU and no memory is 0.000014; a third of a second is 0.00000466… → 0.000005
    assert compute_cost(seconds=1 / 3, cpu_count=1, memory_mb=0) == Decimal("0.000005")


@pytest.mark.parametrize(
    ("seconds", "cpu_count", "memory_mb"),
    [(0, 2, 512), (-5, 2, 512), (100, None, 512), (100, 0, 512)],
)
def test_no_time_or_no_cpu_costs_nothing(
    seconds: float, cpu_count: int | None, memory_mb: int
) -> None:
    assert compute_cost(seconds=seconds, cpu_count=cpu_count, memory_mb=memory_mb) == 0


@pytest.mark.django_db
def test_a_run_records_its_size_at_boot_and_its_cost_when_the_sweep_ends_it(
    time_machine: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    time_machine.move_to(T0, tick=False)
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    assert (run.cpu_count, run.memory_mb, run.cost_usd) == (2, 512, None)

    time_machine.move_to(T0 + timedelta(seconds=61), tick=False)
    sandboxes_sweep()
    run.refresh_from_db()

    assert run.sandbox_seconds == 61
    # 61 × 0.00003025 = 0.00184525, kept to six places
    assert run.cost_usd == Decimal("0.001845")


@pytest.mark.django_db
def test_a_run_ended_by_its_user_is_charged_from_running_to_the_end(
    time_machine: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    time_machine.move_to(T0, tick=False)
    run = start_run(workspace=workspace)
    time_machine.move_to(T0 + timedelta(hours=1), tick=False)
    run = services.run_complete(run=run, actor=Actor(user=workspace.owner), status="succeeded")
    assert run.cost_usd == Decimal("0.108900")  # 3600 × 0.00003025
    run.refresh_from_db()
    assert run.cost_usd == Decimal("0.108900")


@pytest.mark.django_db
def test_a_run_that_never_got_a_sandbox_costs_nothing(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(workspace=workspace)  # booting
    services.run_fail_boot(run_id=str(run.pk), error=BackendError("no such template"))
    run.refresh_from_db()
    assert (run.status, run.cost_usd) == ("failed", Decimal("0"))


@pytest.mark.django_db
def test_the_admin_shows_each_runs_cost_and_each_workspaces_usage(
    client: Any, workspace: Workspace, time_machine: Any
) -> None:
    time_machine.move_to(T0, tick=False)
    ended = make_run(
        workspace=workspace, status="succeeded", running_at=T0 - timedelta(hours=2),
        finished_at=T0 - timedelta(minutes=30), cost_usd=Decimal("1.234567"),
    )  # fmt: skip
    make_run(workspace=workspace, status="running", running_at=T0 - timedelta(minutes=30))
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))

    runs_page = client.get("/admin/sandboxes/sandboxrun/").content.decode()
    assert "1.234567" in runs_page
    run_page = client.get(f"/admin/sandboxes/sandboxrun/{ended.pk}/change/").content.decode()
    assert "1.234567" in run_page

    page = client.get(f"/admin/workspaces/workspace/{workspace.pk}/change/").content.decode()
    # 1 h 30 min ended + 30 min still running = 2 sandbox-hours; cost of the ended run only.
    assert "1 active now · last 30 days: 2 runs, 2.00 sandbox-hours, $1.234567" in page


@pytest.mark.django_db
def test_cost_survives_the_database_exactly(workspace: Workspace) -> None:
    run = make_run(workspace=workspace, status="succeeded", cost_usd=Decimal("12345678.123456"))
    stored = SandboxRun.objects.get(pk=run.pk).cost_usd
    assert stored == Decimal("12345678.123456") and isinstance(stored, Decimal)

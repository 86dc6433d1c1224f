"""The sweep (sandboxes/sweep.py): idle runs, max duration and boot timeouts, with frozen time
and the in-memory backend; overlapping sweeps on PostgreSQL; the task, beat entry and command."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from config.celery import app
from sandboxes import services, sweep
from sandboxes.backends import SandboxNotFound, TransientBackendError, app_tags, override_backend
from sandboxes.models import SandboxRun
from sandboxes.sweep import SweepReport, sandboxes_sweep
from sandboxes.tasks import sweep_sandboxes
from tests.conftest import require_service
from tests.factories import UserFactory, make_workspace, transitions
from tests.sandboxes.fake_backend import FakeBackend, fake_backend_fixture, start_run  # noqa: F401
from workspaces.access import Actor
from workspaces.models import Workspace

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock(time_machine: Any) -> Any:
    """clock(s): time stands still at T0 + s seconds."""

    def at(seconds: float) -> None:
        time_machine.move_to(T0 + timedelta(seconds=seconds), tick=False)

    at(0)
    return at


def _state(run: SandboxRun) -> tuple[str, str]:
    run.refresh_from_db()
    return run.status, run.end_reason


def _actors(run: SandboxRun) -> list[tuple[str, str]]:
    return [(row.actor, row.data["to"]) for row in transitions(run.pk)]


pytestmark = pytest.mark.django_db


# --- idle ------------------------------------------------------------------------------


def test_an_idle_run_is_killed_and_canceled_by_the_sweep(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(61)

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 1, "failed": 0, "errors": 0}
    assert _state(run) == ("canceled", "idle_timeout")
    assert fake_backend.kills == [run.sandbox_id]
    assert run.sandbox_id not in fake_backend.live_ids()
    assert _actors(run)[-1] == ("system:sweep", "canceled")
    assert run.finished_at == T0 + timedelta(seconds=61)


def test_a_run_idle_for_exactly_its_timeout_is_not_yet_idle(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(60)
    assert sandboxes_sweep().as_dict() == {"killed": 0, "failed": 0, "errors": 0}
    assert _state(run) == ("running", "")

    clock(60.001)
    assert sandboxes_sweep().killed == 1
    assert _state(run) == ("canceled", "idle_timeout")


def test_activity_moves_the_idle_deadline(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(50)
    services.run_touch(run=run)

    clock(100)  # 100 s since boot, but only 50 s since the last call
    assert sandboxes_sweep().killed == 0
    clock(111)
    assert sandboxes_sweep().killed == 1
    assert _state(run) == ("canceled", "idle_timeout")


def test_per_run_timeouts_override_the_defaults(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_MS = 120_000
    actor = Actor(user=workspace.owner)

    def create(idle_timeout_ms: int | None = None) -> SandboxRun:
        run, _ = services.run_create(
            workspace=workspace, actor=actor, thread_id="t", prompt="p",
            idle_timeout_ms=idle_timeout_ms,
        )  # fmt: skip
        services.run_boot(run_id=str(run.pk))
        return run

    default, short, long = create(), create(idle_timeout_ms=30_000), create(idle_timeout_ms=300_000)

    clock(31)
    sandboxes_sweep()
    assert [_state(r)[0] for r in (default, short, long)] == ["running", "canceled", "running"]
    clock(121)
    sandboxes_sweep()
    assert [_state(r)[0] for r in (default, short, long)] == ["canceled", "canceled", "running"]
    clock(301)
    sandboxes_sweep()
    assert [_state(r)[0] for r in (default, short, long)] == ["canceled"] * 3


def test_a_run_whose_command_is_running_is_never_idle(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, max_duration_ms=600_000)
    # What the command job's claim writes before it runs the command.
    SandboxRun.objects.filter(pk=run.pk).update(command_started_at=T0)
    clock(300)
    assert sandboxes_sweep().killed == 0
    assert _state(run) == ("running", "")
    clock(601)  # the job should have ended it by now: the sweep is the backstop
    assert sandboxes_sweep().killed == 1
    assert _state(run) == ("failed", "max_duration")


def test_a_stale_expiry_is_checked_and_corrected_not_trusted(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    # A writer that records activity without moving expires_at along.
    SandboxRun.objects.filter(pk=run.pk).update(last_activity_at=T0 + timedelta(seconds=50))
    clock(61)
    assert sandboxes_sweep().killed == 0
    assert _state(run) == ("running", "")
    assert run.expires_at == T0 + timedelta(seconds=110)
    assert fake_backend.kills == []


# --- max duration and boot timeout -------------------------------------------------------


def test_a_run_past_its_max_duration_is_killed_and_failed_however_active(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, max_duration_ms=120_000)
    for second in (40, 80, 119):
        clock(second)
        services.run_touch(run=run)
        assert sandboxes_sweep().killed == 0
    clock(120)
    assert sandboxes_sweep().killed == 0  # exactly at the limit is not past it
    clock(120.001)

    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "errors": 0}
    assert _state(run) == ("failed", "max_duration")
    assert run.error is not None and run.error["code"] == "max_duration"
    assert fake_backend.kills == [run.sandbox_id]
    assert _actors(run)[-1] == ("system:sweep", "failed")


def test_a_run_stuck_booting_fails_and_the_sandbox_made_for_it_is_killed(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_BOOT_TIMEOUT_S = 300
    run = SandboxRun.objects.create(
        workspace=workspace, created_by=workspace.owner, thread_id="t", prompt="p",
        max_duration_ms=3_600_000, idle_timeout_ms=900_000,
    )  # fmt: skip
    # What a boot that crashed between creating the sandbox and saving its id leaves behind.
    made = fake_backend.add({**app_tags(), "run_id": str(run.pk), "workspace_id": "w"})
    other = fake_backend.add({**app_tags(), "run_id": "another-run", "workspace_id": "w"})

    clock(300)
    assert sandboxes_sweep().failed == 0
    clock(301)
    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 0, "failed": 1, "errors": 0}
    assert _state(run) == ("failed", "boot_timeout")
    assert run.error is not None and run.error["code"] == "boot_timeout"
    assert fake_backend.live_ids() == {other.sandbox_id}
    assert fake_backend.kills == [made.sandbox_id]
    assert _actors(run)[-1] == ("system:sweep", "failed")


def test_a_boot_that_finishes_after_the_timeout_kills_what_it_made(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_BOOT_TIMEOUT_S = 300
    run = SandboxRun.objects.create(
        workspace=workspace, created_by=workspace.owner, thread_id="t", prompt="p",
        max_duration_ms=3_600_000, idle_timeout_ms=900_000,
    )  # fmt: skip
    clock(301)
    sandboxes_sweep()
    services.run_boot(run_id=str(run.pk))  # a slow start task, delivered late
    assert _state(run) == ("failed", "boot_timeout")
    assert fake_backend.live_ids() == set()


# --- failures ------------------------------------------------------------------------------


def test_a_kill_that_fails_leaves_the_run_for_the_next_sweep(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    failing = start_run(workspace=workspace, idle_timeout_ms=60_000)
    healthy = start_run(workspace=workspace, idle_timeout_ms=60_000)
    fake_backend.fail_next_kill(failing.sandbox_id, TransientBackendError("E2B is busy (503)"))
    clock(61)

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 1, "failed": 0, "errors": 1}
    assert _state(failing) == ("running", "")
    assert failing.sweep_claimed_at is None  # released: nobody holds it
    assert _state(healthy) == ("canceled", "idle_timeout")
    assert [a.outcome for a in report.actions if a.run_id == str(failing.pk)] == ["error"]

    clock(91)
    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "errors": 0}
    assert _state(failing) == ("canceled", "idle_timeout")
    assert fake_backend.kills.count(failing.sandbox_id) == 2


@pytest.mark.parametrize("gone_as", ["false", "not_found"])
def test_a_sandbox_that_is_already_gone_counts_as_killed(
    gone_as: str, clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    fake_backend.kill(run.sandbox_id)  # gone already (its provider deadline, say)
    if gone_as == "not_found":
        fake_backend.fail_next_kill(run.sandbox_id, SandboxNotFound("gone"))
    clock(61)
    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "errors": 0}
    assert _state(run) == ("canceled", "idle_timeout")


def test_a_run_canceled_while_the_sweep_kills_its_sandbox_stays_canceled_by_the_user(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend, monkeypatch: Any
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    claim = sweep._claim_due_runs

    def claim_then_the_user_cancels(now: datetime) -> Any:
        claimed = claim(now)
        services.run_cancel(run=run, actor=Actor(user=workspace.owner))
        return claimed

    monkeypatch.setattr(sweep, "_claim_due_runs", claim_then_the_user_cancels)
    clock(61)
    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 0, "failed": 0, "errors": 0}
    assert [a.outcome for a in report.actions] == ["skipped"]
    assert _state(run) == ("canceled", "canceled_by_user")


# --- concurrency ---------------------------------------------------------------------------


def test_kills_run_concurrently_up_to_the_configured_bound(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_SWEEP_CONCURRENCY = 4
    fake_backend.kill_latency_s = 0.2
    runs = [start_run(workspace=workspace, idle_timeout_ms=60_000) for _ in range(8)]
    clock(61)

    started = time.monotonic()
    report = sandboxes_sweep()
    elapsed = time.monotonic() - started

    assert report.killed == 8
    assert fake_backend.max_kills_in_flight == 4
    assert elapsed < 8 * 0.2 / 2  # one at a time would take 1.6 s; four at a time about 0.4 s
    assert {_state(r) for r in runs} == {("canceled", "idle_timeout")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_handle_each_run_exactly_once(
    settings: Any, time_machine: Any, monkeypatch: Any
) -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    backend = FakeBackend(kill_latency_s=0.02)
    with override_backend(backend):
        _two_sweeps_at_once(backend, settings, time_machine, monkeypatch)


def _two_sweeps_at_once(
    backend: FakeBackend, settings: Any, time_machine: Any, monkeypatch: Any
) -> None:
    settings.SANDBOX_SWEEP_CONCURRENCY = 4
    monkeypatch.setattr(sweep, "BATCH_SIZE", 5)  # many small claims, so the sweeps interleave
    time_machine.move_to(T0, tick=False)
    workspace = make_workspace(owner=UserFactory())
    runs = [start_run(workspace=workspace, idle_timeout_ms=60_000) for _ in range(60)]
    time_machine.move_to(T0 + timedelta(seconds=61), tick=False)

    barrier = threading.Barrier(2)
    reports: list[SweepReport] = []

    def one_sweep() -> None:
        try:
            barrier.wait()
            reports.append(sandboxes_sweep())
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=one_sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.killed for r in reports) == 60
    assert sum(r.errors for r in reports) == 0
    assert sorted(backend.kills) == sorted(r.sandbox_id for r in runs)  # each killed once
    ended = transitions(*[r.pk for r in runs]).filter(actor="system:sweep")
    assert ended.count() == 60
    assert all(r.killed > 0 for r in reports), "both sweeps took part"


# --- dry run, local sandboxes, task, beat, command ------------------------------------------


def test_a_dry_run_says_what_it_would_do_and_does_nothing(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    idle = start_run(workspace=workspace, idle_timeout_ms=60_000)
    booting = SandboxRun.objects.create(
        workspace=workspace, created_by=workspace.owner, thread_id="t", prompt="p",
        max_duration_ms=3_600_000, idle_timeout_ms=900_000,
    )  # fmt: skip
    clock(settings.SANDBOX_BOOT_TIMEOUT_S + 1)

    report = sandboxes_sweep(dry_run=True)

    assert sorted((a.outcome, a.reason, a.run_id) for a in report.actions) == sorted(
        [
            ("would cancel and kill", "idle_timeout", str(idle.pk)),
            ("would fail", "boot_timeout", str(booting.pk)),
        ]
    )
    assert report.as_dict() == {"killed": 0, "failed": 0, "errors": 0}
    assert _state(idle) == ("running", "") and _state(booting) == ("booting", "")
    assert fake_backend.kills == []


@pytest.mark.bwrap
def test_the_sweep_removes_local_sandboxes_past_their_own_timeout(
    local_sandboxes: Any, time_machine: Any
) -> None:
    time_machine.move_to(T0, tick=False)
    expiring = local_sandboxes.create(template="t", metadata=app_tags(), envs={}, timeout_s=60)
    lasting = local_sandboxes.create(template="t", metadata=app_tags(), envs={}, timeout_s=600)
    time_machine.move_to(T0 + timedelta(seconds=61), tick=False)

    assert sandboxes_sweep().reaped == 1
    assert not (local_sandboxes.root / expiring.sandbox_id).exists()
    assert (local_sandboxes.root / lasting.sandbox_id).exists()


def test_the_task_returns_the_counts(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(61)
    assert sweep_sandboxes() == {"killed": 1, "failed": 0, "errors": 0}


def test_beat_runs_the_sweep_and_reconcile_at_their_intervals(settings: Any) -> None:
    schedule = {entry["task"]: entry for entry in app.conf.beat_schedule.values()}
    sweeping = schedule["sandboxes.tasks.sweep_sandboxes"]
    reconcile = schedule["sandboxes.tasks.reconcile_sandboxes"]
    assert sweeping["schedule"] == settings.SANDBOX_SWEEP_INTERVAL_S == 30
    assert reconcile["schedule"] == settings.SANDBOX_RECONCILE_INTERVAL_S == 300
    assert set(schedule) <= set(app.tasks), "every scheduled task is registered"


def _call(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("sweep_sandboxes", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_command_is_a_dry_run_unless_told_otherwise(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(61)

    out, _ = _call()
    assert f"would cancel and kill idle_timeout run={run.pk}" in out
    assert "--for-real" in out
    assert _state(run) == ("running", "")

    out, _ = _call("--for-real")
    assert f"killed idle_timeout run={run.pk} sandbox={run.sandbox_id}" in out
    assert "killed 1, failed 0, errors 0" in out
    assert _state(run) == ("canceled", "idle_timeout")


def test_the_command_fails_when_a_kill_failed(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    fake_backend.fail_next_kill(run.sandbox_id, TransientBackendError("E2B is busy"))
    clock(61)
    with pytest.raises(CommandError, match="1 errors"):
        _call("--for-real")


# --- the provider's own deadline (E2B, through the SDK against the test double) ---------------


def _provider_end(e2b_server: Any, run: SandboxRun) -> datetime:
    end_at: datetime = e2b_server.state.sandboxes[run.sandbox_id].end_at
    return end_at


def _timeout_pushes(e2b_server: Any, run: SandboxRun) -> list[int]:
    requests = e2b_server.state.requests_for("POST", rf"/sandboxes/{run.sandbox_id}/timeout")
    return [request.body["timeout"] for request in requests]


def test_the_e2b_deadline_follows_activity_and_never_passes_the_max_duration(
    e2b_sandboxes: Any, e2b_server: Any, clock: Any, settings: Any, workspace: Workspace
) -> None:
    settings.SANDBOX_KEEPALIVE_MIN_S = 30
    run, _ = services.run_create(
        workspace=workspace, actor=Actor(user=workspace.owner), thread_id="t", prompt="p",
        idle_timeout_ms=60_000, max_duration_ms=300_000,
    )  # fmt: skip
    services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    # Created with the idle timeout plus the push throttle, well inside the max duration.
    assert _provider_end(e2b_server, run) == T0 + timedelta(seconds=90)

    for second in (10, 20, 45, 50, 80, 130, 170, 210, 250, 265, 280, 299):
        clock(second)
        run.refresh_from_db()  # as each API request loads the run afresh
        services.run_touch(run=run)
        end = _provider_end(e2b_server, run)
        idle_end = run.last_activity_at + timedelta(milliseconds=run.idle_timeout_ms)
        # The sandbox outlives the run's idle deadline while it is used (so the sweep, not
        # the provider, ends an idle run) and never outlives the run's max duration.
        assert min(idle_end, run.deadline) <= end <= run.deadline, second

    # Pushed at most once per throttle interval: not at 20, 50, 265 and 299.
    assert _timeout_pushes(e2b_server, run) == [90, 90, 90, 90, 90, 90, 50, 20]
    assert _provider_end(e2b_server, run) == run.deadline

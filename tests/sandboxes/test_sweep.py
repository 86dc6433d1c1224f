"""The sweep (sandboxes/sweep.py): idle runs, max duration and boot timeouts, with frozen time
and the in-memory backend; failures and races; overlapping sweeps on PostgreSQL; the dry run;
local sandboxes past their own timeout. Its task is in test_tasks, its command in test_commands,
its beat entry in tests/config/test_celery."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from sandboxes import services, sweep
from sandboxes.backends import SandboxNotFound, TransientBackendError, app_tags, override_backend
from sandboxes.models import Command, SandboxRun
from sandboxes.sweep import SweepReport, sandboxes_sweep
from tests.conftest import require_service
from tests.factories import create_run, make_run, make_user, make_workspace, run_state, transitions
from tests.sandboxes.conftest import T0
from tests.sandboxes.fake_backend import FakeBackend, start_run
from tests.sandboxes.faults import FaultyBackend
from workspaces.access import Actor
from workspaces.models import Workspace


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

    assert report.as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("canceled", "idle_timeout")
    assert fake_backend.kills == [run.sandbox_id]
    assert run.sandbox_id not in fake_backend.live_ids()
    assert _actors(run)[-1] == ("system:sweep", "canceled")
    assert run.finished_at == T0 + timedelta(seconds=61)


def test_a_run_idle_for_exactly_its_timeout_is_not_yet_idle(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(60)
    assert sandboxes_sweep().as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("running", "")

    clock(60.001)
    assert sandboxes_sweep().killed == 1
    assert run_state(run) == ("canceled", "idle_timeout")


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
    assert run_state(run) == ("canceled", "idle_timeout")


def test_per_run_timeouts_override_the_defaults(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_MS = 120_000

    def create(idle_timeout_ms: int | None = None) -> SandboxRun:
        run = create_run(workspace=workspace, idle_timeout_ms=idle_timeout_ms)
        services.run_boot(run_id=str(run.pk))
        return run

    default, short, long = create(), create(idle_timeout_ms=30_000), create(idle_timeout_ms=300_000)

    clock(31)
    sandboxes_sweep()
    assert [run_state(r)[0] for r in (default, short, long)] == ["running", "canceled", "running"]
    clock(121)
    sandboxes_sweep()
    assert [run_state(r)[0] for r in (default, short, long)] == ["canceled", "canceled", "running"]
    clock(301)
    sandboxes_sweep()
    assert [run_state(r)[0] for r in (default, short, long)] == ["canceled"] * 3


def test_a_run_whose_command_is_running_is_never_idle(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, max_duration_ms=600_000)
    # What the command job's claim writes before it runs the command.
    SandboxRun.objects.filter(pk=run.pk).update(command_started_at=T0)
    clock(300)
    assert sandboxes_sweep().killed == 0
    assert run_state(run) == ("running", "")
    clock(601)  # the job should have ended it by now: the sweep is the backstop
    assert sandboxes_sweep().killed == 1
    assert run_state(run) == ("failed", "max_duration")


def test_a_stale_expiry_is_checked_and_corrected_not_trusted(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    # A writer that records activity without moving expires_at along.
    SandboxRun.objects.filter(pk=run.pk).update(last_activity_at=T0 + timedelta(seconds=50))
    clock(61)
    assert sandboxes_sweep().killed == 0
    assert run_state(run) == ("running", "")
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

    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("failed", "max_duration")
    assert run.error is not None and run.error["code"] == "max_duration"
    assert fake_backend.kills == [run.sandbox_id]
    assert _actors(run)[-1] == ("system:sweep", "failed")


def test_a_run_stuck_booting_fails_and_the_sandbox_made_for_it_is_killed(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_BOOT_TIMEOUT_S = 300
    run = make_run(workspace=workspace)  # booting
    # What a boot that crashed between creating the sandbox and saving its id leaves behind.
    made = fake_backend.add({**app_tags(), "run_id": str(run.pk), "workspace_id": "w"})
    other = fake_backend.add({**app_tags(), "run_id": "another-run", "workspace_id": "w"})

    clock(300)
    assert sandboxes_sweep().failed == 0
    clock(301)
    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 0, "failed": 1, "paused": 0, "errors": 0}
    assert run_state(run) == ("failed", "boot_timeout")
    assert run.error is not None and run.error["code"] == "boot_timeout"
    assert fake_backend.live_ids() == {other.sandbox_id}
    assert fake_backend.kills == [made.sandbox_id]
    assert _actors(run)[-1] == ("system:sweep", "failed")


def test_a_boot_that_finishes_after_the_timeout_kills_what_it_made(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    settings.SANDBOX_BOOT_TIMEOUT_S = 300
    run = make_run(workspace=workspace)  # booting
    clock(301)
    sandboxes_sweep()
    services.run_boot(run_id=str(run.pk))  # a slow start task, delivered late
    assert run_state(run) == ("failed", "boot_timeout")
    assert fake_backend.live_ids() == set()


def test_a_run_records_its_size_at_boot_and_its_cost_when_the_sweep_ends_it(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    assert (run.cpu_count, run.memory_mb, run.cost_usd) == (2, 512, None)

    clock(61)
    sandboxes_sweep()
    run.refresh_from_db()

    assert run.sandbox_seconds == 61
    # 61 × 0.00003025 = 0.00184525, kept to six places
    assert run.cost_usd == Decimal("0.001845")


# --- failures ------------------------------------------------------------------------------


def test_a_kill_that_fails_leaves_the_run_for_the_next_sweep(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    failing = start_run(workspace=workspace, idle_timeout_ms=60_000)
    healthy = start_run(workspace=workspace, idle_timeout_ms=60_000)
    fake_backend.fail_next_kill(failing.sandbox_id, TransientBackendError("E2B is busy (503)"))
    clock(61)

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 1}
    assert run_state(failing) == ("running", "")
    assert failing.sweep_claimed_at is None  # released: nobody holds it
    assert run_state(healthy) == ("canceled", "idle_timeout")
    assert [a.outcome for a in report.actions if a.run_id == str(failing.pk)] == ["error"]

    clock(91)
    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(failing) == ("canceled", "idle_timeout")
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
    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("canceled", "idle_timeout")


@pytest.mark.django_db(transaction=True)
def test_a_run_canceled_while_the_sweep_kills_its_sandbox_stays_canceled_by_the_user(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)

    def the_user_cancels(killed: bool) -> None:
        # A request of the user's, on its own connection, while the sweep's kill returns.
        try:
            services.run_cancel(
                run=SandboxRun.objects.get(pk=run.pk), actor=Actor(user=workspace.owner)
            )
        finally:
            connection.close()

    faulty = FaultyBackend(fake_backend)
    faulty.after("kill", the_user_cancels)
    clock(61)
    with override_backend(faulty):
        report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 0}
    assert [a.outcome for a in report.actions] == ["skipped"]
    assert run_state(run) == ("canceled", "canceled_by_user")


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
    assert {run_state(r) for r in runs} == {("canceled", "idle_timeout")}


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
    workspace = make_workspace(owner=make_user())
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


# --- dry run, local sandboxes ------------------------------------------------------------


def test_a_dry_run_says_what_it_would_do_and_does_nothing(
    clock: Any, settings: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    idle = start_run(workspace=workspace, idle_timeout_ms=60_000)
    booting = make_run(workspace=workspace)
    clock(settings.SANDBOX_BOOT_TIMEOUT_S + 1)

    report = sandboxes_sweep(dry_run=True)

    assert sorted((a.outcome, a.reason, a.run_id) for a in report.actions) == sorted(
        [
            ("would cancel and kill", "idle_timeout", str(idle.pk)),
            ("would fail", "boot_timeout", str(booting.pk)),
        ]
    )
    assert report.as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(idle) == ("running", "") and run_state(booting) == ("booting", "")
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


# --- on_idle "pause" (SPEC §15) --------------------------------------------------------------


def test_an_idle_run_that_says_pause_is_paused_not_killed(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, on_idle="pause")
    clock(61)

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 0, "failed": 0, "paused": 1, "errors": 0}
    assert run_state(run) == ("paused", "")
    assert fake_backend.kills == []
    assert run.sandbox_id in fake_backend.paused
    assert _actors(run)[-1] == ("system:sweep", "paused")
    run.refresh_from_db()
    assert (run.paused_at, run.expires_at, run.sweep_claimed_at) == (
        T0 + timedelta(seconds=61), run.deadline, None,
    )  # fmt: skip
    clock(1800)
    assert sandboxes_sweep().as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("paused", "")


def test_a_paused_run_past_its_max_duration_is_killed_and_ends_max_duration(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(
        workspace=workspace, idle_timeout_ms=60_000, max_duration_ms=600_000, on_idle="pause"
    )
    clock(61)
    sandboxes_sweep()
    clock(601)

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("failed", "max_duration")
    assert fake_backend.kills == [run.sandbox_id]
    run.refresh_from_db()
    assert run.sandbox_seconds == 61  # billed until its pause
    assert _actors(run)[-2:] == [("system:sweep", "paused"), ("system:sweep", "failed")]


def test_a_failed_pause_leaves_the_run_running_for_the_next_sweep(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, on_idle="pause")
    fake_backend.fail_next("pause", TransientBackendError("busy"))
    clock(61)

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 1}
    assert run_state(run) == ("running", "")
    assert SandboxRun.objects.get(pk=run.pk).sweep_claimed_at is None
    assert sandboxes_sweep().paused == 1


def test_an_idle_run_whose_sandbox_is_gone_when_paused_ends_as_a_kill_would(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, on_idle="pause")
    fake_backend.kill(run.sandbox_id)
    clock(61)

    report = sandboxes_sweep()

    assert (report.killed, report.paused) == (1, 0)
    assert run_state(run) == ("canceled", "idle_timeout")


@pytest.mark.django_db(transaction=True)  # the pause runs on a pool thread's own connection
def test_a_call_that_came_in_while_the_sweep_paused_keeps_the_run_running(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, on_idle="pause")
    clock(61)
    pause = fake_backend.pause

    def pause_as_a_call_comes_in(sandbox_id: str) -> None:
        pause(sandbox_id)
        SandboxRun.objects.filter(pk=run.pk).update(last_activity_at=T0 + timedelta(seconds=61))

    fake_backend.pause = pause_as_a_call_comes_in  # type: ignore[method-assign]
    report = sandboxes_sweep()

    assert report.paused == 0
    assert [a.detail for a in report.actions] == ["active again"]
    assert run_state(run) == ("running", "")
    assert run.sandbox_id not in fake_backend.paused  # resumed at once


def test_a_dry_run_says_it_would_pause(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, on_idle="pause")
    clock(61)
    report = sandboxes_sweep(dry_run=True)
    assert [str(a) for a in report.actions] == [
        f"would pause idle_timeout run={run.pk} sandbox={run.sandbox_id}"
    ]
    assert run_state(run) == ("running", "")


def test_on_e2b_a_paused_run_past_its_max_duration_ends_max_duration(
    workspace: Workspace, e2b_sandboxes: Any, e2b_server: Any, time_machine: Any
) -> None:
    from tests.sandboxes.backends.test_e2b import fake

    run = start_run(
        workspace=workspace, idle_timeout_ms=60_000, max_duration_ms=600_000, on_idle="pause"
    )
    start = run.created_at
    time_machine.move_to(start + timedelta(seconds=61), tick=False)
    assert sandboxes_sweep().paused == 1
    assert fake(e2b_server, run.sandbox_id).state == "paused"
    time_machine.move_to(start + timedelta(seconds=601), tick=False)

    report = sandboxes_sweep()

    assert (report.killed, report.errors) == (1, 0)
    assert run_state(run) == ("failed", "max_duration")
    assert e2b_server.state.requests_for("DELETE", rf"/sandboxes/{run.sandbox_id}")
    assert run.sandbox_id not in {s.sandbox_id for s in e2b_server.state.live_sandboxes()}


# --- command jobs whose worker died ------------------------------------------------------------


def _job(run: SandboxRun, lease_expires_at: Any) -> Command:
    SandboxRun.objects.filter(pk=run.pk).update(command_started_at=timezone.now())
    return Command.objects.create(
        run=run, workspace_id=run.workspace_id, kind="job", command=run.command,
        cwd="/home/user", actor="system:execute_run_command", lease_expires_at=lease_expires_at,
    )  # fmt: skip


def test_a_job_whose_lease_lapsed_is_failed_worker_lost_and_its_sandbox_killed(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, command="sleep 600")
    job = _job(run, timezone.now() - timedelta(seconds=1))

    report = sandboxes_sweep()

    assert report.as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("failed", "worker_lost")
    assert fake_backend.kills == [run.sandbox_id]
    job.refresh_from_db()
    assert (job.status, (job.error or {}).get("code")) == ("failed", "worker_lost")
    assert _actors(run)[-1] == ("system:sweep", "failed")
    assert sandboxes_sweep().as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 0}


def test_a_job_whose_lease_holds_is_left_alone(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, command="sleep 600")
    _job(run, timezone.now() + timedelta(seconds=30))

    assert sandboxes_sweep().as_dict() == {"killed": 0, "failed": 0, "paused": 0, "errors": 0}
    assert run_state(run) == ("running", "")
    assert fake_backend.kills == []


def test_a_dry_run_names_a_lost_job_and_ends_nothing(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, command="sleep 600")
    _job(run, timezone.now() - timedelta(seconds=1))

    report = sandboxes_sweep(dry_run=True)

    assert [(a.outcome, a.reason, a.run_id) for a in report.actions] == [
        ("would fail and kill", "worker_lost", str(run.pk))
    ]
    assert run_state(run) == ("running", "")

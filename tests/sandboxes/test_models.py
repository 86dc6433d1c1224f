"""sandboxes/models.py: the SandboxRun state machine (every allowed and forbidden transition, the
trail it leaves, and that two concurrent transitions cannot both win), the deadlines and cost a
run derives from its fields, and the command history's rows."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from sandboxes import services
from sandboxes.models import (
    Command,
    CommandKind,
    CommandStatus,
    EndReason,
    RunStatus,
    SandboxRun,
    compute_cost,
)
from tests.conftest import require_service
from tests.factories import make_run, transitions
from workspaces.access import Actor
from workspaces.models import Subject

ALL = [s.value for s in RunStatus]
ALLOWED = {
    ("booting", "mark_running"): "running",
    ("booting", "fail"): "failed",
    ("booting", "cancel"): "canceled",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "cancel"): "canceled",
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("paused", "succeed"): "succeeded",
    ("paused", "fail"): "failed",
    ("paused", "cancel"): "canceled",
}
ARGS: dict[str, dict[str, Any]] = {
    "mark_running": {"sandbox_id": "sbx-new", "cpu_count": 2, "memory_mb": 512},
    "succeed": {"exit_code": 0},
    "fail": {"reason": "command_failed", "error": {"code": "x", "message": "y"}},
    "cancel": {},
    "pause": {},
    "resume": {},
}
CASES = [(status, name) for status in ALL for name in ARGS]
TESTER = Actor.system("test")


@pytest.mark.django_db
@pytest.mark.parametrize(("source", "name"), CASES)
def test_transition_table(source: str, name: str, workspace: Any) -> None:
    run = make_run(workspace=workspace, status=source)
    method = getattr(run, name)
    target = ALLOWED.get((source, name))
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            method(**ARGS[name])
        assert run.status == source
    else:
        with transaction.atomic():
            method(**ARGS[name], by=Actor(user=workspace.owner))
            run.save()
        run.refresh_from_db()
        assert run.status == target


@pytest.mark.django_db
def test_status_cannot_be_assigned_directly(workspace: Any) -> None:
    run = make_run(workspace=workspace)
    with pytest.raises(AttributeError):
        run.status = "running"


@pytest.mark.django_db
def test_every_transition_is_logged_with_its_actor(workspace: Any, member_key: str) -> None:
    from workspaces.selectors import api_key_find

    key = api_key_find(raw_key=member_key)
    assert key is not None
    run = make_run(workspace=workspace)
    services.run_transition(
        run.pk,
        lambda r: r.mark_running(
            sandbox_id="s",
            cpu_count=2,
            memory_mb=512,
            by=Actor.system("start_sandbox_run"),
        ),
    )
    services.run_cancel(run=run, actor=Actor(user=workspace.owner, api_key=key))
    log = [
        (e.data["transition"], e.data["from"], e.data["to"], e.actor, e.actor_user_id)
        for e in transitions(run.pk)
    ]
    assert log == [
        ("mark_running", "booting", "running", "system:start_sandbox_run", None),
        ("cancel", "running", "canceled", f"api_key:{key.prefix}", workspace.owner.pk),
    ]


@pytest.mark.django_db
def test_a_stale_copy_cannot_overwrite_a_newer_transition(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running")
    stale = SandboxRun.objects.get(pk=run.pk)
    with transaction.atomic():
        run.cancel(by=TESTER)
        run.save()

    def lose_the_race() -> None:
        with transaction.atomic():
            stale.succeed(exit_code=0, by=TESTER)
            stale.save()

    with pytest.raises(ConcurrentTransition):
        lose_the_race()
    run.refresh_from_db()
    assert run.status == "canceled"
    # The loser's log row rolled back with its save: only the cancel is recorded.
    assert [e.data["transition"] for e in transitions(run.pk)] == ["cancel"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_transitions_on_postgresql_exactly_one_wins(workspace: Any) -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    run = make_run(workspace=workspace, status="running")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt(change: Any) -> None:
        copy = SandboxRun.objects.get(pk=run.pk)  # both read "running"
        barrier.wait()
        try:
            with transaction.atomic():
                change(copy)
                copy.save()
            outcomes.append(copy.status)
        except ConcurrentTransition:
            outcomes.append("lost")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=attempt, args=(lambda r: r.succeed(exit_code=0, by=TESTER),)),
        threading.Thread(target=attempt, args=(lambda r: r.cancel(by=TESTER),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes).count("lost") == 1
    run.refresh_from_db()
    assert run.status in ("succeeded", "canceled")
    assert run.status in outcomes


def test_cost_is_decimal_seconds_times_resources(settings: Any) -> None:
    settings.SANDBOX_PRICE_VCPU_S = Decimal("0.000014")
    settings.SANDBOX_PRICE_GIB_S = Decimal("0.0000045")
    # 100 s × (2 × 0.000014 + 0.5 GiB × 0.0000045) = 100 × 0.00003025
    assert compute_cost(seconds=100, cpu_count=2, memory_mb=512) == Decimal("0.003025")
    assert compute_cost(seconds=0, cpu_count=2, memory_mb=512) == Decimal("0")


@pytest.mark.django_db
def test_ending_a_run_records_its_cost(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running", cpu_count=2, memory_mb=1024)
    SandboxRun.objects.filter(pk=run.pk).update(running_at=timezone.now() - timedelta(seconds=60))
    run.refresh_from_db()
    with transaction.atomic():
        run.succeed(exit_code=0, by=TESTER)
        run.save()
    assert run.cost_usd is not None
    assert Decimal("0.0019") < run.cost_usd < Decimal("0.0021")  # 60 × (2×0.000014 + 0.0000045)


# --- cost (SPEC §6) ----------------------------------------------------------------------------


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
def test_cost_survives_the_database_exactly(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="succeeded", cost_usd=Decimal("12345678.123456"))
    stored = SandboxRun.objects.get(pk=run.pk).cost_usd
    assert stored == Decimal("12345678.123456") and isinstance(stored, Decimal)


# --- deadlines and sandbox time ---------------------------------------------------------------


def _unsaved_run(**fields: Any) -> SandboxRun:
    now = timezone.now()
    defaults: dict[str, Any] = {
        "created_at": now, "last_activity_at": now,
        "max_duration_ms": 600_000, "idle_timeout_ms": 60_000,
    }  # fmt: skip
    return SandboxRun(**{**defaults, **fields})


def test_a_run_is_due_when_idle_unless_its_max_duration_comes_first() -> None:
    idle = _unsaved_run()
    assert idle.sweep_due() == (
        idle.last_activity_at + timedelta(seconds=60),
        EndReason.IDLE_TIMEOUT,
    )
    short = _unsaved_run(max_duration_ms=30_000)
    assert short.sweep_due() == (short.deadline, EndReason.MAX_DURATION)
    assert short.deadline == short.created_at + timedelta(seconds=30)


def test_a_run_whose_command_job_started_is_due_only_at_its_max_duration() -> None:
    run = _unsaved_run(command_started_at=timezone.now())
    assert run.sweep_due() == (run.deadline, EndReason.MAX_DURATION)


def test_the_remaining_time_counts_down_to_the_deadline_and_stops_at_zero() -> None:
    run = _unsaved_run()
    assert run.remaining_s(run.created_at + timedelta(seconds=100)) == 500
    assert run.remaining_s(run.created_at + timedelta(hours=1)) == 0


def test_sandbox_time_runs_from_running_or_else_from_a_made_sandbox_to_the_end() -> None:
    start = timezone.now()
    ran = _unsaved_run(
        created_at=start, running_at=start + timedelta(seconds=5),
        finished_at=start + timedelta(seconds=65), sandbox_id="s",
    )  # fmt: skip
    assert ran.sandbox_seconds == 60
    made_but_never_running = _unsaved_run(
        created_at=start, sandbox_id="s", finished_at=start + timedelta(seconds=10)
    )
    assert made_but_never_running.sandbox_seconds == 10
    no_sandbox = _unsaved_run(created_at=start, finished_at=start + timedelta(seconds=10))
    assert no_sandbox.sandbox_seconds == 0
    still_running = _unsaved_run(created_at=start, running_at=start, sandbox_id="s")
    assert still_running.sandbox_seconds == 0


# --- on the trail ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_transition_records_how_the_run_stands_and_never_its_env_or_files(
    workspace: Any,
) -> None:
    run = make_run(
        workspace=workspace, status="running", env={"TOKEN": "hunter2"},
        files={"/home/user/secret.txt": "the contents"}, thread_id="thread-t",
    )  # fmt: skip
    services.run_transition(run.pk, lambda r: r.cancel(by=TESTER))
    [event] = transitions(run.pk)
    assert (event.type, event.run_id, event.thread_id) == ("run.canceled", run.pk, "thread-t")
    assert event.data["end_reason"] == "canceled_by_user"
    assert set(event.data) == {
        "transition", "from", "to", "end_reason", "exit_code", "error", "sandbox_seconds",
        "paused_s", "cost_usd",
    }  # fmt: skip
    assert "hunter2" not in str(event.data) and "the contents" not in str(event.data)


@pytest.mark.django_db
def test_a_transition_without_an_actor_is_refused(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running")
    with pytest.raises(TypeError, match="by=<Actor>"), transaction.atomic():
        run.cancel(by="someone")  # type: ignore[arg-type]  # what an untyped caller might do
    run.refresh_from_db()
    assert run.status == "running"
    assert not transitions(run.pk).exists()


@pytest.mark.django_db
def test_a_command_is_a_subject_of_its_run_and_thread(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running", thread_id="thread-c")
    command = Command.objects.create(
        run=run, workspace=workspace, kind=CommandKind.EXEC, command="ls", cwd="/home/user",
        actor="user:olivia",
    )  # fmt: skip
    assert command.trail_subject() == Subject(
        "command", command.pk, workspace.pk, run_id=run.pk, thread_id="thread-c"
    )
    assert (command.status, command.timed_out) == (CommandStatus.RUNNING, False)


# --- paused time (SPEC §15) ------------------------------------------------------------------


def test_billed_time_leaves_out_the_time_paused() -> None:
    start = timezone.now()
    ran = _unsaved_run(
        created_at=start, running_at=start, sandbox_id="s",
        finished_at=start + timedelta(seconds=700), paused_for=timedelta(seconds=600),
    )  # fmt: skip
    assert (ran.sandbox_seconds, ran.paused_seconds()) == (100, 600)
    ended_while_paused = _unsaved_run(
        created_at=start, running_at=start, sandbox_id="s",
        paused_at=start + timedelta(seconds=30), finished_at=start + timedelta(seconds=90),
    )  # fmt: skip
    assert ended_while_paused.sandbox_seconds == 30
    paused_now = _unsaved_run(
        created_at=start, running_at=start, sandbox_id="s",
        paused_at=start + timedelta(seconds=30), paused_for=timedelta(seconds=5),
    )  # fmt: skip
    assert paused_now.paused_seconds(start + timedelta(seconds=50)) == 25


@pytest.mark.django_db
def test_a_paused_run_is_due_only_at_its_max_duration(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="paused", on_idle="pause")
    assert run.sweep_due() == (run.deadline, EndReason.MAX_DURATION)
    assert (run.is_active, run.is_live) == (False, True)

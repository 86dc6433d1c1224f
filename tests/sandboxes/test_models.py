"""The SandboxRun state machine: every allowed and forbidden transition, the audit log,
cost, and that two concurrent transitions cannot both win."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from config.exceptions import Conflict
from sandboxes import services
from sandboxes.models import RunStatus, SandboxRun, compute_cost
from tests.conftest import require_service
from tests.factories import make_run, transitions
from workspaces.access import Actor

ALL = [s.value for s in RunStatus]
ALLOWED = {
    ("booting", "mark_running"): "running",
    ("booting", "fail"): "failed",
    ("booting", "cancel"): "canceled",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "cancel"): "canceled",
}
ARGS: dict[str, dict[str, Any]] = {
    "mark_running": {"sandbox_id": "sbx-new", "cpu_count": 2, "memory_mb": 512},
    "succeed": {"exit_code": 0},
    "fail": {"reason": "command_failed", "error": {"code": "x", "message": "y"}},
    "cancel": {},
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
@pytest.mark.parametrize("terminal", ["succeeded", "failed", "canceled"])
def test_a_terminal_run_cannot_move_and_the_service_says_409(terminal: str, workspace: Any) -> None:
    run = make_run(workspace=workspace, status=terminal)
    with pytest.raises(Conflict) as excinfo:
        services.run_complete(run=run, actor=Actor(user=workspace.owner), status="succeeded")
    assert terminal in excinfo.value.detail


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

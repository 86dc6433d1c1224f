"""workspaces/watch.py: waiting for a change without polling the object, through the trail.

Transactional tests: the change comes from another thread's own connection and transaction,
as it would from another client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from artifacts import review
from sandboxes import services
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import make_artifact
from tests.conftest import client_as
from tests.factories import make_run
from workspaces import watch
from workspaces.access import Actor

pytestmark = pytest.mark.django_db(transaction=True)


def _later(seconds: float, action: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        try:
            action()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_wait_ends_soon_after_the_change(workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running")
    actor = Actor(user=workspace.owner)
    thread = _later(0.3, lambda: services.run_cancel(run=run, actor=actor))

    started = time.monotonic()
    current = watch.wait_while(
        load=lambda: SandboxRun.objects.get(pk=run.pk),
        waiting=lambda r: r.status == "running",
        wait_s=10,
    )
    waited = time.monotonic() - started
    thread.join()

    assert current.status == "canceled"
    assert waited < 1.3  # the change at 0.3 s, seen within a second (SPEC §11)


def test_a_wait_that_sees_no_change_ends_at_its_time_with_the_current_state(
    workspace: Any,
) -> None:
    run = make_run(workspace=workspace, status="running")
    started = time.monotonic()
    current = watch.wait_while(
        load=lambda: SandboxRun.objects.get(pk=run.pk),
        waiting=lambda r: r.status == "running",
        wait_s=0.6,
    )
    assert current.status == "running"
    assert 0.6 <= time.monotonic() - started < 2


def test_a_wait_for_one_run_loads_it_again_only_when_that_run_changes(
    workspace: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(watch, "RECHECK_S", 30.0)  # no periodic look in this test
    mine = make_run(workspace=workspace, status="running")
    others = [make_run(workspace=workspace, status="running") for _ in range(6)]
    actor = Actor(user=workspace.owner)
    loads = []

    def load() -> SandboxRun:
        loads.append(1)
        return SandboxRun.objects.get(pk=mine.pk)

    def changes() -> None:
        for other in others:  # events about other runs, in separate polls of the trail
            services.run_cancel(run=other, actor=actor)
            time.sleep(2 * watch.POLL_S)
        services.run_cancel(run=mine, actor=actor)

    thread = _later(0.2, changes)
    current = watch.wait_while(
        load=load,
        waiting=lambda r: r.status == "running",
        wait_s=20,
        workspace_id=str(workspace.pk),
        relevant=lambda event: event.run_id == mine.pk,
    )
    thread.join()
    assert current.status == "canceled"
    assert len(loads) == 2  # the first look, and once its own change came


def test_many_waiters_are_all_woken_by_one_change(workspace: Any) -> None:
    runs = [make_run(workspace=workspace, status="running") for _ in range(5)]
    seen: dict[int, str] = {}

    def wait(index: int) -> None:
        try:
            seen[index] = watch.wait_while(
                load=lambda: SandboxRun.objects.get(pk=runs[index].pk),
                waiting=lambda r: r.status == "running",
                wait_s=10,
            ).status
        finally:
            connection.close()

    waiters = [threading.Thread(target=wait, args=(i,)) for i in range(5)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)
    for run in runs:
        services.run_cancel(run=run, actor=Actor(user=workspace.owner))
    for waiter in waiters:
        waiter.join(5)
    assert seen == dict.fromkeys(range(5), "canceled")


def test_an_agent_waiting_on_its_artifact_hears_the_reviewers_decision(
    api: Any, workspace: Any, member: Any, admin_user: Any
) -> None:
    artifact = make_artifact(make_run(workspace=workspace, status="running"))
    reviewer = Actor(user=admin_user)
    thread = _later(
        0.3,
        lambda: review.artifact_review(artifact=artifact, actor=reviewer, decision="approve"),
    )

    started = time.monotonic()
    response = client_as(api, member).get(f"/api/v1/artifacts/{artifact.pk}/?wait_s=20")
    thread.join()

    assert response.status_code == 200
    assert response.json()["review_state"] == "approved"
    assert time.monotonic() - started < 1.5


def test_waiting_for_a_run_to_leave_its_active_states(
    api: Any, workspace: Any, member: Any
) -> None:
    run = make_run(workspace=workspace, status="running")
    thread = _later(0.3, lambda: services.run_cancel(run=run, actor=Actor(user=workspace.owner)))
    response = client_as(api, member).get(f"/api/v1/runs/{run.pk}/?wait_s=20")
    thread.join()
    assert (response.status_code, response.json()["status"]) == (200, "canceled")


def test_a_wait_through_other_states_ends_when_the_run_reaches_none_of_them(
    api: Any, workspace: Any, member: Any
) -> None:
    run = make_run(workspace=workspace, status="running")
    started = time.monotonic()
    response = client_as(api, member).get(f"/api/v1/runs/{run.pk}/?wait_s=20&while_status=booting")
    assert (response.status_code, response.json()["status"]) == (200, "running")
    assert time.monotonic() - started < 1  # already out of `booting`: no wait at all


@pytest.mark.parametrize(
    "query",
    ["wait_s=61", "wait_s=-1", "wait_s=soon", "while_status=sleeping", "wait=5", "wait_s=1&x=1"],
)
def test_bad_wait_parameters_are_a_400_naming_them(
    api: Any, workspace: Any, member: Any, query: str
) -> None:
    run = make_run(workspace=workspace, status="running")
    response = client_as(api, member).get(f"/api/v1/runs/{run.pk}/?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


# --- the horizon: below it, every event is committed -------------------------------------


@pytest.fixture
def poller(workspace: Any) -> watch.TrailWatch:
    """A trail watch of its own, polled by hand on the test's connection, started once what
    the trail holds has settled."""
    import time_machine
    from django.utils import timezone

    trail = watch.TrailWatch()
    with time_machine.travel(timezone.now() + 2 * watch.GRACE, tick=False):
        trail._poll_once()
    assert trail.horizon() == watch.latest_event_id()
    return trail


def _events(workspace: Any, count: int) -> list[int]:
    from tests.factories import record_event
    from workspaces.models import EventType

    return [record_event(workspace, EventType.WORKSPACE_RENAMED).pk for _ in range(count)]


@pytest.mark.django_db(transaction=False)
def test_the_horizon_stops_at_a_missing_id_until_it_commits(
    poller: watch.TrailWatch, workspace: Any
) -> None:
    from workspaces.models import Event

    first, missing, third = _events(workspace, 3)
    row = Event.objects.get(pk=missing)
    Event.objects.filter(pk=missing).delete()  # as if its transaction had not committed yet
    poller._poll_once()
    assert poller.horizon() == first
    row.save(force_insert=True)  # … and now it has
    poller._poll_once()
    assert poller.horizon() == third


@pytest.mark.django_db(transaction=False)
def test_the_horizon_passes_a_missing_id_once_the_event_after_it_is_old(
    poller: watch.TrailWatch, workspace: Any
) -> None:
    import time_machine
    from django.utils import timezone

    from workspaces.models import Event

    first, missing, third = _events(workspace, 3)
    Event.objects.filter(pk=missing).delete()  # rolled back: the id never comes
    poller._poll_once()
    assert poller.horizon() == first
    later = timezone.now() + watch.GRACE + timedelta(seconds=1)
    with time_machine.travel(later, tick=False):
        poller._poll_once()
    assert poller.horizon() == third


def test_a_watch_nobody_listens_to_stops_polling(workspace: Any) -> None:
    trail = watch.trail_watch()
    trail.wait_past(watch.latest_event_id(), 0.2)
    deadline = time.monotonic() + watch.IDLE_STOP_S + 5
    while trail._thread is not None:
        assert time.monotonic() < deadline, "the poller did not stop"
        time.sleep(0.05)


@pytest.mark.django_db(transaction=False)
def test_the_watch_remembers_new_events_for_the_streams(
    poller: watch.TrailWatch, workspace: Any, outsider: Any
) -> None:
    from tests.factories import make_workspace

    floor = poller.horizon()
    assert floor is not None
    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    mine = _events(workspace, 2)
    poller._poll_once()
    horizon = poller.horizon()
    assert horizon is not None
    remembered = poller.recent(str(workspace.pk), floor, horizon)
    assert remembered is not None
    assert [e.pk for e in remembered] == mine  # not the other workspace's creation
    assert poller.recent(str(elsewhere.pk), floor, horizon)  # its own, there
    assert poller.recent(str(workspace.pk), floor - 1, horizon) is None  # older: read the trail
    assert poller.recent(str(workspace.pk), floor, horizon + 1) is None  # past the horizon

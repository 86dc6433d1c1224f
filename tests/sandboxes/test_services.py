"""sandboxes/services.py: a run's life — create (validated, idempotent, limited per workspace
under its row lock), boot (tagged, adopted after a crash, never doubled), touch (throttled
deadlines), complete and cancel (the sandbox killed), and the workspace-delete hook. Mostly on
the in-memory backend; the provider's own deadline through the real SDK against the E2B double,
and crashes mid-boot on real local sandboxes."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from config.exceptions import Conflict, InvalidInput, LimitExceeded, ServiceUnavailable
from sandboxes import services
from sandboxes.backends import (
    BackendError,
    TransientBackendError,
    override_backend,
    sandbox_tags,
)
from sandboxes.models import SandboxRun, compute_cost
from tests.conftest import require_service
from tests.factories import (
    create_run,
    make_api_key,
    make_run,
    make_user,
    make_workspace,
    run_state,
    sandboxes_of,
    transitions,
)
from tests.sandboxes.backends.test_e2b import fake
from tests.sandboxes.conftest import T0
from tests.sandboxes.fake_backend import FakeBackend, start_run
from tests.sandboxes.faults import FaultyBackend
from workspaces.access import Actor
from workspaces.models import Event, Workspace

pytestmark = pytest.mark.django_db


# --- run_create ------------------------------------------------------------------------------


def test_a_new_run_is_booting_and_its_start_is_enqueued_on_commit(
    workspace: Workspace, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as enqueued:
        run = create_run(
            workspace=workspace,
            env={"TOKEN": "hunter2"},
            metadata={"ticket": 7},
            files={"/home/user/in//./a.txt": "contents"},
            command="cat in/a.txt",
            output_dir="/home/user/out/",
        )
    assert len(enqueued) == 1  # the start task, sent only once the run is committed
    run.refresh_from_db()
    assert (run.status, run.created_by) == ("booting", workspace.owner)
    assert (run.env, run.metadata) == ({"TOKEN": "hunter2"}, {"ticket": 7})
    assert (run.files, run.output_dir) == ({"/home/user/in/a.txt": "contents"}, "/home/user/out")
    assert (run.max_duration_ms, run.idle_timeout_ms) == (3_600_000, 900_000)  # the defaults


def test_run_created_is_on_the_trail_without_env_values_or_file_contents(
    workspace: Workspace,
) -> None:
    run = create_run(
        workspace=workspace,
        prompt="p" * (services.TRAIL_TEXT_CHARS + 10),
        env={"TOKEN": "hunter2", "A": "b"},
        files={"/home/user/secret.txt": "the contents"},
        command="true",
    )
    [event] = Event.objects.filter(type="run.created", subject_id=str(run.pk))
    assert (event.actor, event.run_id, event.thread_id) == ("user:olivia", run.pk, "t-1")
    assert event.data["env_names"] == ["A", "TOKEN"]
    assert event.data["files"] == ["/home/user/secret.txt"]
    assert event.data["prompt"] == "p" * services.TRAIL_TEXT_CHARS + "…"
    assert "hunter2" not in str(event.data) and "the contents" not in str(event.data)


def test_a_run_started_with_a_key_is_the_keys_and_its_creators(workspace: Workspace) -> None:
    key, _ = make_api_key(workspace=workspace)
    run = create_run(workspace=workspace, actor=Actor(user=key.created_by, api_key=key))
    assert (run.created_by, run.api_key) == (workspace.owner, key)
    [event] = Event.objects.filter(type="run.created", subject_id=str(run.pk))
    assert event.actor == f"api_key:{key.prefix}"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"env": {"1BAD": "x"}}, id="env"),
        pytest.param({"metadata": {"a": {"b": 1}}}, id="metadata"),
        pytest.param({"files": {"rel.txt": "x"}, "command": "true"}, id="files"),
        pytest.param({"files": {"/home/user/a.txt": "x"}}, id="files_without_command"),
        pytest.param({"output_dir": "/etc"}, id="output_dir"),
        pytest.param({"max_duration_ms": 10**12}, id="max_duration"),
        pytest.param({"idle_timeout_ms": 999}, id="idle_timeout"),
    ],
)
def test_a_refused_run_creates_nothing_and_records_nothing(
    workspace: Workspace, fields: dict[str, Any]
) -> None:
    events_before = Event.objects.count()
    with pytest.raises(InvalidInput):
        create_run(workspace=workspace, **fields)
    assert not SandboxRun.objects.exists()
    assert Event.objects.count() == events_before


def test_the_same_idempotency_key_and_request_give_the_same_run(workspace: Workspace) -> None:
    actor = Actor(user=workspace.owner)
    request: dict[str, Any] = {
        "thread_id": "t",
        "prompt": "p",
        "env": {"A": "1"},
        "idempotency_key": "abc",
    }
    first, created = services.run_create(workspace=workspace, actor=actor, **request)
    again, created_again = services.run_create(workspace=workspace, actor=actor, **request)
    assert (created, created_again) == (True, False)
    assert again == first
    assert SandboxRun.objects.count() == 1
    assert Event.objects.filter(type="run.created").count() == 1


def test_an_idempotency_key_reused_for_another_request_is_a_conflict(
    workspace: Workspace,
) -> None:
    actor = Actor(user=workspace.owner)
    services.run_create(
        workspace=workspace, actor=actor, thread_id="t", prompt="p", idempotency_key="abc"
    )
    for changed in ({"prompt": "other"}, {"env": {"A": "1"}}, {"idle_timeout_ms": 60_000}):
        fields: dict[str, Any] = {"thread_id": "t", "prompt": "p", **changed}
        with pytest.raises(Conflict) as raised:
            services.run_create(workspace=workspace, actor=actor, idempotency_key="abc", **fields)
        assert raised.value.code == "idempotency_mismatch"
    assert SandboxRun.objects.count() == 1


def test_an_idempotency_key_is_per_workspace(workspace: Workspace, owner: Any) -> None:
    elsewhere = make_workspace(owner=owner, name="Elsewhere")
    actor = Actor(user=owner)
    for ws in (workspace, elsewhere):
        _, created = services.run_create(
            workspace=ws, actor=actor, thread_id="t", prompt="p", idempotency_key="abc"
        )
        assert created
    assert SandboxRun.objects.count() == 2


def test_the_active_run_limit_counts_booting_and_running_runs_of_the_workspace(
    workspace: Workspace, owner: Any, settings: Any
) -> None:
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 2
    make_run(workspace=workspace)
    make_run(workspace=workspace, status="succeeded")  # ended runs do not count
    make_run(workspace=make_workspace(owner=owner, name="Elsewhere"), status="running")
    create_run(workspace=workspace)  # the second active run

    with pytest.raises(LimitExceeded) as raised:
        create_run(workspace=workspace)
    assert raised.value.code == "too_many_active_runs"
    assert SandboxRun.objects.filter(workspace=workspace).count() == 3


def test_the_limit_says_to_retry_when_the_first_active_run_must_end(
    workspace: Workspace, settings: Any, time_machine: Any
) -> None:
    time_machine.move_to(T0, tick=False)
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 1
    make_run(workspace=workspace, status="running", expires_at=T0 + timedelta(seconds=25))
    with pytest.raises(LimitExceeded) as raised:
        create_run(workspace=workspace)
    assert raised.value.retry_after_s == 25

    SandboxRun.objects.update(expires_at=T0 + timedelta(hours=1))
    with pytest.raises(LimitExceeded) as raised:
        create_run(workspace=workspace)
    assert raised.value.retry_after_s == 60  # capped at a minute

    SandboxRun.objects.update(expires_at=T0 - timedelta(seconds=5))  # overdue: the sweep's
    with pytest.raises(LimitExceeded) as raised:
        create_run(workspace=workspace)
    assert raised.value.retry_after_s == 1


def test_booting_runs_alone_say_retry_in_a_minute(workspace: Workspace, settings: Any) -> None:
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 1
    make_run(workspace=workspace)  # booting: no expiry yet
    with pytest.raises(LimitExceeded) as raised:
        create_run(workspace=workspace)
    assert raised.value.retry_after_s == 60


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_never_pass_the_limit(settings: Any) -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 3
    workspace = make_workspace(owner=make_user())
    barrier = threading.Barrier(6, timeout=10)
    outcomes: list[str] = []

    def create() -> None:
        try:
            barrier.wait()
            create_run(workspace=workspace)
            outcomes.append("created")
        except LimitExceeded:
            outcomes.append("429")
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["429"] * 3 + ["created"] * 3
    assert SandboxRun.objects.filter(workspace=workspace).count() == 3


# --- run_boot and run_fail_boot --------------------------------------------------------------


def test_a_boot_makes_a_tagged_sandbox_with_the_runs_deadline_and_marks_it_running(
    workspace: Workspace, fake_backend: FakeBackend, settings: Any
) -> None:
    settings.SANDBOX_KEEPALIVE_MIN_S = 30
    run = create_run(workspace=workspace, idle_timeout_ms=60_000, env={"A": "1"})

    services.run_boot(run_id=str(run.pk))

    run.refresh_from_db()
    assert (run.status, run.cpu_count, run.memory_mb) == ("running", 2, 512)
    [info] = sandboxes_of(fake_backend, run)
    assert info.sandbox_id == run.sandbox_id
    assert info.metadata == sandbox_tags(run_id=str(run.pk), workspace_id=str(workspace.pk))
    assert fake_backend.timeouts[run.sandbox_id] == 90  # idle timeout + the push throttle
    assert run.expires_at == run.last_activity_at + timedelta(seconds=60)
    [event] = transitions(run.pk)
    assert (event.type, event.actor, event.data["sandbox_id"]) == (
        "run.running",
        "system:start_sandbox_run",
        run.sandbox_id,
    )


def test_a_boot_enqueues_the_command_job_only_for_a_run_with_a_command(
    workspace: Workspace, fake_backend: FakeBackend, django_capture_on_commit_callbacks: Any
) -> None:
    plain, job = create_run(workspace=workspace), create_run(workspace=workspace, command="true")
    with django_capture_on_commit_callbacks() as enqueued:
        services.run_boot(run_id=str(plain.pk))
    assert enqueued == []
    with django_capture_on_commit_callbacks() as enqueued:
        services.run_boot(run_id=str(job.pk))
    assert len(enqueued) == 1


def test_a_run_that_is_not_booting_is_not_booted_again(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    canceled = make_run(workspace=workspace, status="canceled")
    for run_id in (run.pk, canceled.pk):
        services.run_boot(run_id=str(run_id))
    assert fake_backend.live_ids() == {run.sandbox_id}


@pytest.mark.bwrap
def test_a_duplicated_start_message_never_makes_a_second_sandbox(
    local_sandboxes: Any, workspace: Workspace
) -> None:
    run = create_run(workspace=workspace)
    services.run_boot(run_id=str(run.pk))
    services.run_boot(run_id=str(run.pk))
    assert len(sandboxes_of(local_sandboxes, run)) == 1


@pytest.mark.bwrap
def test_a_crash_between_create_and_save_is_healed_by_adopting_the_sandbox(
    local_sandboxes: Any, workspace: Workspace
) -> None:
    run = create_run(workspace=workspace)

    def crash(info: Any) -> None:
        raise SystemExit("worker died")  # the provider made the sandbox; we never saved it

    faulty = FaultyBackend(local_sandboxes)
    faulty.after("create", crash)
    with override_backend(faulty), pytest.raises(SystemExit):
        services.run_boot(run_id=str(run.pk))
    [orphan] = sandboxes_of(local_sandboxes, run)

    services.run_boot(run_id=str(run.pk))  # redelivered at once: the first attempt's lease holds
    run.refresh_from_db()
    assert run.status == "booting"

    with time_machine.travel(timezone.now() + services.boot_lease() + timedelta(seconds=1)):
        services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    assert run.status == "running"
    assert run.sandbox_id == orphan.sandbox_id
    assert len(sandboxes_of(local_sandboxes, run)) == 1


def test_a_boot_keeps_one_of_several_tagged_sandboxes_and_kills_the_rest(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = create_run(workspace=workspace)
    tags = sandbox_tags(run_id=str(run.pk), workspace_id=str(workspace.pk))
    made = [fake_backend.add(tags), fake_backend.add(tags)]  # two crashed attempts' sandboxes

    services.run_boot(run_id=str(run.pk))

    run.refresh_from_db()
    assert run.status == "running"
    assert run.sandbox_id in {info.sandbox_id for info in made}
    assert fake_backend.live_ids() == {run.sandbox_id}


@pytest.mark.bwrap
def test_a_run_canceled_while_booting_kills_the_sandbox_the_boot_made(
    local_sandboxes: Any, workspace: Workspace
) -> None:
    run = create_run(workspace=workspace)

    def the_user_cancels(info: Any) -> None:
        services.run_cancel(
            run=SandboxRun.objects.get(pk=run.pk), actor=Actor(user=workspace.owner)
        )

    faulty = FaultyBackend(local_sandboxes)
    faulty.after("create", the_user_cancels)
    with override_backend(faulty):
        services.run_boot(run_id=str(run.pk))

    run.refresh_from_db()
    assert run.status == "canceled"
    assert sandboxes_of(local_sandboxes, run) == []


def test_a_transient_failure_releases_the_claim_for_the_retry(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = create_run(workspace=workspace)
    fake_backend.fail_next("create", TransientBackendError("E2B is busy (503)"))

    with pytest.raises(TransientBackendError):
        services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.boot_claimed_at) == ("booting", None)

    services.run_boot(run_id=str(run.pk))  # the task's retry, at once: no lease in the way
    assert run_state(run) == ("running", "")


def test_a_permanent_failure_fails_the_run_with_its_error(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = create_run(workspace=workspace)
    fake_backend.fail_next("create", BackendError("no such template"))

    services.run_boot(run_id=str(run.pk))

    assert run_state(run) == ("failed", "boot_error")
    assert run.error == {"code": "backend_error", "message": "no such template"}
    assert transitions(run.pk).get().actor == "system:start_sandbox_run"


def test_a_permanent_boot_failure_fails_the_run_with_its_error(
    e2b_sandboxes: Any, e2b_server: Any, workspace: Workspace
) -> None:
    run = create_run(workspace=workspace)
    e2b_server.state.fail_next(401, method="POST", path=r"/v2/sandboxes")

    services.run_boot(run_id=str(run.pk))

    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "boot_error")
    assert run.error is not None
    assert run.error["code"] == BackendError.code
    assert "API key" in run.error["message"]
    assert e2b_server.state.live_sandboxes() == []


def test_a_failed_boot_kills_whatever_sandbox_was_made_for_the_run(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = create_run(workspace=workspace)
    made = fake_backend.add(sandbox_tags(run_id=str(run.pk), workspace_id=str(workspace.pk)))
    other = fake_backend.add(sandbox_tags(run_id="another-run", workspace_id="w"))

    services.run_fail_boot(run_id=str(run.pk), error=TransientBackendError("gave up"))

    assert run_state(run) == ("failed", "boot_error")
    assert run.error == {"code": "backend_unavailable", "message": "gave up"}
    assert fake_backend.kills == [made.sandbox_id]
    assert fake_backend.live_ids() == {other.sandbox_id}


def test_failing_the_boot_of_a_run_that_ended_meanwhile_changes_nothing(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(workspace=workspace, status="canceled")
    services.run_fail_boot(run_id=str(run.pk), error=BackendError("late"))
    assert run_state(run) == ("canceled", "")
    assert fake_backend.kills == []


def test_a_run_that_never_got_a_sandbox_costs_nothing(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(workspace=workspace)  # booting
    services.run_fail_boot(run_id=str(run.pk), error=BackendError("no such template"))
    run.refresh_from_db()
    assert (run.status, run.cost_usd) == ("failed", Decimal("0"))


# --- run_touch and the provider's deadline ---------------------------------------------------


def test_a_touch_moves_the_idle_deadline_at_most_once_a_second(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any, django_assert_num_queries: Any
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(10)
    services.run_touch(run=run)
    run.refresh_from_db()
    assert run.last_activity_at == T0 + timedelta(seconds=10)
    assert run.expires_at == T0 + timedelta(seconds=70)

    clock(10.5)
    with django_assert_num_queries(0):  # both throttles hold: nothing to write, nothing to push
        services.run_touch(run=run)
    run.refresh_from_db()
    assert run.last_activity_at == T0 + timedelta(seconds=10)


def test_a_touch_pushes_the_sandboxes_own_deadline_once_per_interval(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any, settings: Any
) -> None:
    settings.SANDBOX_KEEPALIVE_MIN_S = 30
    run = start_run(workspace=workspace, idle_timeout_ms=60_000, max_duration_ms=600_000)
    fake_backend.timeouts[run.sandbox_id] = 0  # to see each push

    clock(5)
    services.run_touch(run=run)
    assert fake_backend.timeouts[run.sandbox_id] == 90
    fake_backend.timeouts[run.sandbox_id] = 0
    clock(20)
    services.run_touch(run=run)
    assert fake_backend.timeouts[run.sandbox_id] == 0  # within the interval: not pushed
    clock(35)
    services.run_touch(run=run)
    assert fake_backend.timeouts[run.sandbox_id] == 90


def test_a_failed_deadline_push_does_not_fail_the_call(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any
) -> None:
    run = start_run(workspace=workspace)
    fake_backend.fail_next("set_timeout", TransientBackendError("E2B is busy"))
    clock(5)
    services.run_touch(run=run)
    run.refresh_from_db()
    assert run.last_activity_at == T0 + timedelta(seconds=5)


@pytest.mark.parametrize("status", ["booting", "succeeded", "canceled"])
def test_a_touch_on_a_run_that_is_not_running_does_nothing(
    workspace: Workspace, status: str, django_assert_num_queries: Any
) -> None:
    run = make_run(workspace=workspace, status=status)
    before = run.last_activity_at
    with django_assert_num_queries(0):
        services.run_touch(run=run)
    assert run.last_activity_at == before


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
    run = create_run(
        workspace=workspace, thread_id="t", prompt="p", idle_timeout_ms=60_000,
        max_duration_ms=300_000,
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


@pytest.mark.parametrize(
    ("fields", "elapsed_s", "expected"),
    [
        pytest.param({}, 0, 90, id="idle-plus-the-push-throttle"),
        pytest.param({}, 550, 50, id="capped-by-the-remaining-time"),
        pytest.param({"idle_timeout_ms": 60_001}, 0, 91, id="rounded-up"),
        pytest.param({"command_started_at": T0}, 100, 500, id="a-job-holds-it-to-the-end"),
        pytest.param({}, 700, 1, id="never-below-a-second"),
    ],
)
def test_the_provider_timeout(
    workspace: Workspace,
    clock: Any,
    settings: Any,
    fields: dict[str, Any],
    elapsed_s: float,
    expected: int,
) -> None:
    settings.SANDBOX_KEEPALIVE_MIN_S = 30
    fields = {"idle_timeout_ms": 60_000, "max_duration_ms": 600_000, **fields}
    run = make_run(workspace=workspace, status="running", created_at=T0, **fields)
    clock(elapsed_s)
    assert services.provider_timeout_s(run) == expected


# --- ending a run ----------------------------------------------------------------------------


def test_completing_a_run_ends_it_and_kills_its_sandbox(
    workspace: Workspace, fake_backend: FakeBackend, member: Any
) -> None:
    succeeded = start_run(workspace=workspace)
    failed = start_run(workspace=workspace)
    actor = Actor(user=member)

    services.run_complete(run=succeeded, actor=actor, status="succeeded")
    services.run_complete(
        run=failed, actor=actor, status="failed", error={"code": "agent", "message": "gave up"}
    )

    assert run_state(succeeded) == ("succeeded", "completed")
    assert (run_state(failed), failed.error) == (
        ("failed", "command_failed"),
        {"code": "agent", "message": "gave up"},
    )
    assert fake_backend.live_ids() == set()
    assert [e.actor for e in transitions(succeeded.pk, failed.pk) if e.type != "run.running"] == [
        "user:mia",
        "user:mia",
    ]


def test_a_run_marked_failed_without_an_error_says_the_client_did(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = services.run_complete(
        run=start_run(workspace=workspace), actor=Actor(user=workspace.owner), status="failed"
    )
    assert run.error == {"code": "failed", "message": "Marked failed by the client."}


def test_a_run_completes_only_as_succeeded_or_failed(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    with pytest.raises(InvalidInput) as raised:
        services.run_complete(run=run, actor=Actor(user=workspace.owner), status="canceled")
    assert raised.value.code == "invalid_choice"
    assert run_state(run) == ("running", "")


@pytest.mark.parametrize("terminal", ["succeeded", "failed", "canceled"])
def test_a_terminal_run_cannot_move_and_the_service_says_409(
    terminal: str, workspace: Workspace
) -> None:
    run = make_run(workspace=workspace, status=terminal)
    with pytest.raises(Conflict) as excinfo:
        services.run_complete(run=run, actor=Actor(user=workspace.owner), status="succeeded")
    assert terminal in excinfo.value.detail


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


def test_canceling_kills_the_sandbox_and_a_second_cancel_changes_nothing(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    services.run_cancel(run=run, actor=Actor(user=workspace.owner))
    again = services.run_cancel(
        run=SandboxRun.objects.get(pk=run.pk), actor=Actor(user=workspace.owner)
    )
    assert (again.status, again.end_reason) == ("canceled", "canceled_by_user")
    assert fake_backend.kills == [run.sandbox_id]
    assert [e.type for e in transitions(run.pk)] == ["run.running", "run.canceled"]


def test_a_cancel_whose_kill_fails_still_cancels(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    # Reconcile kills sandboxes of ended runs later; the user's cancel must not wait for it.
    run = start_run(workspace=workspace)
    fake_backend.fail_next_kill(run.sandbox_id, TransientBackendError("E2B is busy"))
    services.run_cancel(run=run, actor=Actor(user=workspace.owner))
    assert run_state(run) == ("canceled", "canceled_by_user")
    assert run.sandbox_id in fake_backend.live_ids()


def test_a_booting_run_is_canceled_without_a_kill(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = make_run(workspace=workspace)
    services.run_cancel(run=run, actor=Actor(user=workspace.owner), reason="idle_timeout")
    assert run_state(run) == ("canceled", "idle_timeout")
    assert fake_backend.kills == []


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_an_ended_run_cannot_be_canceled(workspace: Workspace, status: str) -> None:
    run = make_run(workspace=workspace, status=status)
    with pytest.raises(Conflict) as raised:
        services.run_cancel(run=run, actor=Actor(user=workspace.owner))
    assert (raised.value.code, raised.value.detail) == ("invalid_state", f"The run is {status}.")


def test_a_lost_race_is_a_conflict_with_the_winners_status(workspace: Workspace) -> None:
    run = make_run(workspace=workspace, status="running")
    stale = SandboxRun.objects.get(pk=run.pk)
    services.run_cancel(run=run, actor=Actor(user=workspace.owner))
    with pytest.raises(Conflict) as raised:
        services.run_transition(stale.pk, lambda r: r.succeed(by=Actor.system("test")))
    assert raised.value.detail == "The run is canceled."


def test_deleting_a_workspace_cancels_its_active_runs_first(
    workspace: Workspace, fake_backend: FakeBackend, owner: Any
) -> None:
    running, booting = start_run(workspace=workspace), make_run(workspace=workspace)
    ended = make_run(workspace=workspace, status="succeeded")
    other = start_run(workspace=make_workspace(owner=make_user(), name="Elsewhere"))

    services.workspace_runs_cancel(workspace, Actor(user=owner))

    assert [run_state(r)[0] for r in (running, booting, ended, other)] == [
        "canceled", "canceled", "succeeded", "running",
    ]  # fmt: skip
    assert fake_backend.live_ids() == {other.sandbox_id}
    assert {e.actor for e in transitions(running.pk, booting.pk) if e.type == "run.canceled"} == {
        "user:olivia"
    }


# --- on_idle and network (SPEC §15) ------------------------------------------------------------


def test_a_run_says_what_happens_when_idle_and_defaults_to_the_setting(
    workspace: Workspace, settings: Any, fake_backend: FakeBackend
) -> None:
    assert create_run(workspace=workspace).on_idle == "kill"
    assert create_run(workspace=workspace, on_idle="pause").on_idle == "pause"
    settings.SANDBOX_DEFAULT_ON_IDLE = "pause"
    assert create_run(workspace=workspace).on_idle == "pause"
    assert create_run(workspace=workspace, on_idle="kill").on_idle == "kill"
    with pytest.raises(InvalidInput, match="on_idle"):
        create_run(workspace=workspace, on_idle="sleep")


def test_a_runs_network_is_validated_and_filled_in_from_the_setting(
    workspace: Workspace, settings: Any, fake_backend: FakeBackend
) -> None:
    run = create_run(
        workspace=workspace,
        network={"allow_out": ["10.0.0.0/8", "API.Example.com", "api.example.com"]},
    )
    assert run.network == {
        "internet": False,
        "allow_out": ["10.0.0.0/8", "api.example.com"],
        "deny_out": [],
    }
    settings.SANDBOX_DEFAULT_INTERNET = True
    assert create_run(workspace=workspace).network["internet"] is True
    assert create_run(workspace=workspace, network={"internet": False}).network["internet"] is False
    for bad in (
        {"deny_out": ["not a host"]},
        {"allow_out": "10.0.0.0/8"},
        {"internet": "yes"},
        {"proxy": "x"},
        {"allow_out": [7]},
    ):
        with pytest.raises(InvalidInput, match="network"):
            create_run(workspace=workspace, network=bad)


def test_a_network_the_local_backend_cannot_enforce_is_a_400_naming_it(
    workspace: Workspace, settings: Any, tmp_path: Any
) -> None:
    from tests.sandboxes.backends.fixtures_local import make_local_backend

    with override_backend(make_local_backend(tmp_path)):
        assert create_run(workspace=workspace, network={"internet": False}).network
        for network in ({"internet": True}, {"allow_out": ["10.0.0.1"]}):
            with pytest.raises(InvalidInput, match="local backend") as excinfo:
                create_run(workspace=workspace, network=network)
            assert excinfo.value.code == "unsupported_by_backend"
        settings.SANDBOX_DEFAULT_INTERNET = True
        with pytest.raises(InvalidInput, match="local backend"):
            create_run(workspace=workspace)
    assert not SandboxRun.objects.filter(network__internet=True).exists()


def test_on_idle_pause_on_a_backend_that_cannot_pause_is_a_400_naming_it(
    workspace: Workspace, settings: Any
) -> None:
    backend = FakeBackend()
    backend.supports_pause = False
    backend.name = "cannot-pause"
    with override_backend(backend):
        with pytest.raises(InvalidInput, match="cannot-pause backend cannot pause"):
            create_run(workspace=workspace, on_idle="pause")
        settings.SANDBOX_DEFAULT_ON_IDLE = "pause"
        with pytest.raises(InvalidInput, match="SANDBOX_DEFAULT_ON_IDLE"):
            create_run(workspace=workspace)


def test_the_boot_gives_the_backend_the_runs_network(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    network = {"internet": True, "allow_out": [], "deny_out": ["192.168.0.0/16"]}
    run = start_run(workspace=workspace, network=network)
    policy = fake_backend.networks[run.sandbox_id]
    assert policy is not None
    assert (policy.internet, policy.allow_out, policy.deny_out) == (True, (), ("192.168.0.0/16",))


# --- pause and resume (SPEC §15) ---------------------------------------------------------------


def test_pausing_pauses_the_sandbox_then_the_run_on_the_trail_with_the_actor(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any
) -> None:
    run = start_run(workspace=workspace)
    clock(60)
    actor = Actor(user=workspace.owner)

    paused = services.run_pause(run=run, actor=actor)

    assert (paused.status, paused.paused_at) == ("paused", T0 + timedelta(seconds=60))
    assert paused.expires_at == paused.deadline  # only its max duration ends it now
    assert run.sandbox_id in fake_backend.paused
    event = transitions(run.pk).last()
    assert (event.type, event.actor, event.data["from"], event.data["to"]) == (
        "run.paused", str(actor), "running", "paused",
    )  # fmt: skip
    assert services.run_pause(run=paused, actor=actor) is paused  # a no-op when paused
    assert transitions(run.pk).count() == 2


def test_resuming_resumes_the_run_then_its_sandbox_with_the_idle_timeout(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any, settings: Any
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    actor = Actor(user=workspace.owner)
    run = services.run_pause(run=run, actor=actor)
    clock(600)

    resumed = services.run_resume(run=run, actor=actor)

    assert (resumed.status, resumed.paused_at) == ("running", None)
    assert resumed.paused_for == timedelta(seconds=600)
    assert resumed.last_activity_at == T0 + timedelta(seconds=600)
    assert resumed.expires_at == T0 + timedelta(seconds=660)
    assert run.sandbox_id not in fake_backend.paused
    assert fake_backend.timeouts[run.sandbox_id] == 60 + settings.SANDBOX_KEEPALIVE_MIN_S
    event = transitions(run.pk).last()
    assert (event.type, event.actor, event.data["paused_s"]) == ("run.resumed", str(actor), 600.0)
    assert services.run_resume(run=resumed, actor=actor) is resumed  # a no-op when running


@pytest.mark.parametrize("status", ["booting", "succeeded", "failed", "canceled"])
def test_only_a_running_run_pauses_and_only_a_paused_one_resumes(
    workspace: Workspace, fake_backend: FakeBackend, status: str
) -> None:
    run = make_run(workspace=workspace, status=status)
    actor = Actor(user=workspace.owner)
    with pytest.raises(Conflict, match=f"The run is {status}"):
        services.run_pause(run=run, actor=actor)
    with pytest.raises(Conflict, match=f"The run is {status}"):
        services.run_resume(run=run, actor=actor)
    assert fake_backend.paused == set()


def test_a_job_run_is_not_paused(workspace: Workspace, fake_backend: FakeBackend) -> None:
    run = start_run(workspace=workspace, command="make")  # its job is enqueued, not run here
    actor = Actor(user=workspace.owner)
    with pytest.raises(Conflict) as excinfo:
        services.run_pause(run=run, actor=actor)
    assert excinfo.value.code == "command_running"
    assert run_state(run)[0] == "running"


def test_a_backend_that_cannot_pause_refuses_with_a_400(workspace: Workspace) -> None:
    backend = FakeBackend()
    with override_backend(backend):
        run = start_run(workspace=workspace)
        backend.supports_pause = False
        with pytest.raises(InvalidInput, match="cannot pause"):
            services.run_pause(run=run, actor=Actor(user=workspace.owner))
    assert run_state(run)[0] == "running"


def test_a_failed_pause_leaves_the_run_running(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace)
    fake_backend.fail_next("pause", TransientBackendError("busy"))
    with pytest.raises(ServiceUnavailable):
        services.run_pause(run=run, actor=Actor(user=workspace.owner))
    assert run_state(run)[0] == "running"


def test_a_failed_resume_leaves_the_run_paused_and_a_gone_sandbox_fails_it(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    actor = Actor(user=workspace.owner)
    run = services.run_pause(run=start_run(workspace=workspace), actor=actor)
    fake_backend.fail_next("resume", TransientBackendError("busy"))
    with pytest.raises(ServiceUnavailable):
        services.run_resume(run=run, actor=actor)
    assert run_state(run)[0] == "paused"

    fake_backend.kill(run.sandbox_id)
    with pytest.raises(Conflict, match="gone"):
        services.run_resume(run=SandboxRun.objects.get(pk=run.pk), actor=actor)
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "sandbox_lost")


def test_paused_time_is_not_billed(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any
) -> None:
    actor = Actor(user=workspace.owner)
    run = start_run(workspace=workspace)  # T0
    clock(60)
    run = services.run_pause(run=run, actor=actor)
    clock(60 + 3600)  # an hour waiting for review
    run = services.run_resume(run=run, actor=actor)
    clock(60 + 3600 + 30)
    run = services.run_complete(run=run, actor=actor, status="succeeded")

    assert run.sandbox_seconds == 90
    assert run.cost_usd == compute_cost(seconds=90, cpu_count=run.cpu_count,
                                        memory_mb=run.memory_mb)  # fmt: skip
    assert run.cost_usd is not None and run.cost_usd > 0
    [ended] = [e for e in transitions(run.pk) if e.type == "run.succeeded"]
    assert (ended.data["sandbox_seconds"], ended.data["paused_s"]) == (90.0, 3600.0)


def test_a_run_that_ends_while_paused_is_billed_until_its_pause(
    workspace: Workspace, fake_backend: FakeBackend, clock: Any
) -> None:
    actor = Actor(user=workspace.owner)
    run = start_run(workspace=workspace)
    clock(45)
    run = services.run_pause(run=run, actor=actor)
    clock(45 + 900)
    run = services.run_cancel(run=run, actor=actor)

    assert (run.status, run.sandbox_seconds, run.paused_at) == ("canceled", 45, None)
    assert run.sandbox_id not in fake_backend.live_ids()


def test_paused_runs_do_not_count_toward_the_active_limit_but_resuming_does(
    workspace: Workspace, fake_backend: FakeBackend, settings: Any
) -> None:
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 1
    actor = Actor(user=workspace.owner)
    paused = services.run_pause(run=start_run(workspace=workspace), actor=actor)

    create_run(workspace=workspace)  # the one active run: the paused one does not count

    with pytest.raises(LimitExceeded):
        create_run(workspace=workspace)
    with pytest.raises(LimitExceeded):
        services.run_resume(run=paused, actor=actor)
    assert run_state(paused)[0] == "paused"
    assert paused.sandbox_id in fake_backend.paused


def test_a_paused_run_is_ended_by_the_workspace_delete_hook(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    actor = Actor(user=workspace.owner)
    run = services.run_pause(run=start_run(workspace=workspace), actor=actor)
    services.workspace_runs_cancel(workspace, actor)
    assert run_state(run)[0] == "canceled"
    assert run.sandbox_id not in fake_backend.live_ids()


# --- through the real SDK against the E2B double -----------------------------------------------


def test_on_e2b_pause_then_exec_resumes_within_the_call_and_answers(
    workspace: Workspace, e2b_sandboxes: Any, e2b_server: Any
) -> None:
    from sandboxes import execution

    actor = Actor(user=workspace.owner)
    run = start_run(workspace=workspace, on_idle="pause")
    execution.run_exec(run=run, actor=actor, command="sleep 600 & echo $! > child; echo 1 > n")
    run = services.run_pause(run=run, actor=actor)
    assert fake(e2b_server, run.sandbox_id).state == "paused"
    assert e2b_server.state.requests_for("POST", rf"/sandboxes/{run.sandbox_id}/pause")

    result = execution.run_exec(
        run=run, actor=actor, command='kill -0 "$(cat child)" && echo $(( $(cat n) + 1 ))'
    )

    assert (result.exit_code, result.stdout) == (0, "2\n")
    assert fake(e2b_server, run.sandbox_id).state == "running"
    assert run_state(run)[0] == "running"
    [resume] = e2b_server.state.requests_for("POST", rf"/v2/sandboxes/{run.sandbox_id}/connect")
    assert resume.body["timeout"] == services.provider_timeout_s(SandboxRun.objects.get(pk=run.pk))
    assert [e.type for e in transitions(run.pk)] == ["run.running", "run.paused", "run.resumed"]


def test_on_e2b_the_runs_network_reaches_the_create_request(
    workspace: Workspace, e2b_sandboxes: Any, e2b_server: Any
) -> None:
    start_run(workspace=workspace, network={"internet": False, "allow_out": ["api.github.com"],
                                            "deny_out": []})  # fmt: skip
    start_run(workspace=workspace, network={"internet": True, "allow_out": [],
                                            "deny_out": ["10.0.0.0/8"]})  # fmt: skip
    start_run(workspace=workspace, network={"internet": True, "allow_out": [], "deny_out": []})

    bodies = [r.body for r in e2b_server.state.requests_for("POST", r"/v2/sandboxes")]
    assert [(b.get("allow_internet_access"), b.get("network")) for b in bodies] == [
        (None, {"allowOut": ["api.github.com"], "denyOut": ["0.0.0.0/0"]}),
        (True, {"denyOut": ["10.0.0.0/8"]}),
        (True, None),
    ]


def test_pause_and_resume_are_delivered_to_webhooks_that_want_them(
    workspace: Workspace, fake_backend: FakeBackend, settings: Any
) -> None:
    from workspaces import webhooks
    from workspaces.models import WebhookDelivery

    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    actor = Actor(user=workspace.owner)
    wanted, _ = webhooks.webhook_create(
        workspace=workspace, actor=actor, url="http://127.0.0.1:9/hook",
        event_types=["run.paused", "run.resumed"],
    )  # fmt: skip
    run = start_run(workspace=workspace)
    services.run_resume(run=services.run_pause(run=run, actor=actor), actor=actor)

    delivered = WebhookDelivery.objects.filter(endpoint=wanted).order_by("created_at")
    assert [d.event.type for d in delivered] == ["run.paused", "run.resumed"]
    assert {d.event.run_id for d in delivered} == {run.pk}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_on_a_paused_run_resume_it_once_and_all_go_on() -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    workspace = make_workspace(owner=make_user())
    backend = FakeBackend()
    outcomes: list[str] = []
    with override_backend(backend):
        actor = Actor(user=workspace.owner)
        run = services.run_pause(run=start_run(workspace=workspace), actor=actor)
        barrier = threading.Barrier(4, timeout=10)

        def call() -> None:
            try:
                barrier.wait()
                outcomes.append(services.run_ensure_running(run=run, actor=actor).status)
            finally:
                connection.close()

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert outcomes == ["running"] * 4
    assert run.sandbox_id not in backend.paused
    assert [e.type for e in transitions(run.pk)] == ["run.running", "run.paused", "run.resumed"]


def test_on_e2b_paused_time_is_not_billed(
    workspace: Workspace, e2b_sandboxes: Any, e2b_server: Any, clock: Any
) -> None:
    from sandboxes import execution

    actor = Actor(user=workspace.owner)
    run = start_run(workspace=workspace, on_idle="pause")  # T0, on frozen time
    clock(120)
    run = services.run_pause(run=run, actor=actor)
    clock(120 + 3600)
    execution.run_exec(run=run, actor=actor, command="true")  # resumes it
    clock(120 + 3600 + 60)
    run = services.run_complete(
        run=SandboxRun.objects.get(pk=run.pk), actor=actor, status="succeeded"
    )

    assert (run.sandbox_seconds, run.paused_for) == (180, timedelta(hours=1))
    assert run.cpu_count and run.cost_usd == compute_cost(
        seconds=180, cpu_count=run.cpu_count, memory_mb=run.memory_mb
    )
    assert fake(e2b_server, run.sandbox_id).alive is False


@pytest.mark.bwrap
def test_on_local_a_paused_run_is_frozen_and_its_next_exec_finds_its_processes_and_memory(
    local_sandboxes: Any, workspace: Workspace
) -> None:
    from sandboxes import execution
    from sandboxes.backends.local.limits import SandboxCgroups

    actor = Actor(user=workspace.owner)
    run = start_run(workspace=workspace, on_idle="pause")
    holder = (
        "v=$RANDOM$RANDOM$RANDOM; echo $v | sha256sum > digest; "
        "while [ ! -f ask ]; do sleep 0.05; done; echo $v | sha256sum > after"
    )
    execution.run_exec(
        run=run, actor=actor, command=f"(bash -c '{holder}' </dev/null >/dev/null 2>&1 &)"
    )
    execution.run_exec(
        run=run, actor=actor, command="until [ -s digest ]; do sleep 0.05; done", timeout_s=30
    )

    paused = services.run_pause(run=run, actor=actor)
    record = SandboxCgroups.from_json(
        (local_sandboxes.root / run.sandbox_id / "cgroups.json").read_bytes()
    )
    track = record.groups["track"]
    frozen = (
        "frozen 1" in track.read("cgroup.events").splitlines()
        if track.version == 2
        else track.read("freezer.state").strip() == "FROZEN"
    )
    assert frozen

    result = execution.run_exec(
        run=paused, actor=actor,
        command="touch ask; until [ -s after ]; do sleep 0.05; done; cmp digest after && echo same",
        timeout_s=30,
    )  # fmt: skip

    assert (result.exit_code, result.stdout) == (0, "same\n")
    assert run_state(run)[0] == "running"


# --- the start outbox ------------------------------------------------------------------------


def test_a_broker_that_cannot_take_the_start_leaves_an_accepted_run_for_the_sweep(
    workspace: Workspace, broker_down: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        run = create_run(workspace=workspace)  # no exception: the run is committed

    run.refresh_from_db()
    assert (run.status, run.start_enqueued_at, run.boot_claimed_at) == ("booting", None, None)
    assert services.runs_start_unclaimed(timezone.now()) == [run]  # the next sweep sends it
    assert SandboxRun.objects.count() == 1


def test_a_sent_start_is_sent_again_only_once_overdue_and_unclaimed(
    workspace: Workspace, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        run = create_run(workspace=workspace)
    run.refresh_from_db()
    assert run.start_enqueued_at is not None
    sent_at = run.start_enqueued_at
    assert services.runs_start_unclaimed(sent_at + services.start_overdue_after()) == []

    later = sent_at + services.start_overdue_after() + timedelta(seconds=1)
    [overdue] = services.runs_start_unclaimed(later)
    assert services.run_start_resend(run=overdue, now=later)
    assert not services.run_start_resend(run=overdue, now=later)  # a second sweep: no
    run.refresh_from_db()
    assert run.start_enqueued_at == later

    SandboxRun.objects.filter(pk=run.pk).update(boot_claimed_at=later)  # a worker took it
    assert services.runs_start_unclaimed(later + timedelta(hours=1)) == []


def test_a_start_that_arrives_after_the_boot_timeout_boots_nothing(
    workspace: Workspace, fake_backend: FakeBackend, settings: Any
) -> None:
    settings.SANDBOX_BOOT_TIMEOUT_S = 300
    run = create_run(workspace=workspace)
    SandboxRun.objects.filter(pk=run.pk).update(
        created_at=timezone.now() - timedelta(seconds=301)  # its worker was down meanwhile
    )

    services.run_boot(run_id=str(run.pk))

    assert run_state(run) == ("failed", "boot_timeout")
    assert fake_backend.live_ids() == set()
    [event] = transitions(run.pk)
    assert event.actor == "system:start_sandbox_run"
    assert event.data["error"]["code"] == "boot_timeout"
    assert services.runs_start_unclaimed(timezone.now()) == []


def test_a_command_job_the_broker_could_not_take_is_sent_by_the_sweep(
    workspace: Workspace,
    fake_backend: FakeBackend,
    broker_down: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = create_run(workspace=workspace, command="make")
    with django_capture_on_commit_callbacks(execute=True):
        services.run_boot(run_id=str(run.pk))  # running; its job's send fails on commit

    run.refresh_from_db()
    assert (run.status, run.start_enqueued_at, run.command_started_at) == ("running", None, None)
    now = timezone.now()
    assert services.runs_job_unclaimed(now) == [run]

    broker_down()  # back
    assert services.run_job_resend(run=run, now=now)
    run.refresh_from_db()
    assert run.start_enqueued_at == now
    assert services.runs_job_unclaimed(now) == []
    later = now + services.start_overdue_after() + timedelta(seconds=1)
    assert services.runs_job_unclaimed(later) == [run]  # still unclaimed: overdue again
    SandboxRun.objects.filter(pk=run.pk).update(command_started_at=later)  # a worker took it
    assert services.runs_job_unclaimed(later + timedelta(hours=1)) == []

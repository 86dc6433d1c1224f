"""The command job (artifacts/jobs.py), through its task: a run's command runs once, on real
sandboxes, and ends the run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from artifacts import jobs
from artifacts.models import Artifact
from artifacts.tasks import execute_run_command
from sandboxes import services
from sandboxes.models import Command, SandboxRun
from sandboxes.sweep import sandboxes_sweep
from sandboxes.tasks import start_sandbox_run
from tests.factories import create_run, sandboxes_of
from tests.sandboxes.fake_backend import fake_backend_fixture, start_run  # noqa: F401
from workspaces.access import Actor


def _boot(run: SandboxRun) -> SandboxRun:
    start_sandbox_run(str(run.pk))
    run.refresh_from_db()
    assert run.status == "running"
    return run


@pytest.mark.django_db
def test_a_command_that_exits_0_succeeds_and_its_sandbox_is_killed(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _boot(create_run(workspace=workspace, command="python3 -c 'print(42)'"))
    execute_run_command(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.end_reason, run.exit_code) == ("succeeded", "completed", 0)
    assert run.cost_usd is not None
    assert sandboxes_of(local_sandboxes, run) == []


@pytest.mark.django_db
def test_a_command_that_exits_non_zero_fails_with_its_exit_code(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _boot(create_run(workspace=workspace, command="echo oops >&2; exit 3"))
    execute_run_command(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.end_reason, run.exit_code) == ("failed", "command_failed", 3)
    assert run.error == {"code": "command_failed", "message": "exit code 3"}


@pytest.mark.django_db
def test_files_are_written_before_the_command_runs(local_sandboxes: Any, workspace: Any) -> None:
    run = _boot(
        create_run(
            workspace=workspace,
            files={"/home/user/in/data.txt": "hello"},
            command='test "$(cat in/data.txt)" = hello',
        )
    )
    execute_run_command(str(run.pk))
    run.refresh_from_db()
    assert run.status == "succeeded"


@pytest.mark.django_db
def test_a_command_running_past_the_max_duration_fails_the_run(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _boot(create_run(workspace=workspace, command="sleep 30", max_duration_ms=2000))
    execute_run_command(str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "max_duration"), run.error
    assert sandboxes_of(local_sandboxes, run) == []


@pytest.mark.django_db
def test_a_repeated_command_message_does_not_run_the_command_twice(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _boot(
        create_run(workspace=workspace, command="echo x >> count; test $(wc -l < count) = 1")
    )
    SandboxRun.objects.filter(pk=run.pk).update(command_started_at=timezone.now())
    execute_run_command(str(run.pk))  # another delivery already claimed it: nothing happens
    run.refresh_from_db()
    assert run.status == "running"
    assert local_sandboxes.run(run.sandbox_id, "test -e count", timeout_s=10).exit_code != 0


@pytest.mark.django_db
def test_the_command_job_keeps_the_e2b_sandbox_until_the_max_duration(
    e2b_sandboxes: Any, e2b_server: Any, workspace: Any
) -> None:
    run, _ = services.run_create(
        workspace=workspace, actor=Actor(user=workspace.owner), thread_id="t", prompt="p",
        command="true", idle_timeout_ms=60_000, max_duration_ms=600_000,
    )  # fmt: skip
    services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    jobs.run_execute_command(run_id=str(run.pk))

    requests = e2b_server.state.requests_for("POST", rf"/sandboxes/{run.sandbox_id}/timeout")
    (pushed,) = [request.body["timeout"] for request in requests]
    assert 590 <= pushed <= 600  # the remaining max duration, not the 60 s idle timeout
    run.refresh_from_db()
    assert run.status == "succeeded"


# --- the job's lease: a worker that died -------------------------------------------------------


@pytest.mark.django_db
def test_the_job_holds_a_lease_on_its_command_and_ends_it_when_done(
    local_sandboxes: Any, workspace: Any
) -> None:
    run = _boot(create_run(workspace=workspace, command="echo kept"))
    execute_run_command(str(run.pk))

    [row] = Command.objects.filter(run=run, kind="job")
    assert row.lease_expires_at is not None  # taken before the command ran
    assert (row.status, row.stdout_tail) == ("exited", "kept\n")


@pytest.mark.django_db
def test_a_lost_job_keeps_the_output_of_its_last_heartbeat_as_the_log(
    fake_backend: Any, workspace: Any
) -> None:
    run = start_run(workspace=workspace, command="make all")
    row = Command.objects.create(
        run=run, workspace=workspace, kind="job", command=run.command, cwd="/home/user",
        actor="system:execute_run_command", stdout_tail="compiling 1 of 3\n",
        stderr_tail="warning: x\n", lease_expires_at=timezone.now() - timedelta(seconds=1),
    )  # fmt: skip
    SandboxRun.objects.filter(pk=run.pk).update(command_started_at=timezone.now())

    assert sandboxes_sweep().as_dict() == {"killed": 1, "failed": 0, "paused": 0, "errors": 0}

    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "worker_lost")
    assert (run.error or {}).get("code") == "worker_lost"
    row.refresh_from_db()
    assert (row.status, (row.error or {}).get("code")) == ("failed", "worker_lost")
    [log] = Artifact.objects.filter(run=run)
    assert (log.type, log.review_state) == ("log", "pending")
    text = log.file.read().decode()
    assert "compiling 1 of 3" in text and "warning: x" in text
    assert "the worker running it died" in text
    assert fake_backend.kills == [run.sandbox_id]

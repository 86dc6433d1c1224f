"""The command job (artifacts/jobs.py), through its task: a run's command runs once, on real
sandboxes, and ends the run."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from artifacts import jobs
from artifacts.tasks import execute_run_command
from sandboxes import services
from sandboxes.models import SandboxRun
from sandboxes.tasks import start_sandbox_run
from tests.factories import create_run, sandboxes_of
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

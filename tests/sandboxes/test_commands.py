"""The operator commands: thin wrappers, clear errors."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from sandboxes.models import SandboxRun
from tests.factories import make_run


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_start_run_creates_a_booting_run_and_enqueues_it(
    workspace: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as enqueued:
        out = _call(
            "start_run", str(workspace.pk), "--prompt", "hello", "--command", "true", "--as", "mia"
        )
    run = SandboxRun.objects.get()
    assert out.strip() == f"started {run.pk}"
    assert (run.status, run.command, run.created_by.username) == ("booting", "true", "mia")
    assert len(enqueued) == 1


@pytest.mark.django_db
def test_start_run_wait_gives_up_clearly_without_a_worker(workspace: Any) -> None:
    with pytest.raises(CommandError, match=r"still booting \(is a worker running"):
        _call("start_run", str(workspace.pk), "--prompt", "p", "--wait", "--wait-timeout", "0.3")


@pytest.mark.django_db
def test_start_run_refuses_bad_input(workspace: Any) -> None:
    with pytest.raises(CommandError, match="No workspace"):
        _call("start_run", "nope", "--prompt", "p")
    with pytest.raises(CommandError, match="No active user"):
        _call("start_run", str(workspace.pk), "--prompt", "p", "--as", "ghost")
    with pytest.raises(CommandError, match="max_duration_ms"):
        _call("start_run", str(workspace.pk), "--prompt", "p", "--max-duration-ms", "5")


@pytest.mark.django_db
def test_list_runs_filters(workspace: Any) -> None:
    running = make_run(workspace=workspace, status="running", thread_id="keep")
    make_run(workspace=workspace, status="succeeded")
    out = _call("list_runs", "--status", "running")
    assert str(running.pk) in out
    assert out.count("\n") == 2  # header + one run


@pytest.mark.django_db
def test_cancel_run_dry_run_changes_nothing_then_cancels(workspace: Any) -> None:
    run = make_run(workspace=workspace)
    assert "would cancel" in _call("cancel_run", str(run.pk), "--dry-run")
    run.refresh_from_db()
    assert run.status == "booting"
    assert "canceled" in _call("cancel_run", str(run.pk))
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("canceled", "canceled_by_user")


@pytest.mark.django_db
def test_sandbox_check_reports_a_working_backend(local_sandboxes: Any) -> None:
    assert _call("sandbox_check").startswith("OK  local: bubblewrap")


@pytest.mark.django_db
def test_sandbox_check_prints_every_local_limit_in_force(local_sandboxes: Any) -> None:
    out = _call("sandbox_check")
    for name in ("memory", "processes", "cpu", "disk", "seccomp"):
        assert f"in force  {name} " in out


def test_sandbox_check_says_what_is_wrong(settings: Any) -> None:
    settings.SANDBOX_BACKEND = "e2b"
    settings.E2B_API_KEY = ""
    with pytest.raises(CommandError, match="E2B_API_KEY"):
        _call("sandbox_check")


@pytest.mark.django_db
def test_create_api_key_prints_the_secret_once(workspace: Any) -> None:
    out = _call("create_api_key", str(workspace.pk), "--name", "ci", "--role", "admin")
    assert "alk_" in out and "not shown again" in out


@pytest.mark.django_db
def test_bootstrap_demo_is_idempotent(settings: Any, tmp_path: Any) -> None:
    settings.VAR_DIR = tmp_path
    first, second = _call("bootstrap_demo"), _call("bootstrap_demo")
    assert first == second
    assert "Password:" in first and "curl" in first

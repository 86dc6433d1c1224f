"""The sandboxes app's operator commands (sandboxes/management/commands/): thin wrappers over
the services, dry runs where they are destructive, clear errors."""

from __future__ import annotations

import uuid
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from sandboxes.backends import TransientBackendError, app_tags
from sandboxes.models import SandboxRun
from tests.conftest import run_command
from tests.factories import make_run, make_workspace, run_state
from tests.sandboxes.fake_backend import FakeBackend, start_run
from workspaces.models import Event, Workspace


def _call(*args: str) -> str:
    return run_command(*args)[0]


# --- start_run, list_runs, cancel_run --------------------------------------------------------


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
def test_cancel_run_is_a_dry_run_unless_told_otherwise(workspace: Any) -> None:
    run = make_run(workspace=workspace)
    out = _call("cancel_run", str(run.pk))
    assert f"would cancel {run.pk}  booting" in out
    assert "dry run: nothing changed; --for-real does it" in out
    assert _call("cancel_run", str(run.pk), "--dry-run") == out
    assert run_state(run) == ("booting", "")
    assert not Event.objects.filter(type="run.canceled").exists()

    assert f"canceled {run.pk}  canceled" in _call("cancel_run", str(run.pk), "--for-real")
    assert run_state(run) == ("canceled", "canceled_by_user")
    assert "already canceled, nothing to do" in _call("cancel_run", str(run.pk))


@pytest.mark.django_db
def test_cancel_run_says_which_runs_cannot_be_canceled(workspace: Any) -> None:
    ended = make_run(workspace=workspace, status="succeeded")
    active = make_run(workspace=workspace, status="running")
    for mode in ([], ["--for-real"]):
        out, err = StringIO(), StringIO()
        with pytest.raises(CommandError, match="1 of 2 cannot be canceled"):
            call_command("cancel_run", str(ended.pk), str(active.pk), *mode, stdout=out, stderr=err)
        assert str(ended.pk) in err.getvalue() and "succeeded" in err.getvalue()
    assert run_state(active) == ("canceled", "canceled_by_user")


def test_cancel_run_refuses_both_modes_at_once() -> None:
    with pytest.raises(CommandError, match="not allowed with argument"):
        _call("cancel_run", str(uuid.uuid4()), "--for-real", "--dry-run")


# --- a workspace by id or by name ------------------------------------------------------------


@pytest.mark.django_db
def test_list_runs_takes_a_workspace_by_id_or_exact_name(workspace: Any, outsider: Any) -> None:
    mine = make_run(workspace=workspace)
    other = make_run(workspace=make_workspace(owner=outsider, name="Demo workspace"))
    for reference in ("Demo workspace", str(other.workspace_id)):
        out = _call("list_runs", "--workspace", reference)
        assert str(other.pk) in out and str(mine.pk) not in out
    with pytest.raises(CommandError, match=r"^No workspace 'Demo' \(neither an id nor"):
        _call("list_runs", "--workspace", "Demo")
    with pytest.raises(CommandError, match="No workspace '00000000-0000-0000-0000-000000000000'"):
        _call("list_runs", "--workspace", "00000000-0000-0000-0000-000000000000")


@pytest.mark.django_db
def test_a_name_two_workspaces_share_asks_for_an_id(workspace: Any, outsider: Any) -> None:
    twin = make_workspace(owner=outsider, name=workspace.name)
    with pytest.raises(CommandError, match="2 workspaces are named 'Lab': give an id") as error:
        _call("start_run", "Lab", "--prompt", "p")
    assert str(workspace.pk) in str(error.value) and str(twin.pk) in str(error.value)
    assert not SandboxRun.objects.exists()


@pytest.mark.django_db
def test_start_run_takes_the_workspace_by_name(workspace: Any) -> None:
    out = _call("start_run", "Lab", "--prompt", "hello")
    assert out.strip() == f"started {SandboxRun.objects.get(workspace=workspace).pk}"


# --- start_run --wait against a worker -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_start_run_wait_prints_the_jobs_output(workspace: Any, task_runner: Any) -> None:
    job = "echo the answer is 42; echo careful >&2"
    out, err = run_command("start_run", "Lab", "--prompt", "p", "--command", job, "--wait")
    run = SandboxRun.objects.get()
    assert out.splitlines() == [f"started {run.pk}", f"{run.pk}  succeeded  completed  exit 0",
                                "the answer is 42"]  # fmt: skip
    assert err == "careful\n"


@pytest.mark.django_db(transaction=True)
def test_start_run_wait_prints_a_failed_jobs_output_then_fails(
    workspace: Any, task_runner: Any
) -> None:
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="run failed"):
        call_command(
            "start_run", str(workspace.pk), "--prompt", "p", "--command",
            "echo no such file >&2; exit 3", "--wait", stdout=out, stderr=err,
        )  # fmt: skip
    assert "failed  command_failed  exit 3" in out.getvalue()
    assert err.getvalue() == "no such file\n"


# --- sandbox_check ---------------------------------------------------------------------------


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


# --- sweep_sandboxes -------------------------------------------------------------------------


@pytest.mark.django_db
def test_sweep_sandboxes_is_a_dry_run_unless_told_otherwise(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    clock(61)

    out, _ = run_command("sweep_sandboxes")
    assert f"would cancel and kill idle_timeout run={run.pk}" in out
    assert "--for-real" in out
    assert run_state(run) == ("running", "")

    out, _ = run_command("sweep_sandboxes", "--for-real")
    assert f"killed idle_timeout run={run.pk} sandbox={run.sandbox_id}" in out
    assert "killed 1, failed 0, paused 0, errors 0" in out
    assert run_state(run) == ("canceled", "idle_timeout")


@pytest.mark.django_db
def test_sweep_sandboxes_fails_when_a_kill_failed(
    clock: Any, workspace: Workspace, fake_backend: FakeBackend
) -> None:
    run = start_run(workspace=workspace, idle_timeout_ms=60_000)
    fake_backend.fail_next_kill(run.sandbox_id, TransientBackendError("E2B is busy"))
    clock(61)
    with pytest.raises(CommandError, match="1 errors"):
        run_command("sweep_sandboxes", "--for-real")


# --- reconcile_sandboxes ---------------------------------------------------------------------


@pytest.mark.django_db
def test_reconcile_sandboxes_is_a_dry_run_unless_told_otherwise(
    workspace: Workspace, fake_backend: FakeBackend
) -> None:
    orphan = fake_backend.add({**app_tags(), "run_id": str(uuid.uuid4()), "workspace_id": "w"})
    lost = start_run(workspace=workspace)
    fake_backend.kill(lost.sandbox_id)

    out, _ = run_command("reconcile_sandboxes")
    assert "would kill unknown run" in out
    assert f"would fail sandbox_lost run={lost.pk}" in out
    assert orphan.sandbox_id in fake_backend.live_ids()
    lost.refresh_from_db()
    assert lost.status == "running"

    out, _ = run_command("reconcile_sandboxes", "--for-real")
    assert "killed 1 orphans, failed 1 lost runs, errors 0" in out
    assert fake_backend.live_ids() == set()
    lost.refresh_from_db()
    assert (lost.status, lost.end_reason) == ("failed", "sandbox_lost")

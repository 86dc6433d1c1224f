"""sandboxes/background.py: background commands on real sandboxes of both backends — output
read by offset while they run, kill (everything they started with them), the end of their run
kills them, and the periodic check notices ends and timeouts. Each is a row of the command
history and two events on the trail; env never stored."""

from __future__ import annotations

import time
from typing import Any

import pytest

from config.exceptions import Conflict, InvalidInput
from sandboxes import background, execution, services
from sandboxes.models import Command, SandboxRun
from tests.conftest import live_backends
from tests.factories import make_run
from tests.sandboxes.test_api import _processes_running, _wait_until
from workspaces.access import Actor
from workspaces.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=live_backends())
def run(request: Any, workspace: Any) -> SandboxRun:
    backend = request.getfixturevalue(request.param)
    info = backend.create(template="base", metadata={"app": "airlock"}, envs={}, timeout_s=600)
    return make_run(workspace=workspace, status="running", sandbox_id=info.sandbox_id)


@pytest.fixture
def olivia(owner: Any) -> Actor:
    return Actor(user=owner)


def _read_until(run: SandboxRun, command: Command, offset: int, expected: str) -> Any:
    """Read from `offset` until the output holds `expected` (a bounded wait)."""
    deadline = time.monotonic() + 20
    while True:
        read = background.command_read(run=run, command=command, stdout_offset=offset)
        if expected in read.stdout or time.monotonic() > deadline:
            return read
        time.sleep(0.05)


def test_output_is_read_by_offset_while_the_command_runs(run: SandboxRun, olivia: Actor) -> None:
    script = "printf 'a\\n'; while [ ! -e go ]; do sleep 0.05; done; printf 'b\\n'; sleep 600"
    command = background.command_start_background(run=run, actor=olivia, command=script)
    assert (command.status, command.kind) == ("running", "background")

    first = _read_until(run, command, 0, "a\n")
    assert (first.stdout, first.stdout_offset, first.stdout_next) == ("a\n", 0, 2)
    execution.run_exec(run=run, actor=olivia, command="touch go")
    second = _read_until(run, command, first.stdout_next, "b\n")
    assert (second.stdout, second.stdout_offset, second.stdout_next) == ("b\n", 2, 4)

    command.refresh_from_db()  # each read refreshed the row's tails; it still runs
    assert (command.status, command.stdout_tail, command.stdout_bytes) == ("running", "a\nb\n", 4)
    everything = background.command_read(run=run, command=command)
    assert everything.stdout == "a\nb\n"


def test_kill_ends_the_command_and_everything_it_started(run: SandboxRun, olivia: Actor) -> None:
    marker = "876.5432"
    command = background.command_start_background(
        run=run, actor=olivia, command=f"echo up; sleep {marker} & sleep {marker}"
    )
    _read_until(run, command, 0, "up")
    assert _processes_running(marker)
    killed = background.command_kill(run=run, command=command, actor=olivia)
    assert (killed.status, killed.exit_code, killed.stdout_tail) == ("killed", None, "up\n")
    assert _wait_until(lambda: not _processes_running(marker)), _processes_running(marker)
    finished = Event.objects.get(type="command.finished", subject_id=str(command.pk))
    assert (finished.actor, finished.data["status"]) == ("user:olivia", "killed")
    # Killing it again answers it as it is.
    assert background.command_kill(run=run, command=killed, actor=olivia).status == "killed"


def test_the_runs_end_kills_its_background_commands(run: SandboxRun, olivia: Actor) -> None:
    marker = "765.4321"
    command = background.command_start_background(
        run=run, actor=olivia, command=f"echo started; sleep {marker}"
    )
    _read_until(run, command, 0, "started")
    services.run_cancel(run=run, actor=olivia)
    command.refresh_from_db()
    assert (command.status, (command.error or {})["code"]) == ("killed", "run_ended")
    assert command.stdout_tail == "started\n"
    assert _wait_until(lambda: not _processes_running(marker)), _processes_running(marker)
    finished = Event.objects.get(type="command.finished", subject_id=str(command.pk))
    assert (finished.actor, finished.data["status"]) == ("system:run_end", "killed")


def test_the_check_notices_an_exit_and_a_timeout(run: SandboxRun, olivia: Actor) -> None:
    exits = background.command_start_background(
        run=run, actor=olivia, command="echo done; echo oops >&2; exit 7"
    )
    sleeps = background.command_start_background(
        run=run, actor=olivia, command="sleep 600", timeout_s=0.5
    )
    assert _wait_until(
        lambda: (
            background.background_commands_check().finished == 2
            or Command.objects.filter(status="running").count() == 0
        )
    )
    exits.refresh_from_db()
    sleeps.refresh_from_db()
    assert (exits.status, exits.exit_code, exits.stdout_tail, exits.stderr_tail) == (
        "exited", 7, "done\n", "oops\n",
    )  # fmt: skip
    assert (sleeps.status, sleeps.timed_out, (sleeps.error or {})["code"]) == (
        "timed_out", True, "command_timeout",
    )  # fmt: skip


def test_the_check_ends_commands_of_runs_that_ended_without_them(
    run: SandboxRun, olivia: Actor
) -> None:
    """The sweep and reconcile kill the sandbox first: the check records the end."""
    from sandboxes.backends import get_backend

    command = background.command_start_background(run=run, actor=olivia, command="sleep 600")
    get_backend().kill(run.sandbox_id)
    services.run_transition(run.pk, lambda r: r.cancel(by=Actor.system("sweep")))
    report = background.background_commands_check()
    assert (report.checked, report.finished, report.errors) == (1, 1, 0)
    command.refresh_from_db()
    assert (command.status, (command.error or {})["code"]) == ("killed", "run_ended")


def test_env_is_never_stored_nor_on_the_trail(run: SandboxRun, olivia: Actor) -> None:
    command = background.command_start_background(
        run=run, actor=olivia, command='echo "$TOKEN" | wc -c', env={"TOKEN": "hunter2"}
    )
    _read_until(run, command, 0, "8")
    command.refresh_from_db()
    assert command.env_names == ["TOKEN"]
    row = Command.objects.filter(pk=command.pk).values().get()
    assert "hunter2" not in str(row)
    trail = Event.objects.filter(subject_id=str(command.pk)).values_list("data", flat=True)
    assert trail and "hunter2" not in str(list(trail))


def test_a_background_command_needs_a_running_run_and_a_timeout_within_it(
    workspace: Any, olivia: Actor
) -> None:
    ended = make_run(workspace=workspace, status="succeeded")
    with pytest.raises(Conflict):
        background.command_start_background(run=ended, actor=olivia, command="true")
    running = make_run(workspace=workspace, status="running", max_duration_ms=60_000)
    with pytest.raises(InvalidInput) as raised:
        background.command_start_background(
            run=running, actor=olivia, command="true", timeout_s=3600
        )
    assert raised.value.code == "timeout_too_long"
    assert not Command.objects.exists()


def test_foreground_commands_cannot_be_killed_and_read_from_their_tails(
    run: SandboxRun, olivia: Actor
) -> None:
    execution.run_exec(run=run, actor=olivia, command="printf hello")
    command = Command.objects.get(run=run)
    with pytest.raises(Conflict):
        background.command_kill(run=run, command=command, actor=olivia)
    read = background.command_read(run=run, command=command, stdout_offset=2)
    assert (read.stdout, read.stdout_offset, read.stdout_next) == ("llo", 2, 5)


def test_killing_a_command_whose_run_ended_records_the_runs_end(
    run: SandboxRun, olivia: Actor
) -> None:
    from sandboxes.backends import get_backend

    command = background.command_start_background(run=run, actor=olivia, command="sleep 600")
    get_backend().kill(run.sandbox_id)
    ended = services.run_transition(run.pk, lambda r: r.cancel(by=Actor.system("sweep")))
    killed = background.command_kill(run=ended, command=command, actor=olivia)
    assert (killed.status, (killed.error or {})["code"]) == ("killed", "run_ended")


# --- a paused run's background commands (SPEC §15) ----------------------------------------


def test_a_paused_runs_commands_are_read_from_their_tails_and_left_running(
    workspace: Any, olivia: Actor, fake_backend: Any
) -> None:
    from tests.sandboxes.fake_backend import start_run

    run = start_run(workspace=workspace)
    command = background.command_start_background(run=run, actor=olivia, command="sleep 60")
    paused = services.run_pause(run=run, actor=olivia)

    read = background.command_read(run=paused, command=command)
    report = background.background_commands_check()

    assert (read.stdout, read.stdout_next) == ("", 0)
    assert report.as_dict() == {"checked": 1, "finished": 0, "errors": 0}
    command.refresh_from_db()
    assert command.status == "running"  # frozen with its sandbox, not ended
    assert SandboxRun.objects.get(pk=run.pk).status == "paused"  # reading is not activity

    killed = background.command_kill(run=paused, command=command, actor=olivia)

    assert killed.status == "killed"
    assert SandboxRun.objects.get(pk=run.pk).status == "running"  # killing it resumed the run

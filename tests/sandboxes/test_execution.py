"""sandboxes/execution.py: what runs inside a running run's sandbox. Exec writes a Command row
and command.started/command.finished on the trail, times out as a result rather than an error,
and fails the run as sandbox_lost when its sandbox vanished; files go in (spooled, refused whole
past the limit, on the trail) and out; and `as_api_error` maps every backend error. On the
in-memory backend, and on real local sandboxes for what only a real command shows."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from config.exceptions import (
    AirlockError,
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    TooLarge,
)
from sandboxes import background, execution, services
from sandboxes.backends import CommandResult, CommandTimeout, FileEntry, TransientBackendError
from sandboxes.backends import base as backend_base
from sandboxes.models import COMMAND_TAIL_BYTES, Command, CommandKind, CommandStatus, SandboxRun
from tests.factories import make_run, transitions
from tests.sandboxes.fake_backend import FakeBackend, start_run
from workspaces.access import Actor
from workspaces.models import Event, Workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(workspace: Workspace, fake_backend: FakeBackend) -> SandboxRun:
    """A running run on the in-memory backend, started by the owner."""
    return start_run(workspace=workspace, thread_id="thread-x")


@pytest.fixture
def mia(member: Any) -> Actor:
    return Actor(user=member)


def _trail(run: SandboxRun, type: str) -> list[Event]:
    return list(Event.objects.filter(run_id=run.pk, type=type).order_by("id"))


# --- as_api_error ----------------------------------------------------------------------------

# Every backend error, as callers see it: (error, status, code).
MAPPED: dict[type[backend_base.BackendError], tuple[type[AirlockError], int, str]] = {
    backend_base.BackendError: (InvalidInput, 400, "backend_error"),
    backend_base.TransientBackendError: (ServiceUnavailable, 503, "backend_unavailable"),
    backend_base.SandboxNotFound: (Conflict, 409, "sandbox_lost"),
    backend_base.SandboxFileNotFound: (NotFound, 404, "file_not_found"),
    backend_base.UnsupportedOption: (InvalidInput, 400, "unsupported_by_backend"),
    backend_base.SandboxPaused: (Conflict, 409, "run_paused"),
    backend_base.CommandCanceled: (InvalidInput, 400, "command_canceled"),
    backend_base.CommandNotFound: (InvalidInput, 400, "command_not_found"),
    backend_base.CommandTimeout: (InvalidInput, 400, "command_timeout"),
}


def _every_backend_error() -> set[type[backend_base.BackendError]]:
    found, todo = set(), [backend_base.BackendError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return {cls for cls in found if cls.__module__ == backend_base.__name__}


def test_the_mapping_covers_every_backend_error() -> None:
    assert set(MAPPED) == _every_backend_error()


@pytest.mark.parametrize("error_class", MAPPED, ids=lambda cls: cls.__name__)
def test_a_backend_error_is_mapped_onto_an_api_error(
    error_class: type[backend_base.BackendError],
) -> None:
    mapped = execution.as_api_error(error_class("the backend says no"))
    kind, status, code = MAPPED[error_class]
    assert type(mapped) is kind
    assert (mapped.status_code, mapped.code) == (status, code)


def test_a_permanent_error_keeps_the_backends_message() -> None:
    mapped = execution.as_api_error(backend_base.BackendError("no such template 'x'"))
    assert mapped.detail == "no such template 'x'"


# --- exec: the command history and the trail -------------------------------------------------


def test_exec_runs_the_command_and_keeps_it_in_the_history(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    fake_backend.command_results["make report"] = CommandResult(3, "made\n", "warned\n", False, 42)

    result = execution.run_exec(
        run=run, actor=mia, command="make report", cwd="/home/user/src/", env={"TOKEN": "hunter2"}
    )

    assert (result.exit_code, result.stdout, result.stderr) == (3, "made\n", "warned\n")
    assert (result.timed_out, result.truncated, result.duration_ms) == (False, False, 42)
    assert fake_backend.commands == [(run.sandbox_id, "make report")]
    [row] = Command.objects.filter(run=run)
    assert row.pk == result.command_id
    assert (row.kind, row.command, row.cwd, row.actor) == (
        "exec", "make report", "/home/user/src", "user:mia",
    )  # fmt: skip
    assert (row.status, row.exit_code, row.duration_ms) == ("exited", 3, 42)
    assert (row.stdout_tail, row.stderr_tail, row.env_names) == ("made\n", "warned\n", ["TOKEN"])
    assert row.ended_at is not None


def test_exec_records_a_start_and_a_finish_without_env_values(run: SandboxRun, mia: Actor) -> None:
    execution.run_exec(run=run, actor=mia, command="true", env={"TOKEN": "hunter2"})

    [started] = _trail(run, "command.started")
    [finished] = _trail(run, "command.finished")
    row = Command.objects.get(run=run)
    for event in (started, finished):
        assert (event.actor, event.subject_type, event.subject_id) == (
            "user:mia", "command", str(row.pk),
        )  # fmt: skip
        assert (event.run_id, event.thread_id) == (run.pk, "thread-x")
    assert started.data == {
        "kind": "exec", "command": "true", "cwd": "/home/user", "env_names": ["TOKEN"],
    }  # fmt: skip
    assert finished.data == {
        "kind": "exec", "status": "exited", "exit_code": 0, "duration_ms": 0,
        "timed_out": False, "truncated": False,
    }  # fmt: skip
    assert "hunter2" not in str(started.data) + str(finished.data)
    assert started.pk < finished.pk


def test_exec_counts_as_activity_on_the_run(run: SandboxRun, mia: Actor) -> None:
    long_ago = timezone.now() - timedelta(minutes=10)
    SandboxRun.objects.filter(pk=run.pk).update(last_activity_at=long_ago)
    run.refresh_from_db()
    execution.run_exec(run=run, actor=mia, command="true")
    run.refresh_from_db()
    assert run.last_activity_at > long_ago
    assert run.expires_at == run.last_activity_at + timedelta(milliseconds=run.idle_timeout_ms)


def test_a_command_that_timed_out_is_a_result_not_an_error(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    fake_backend.command_results["sleep 30"] = CommandTimeout(stdout="started\n", stderr="")

    result = execution.run_exec(run=run, actor=mia, command="sleep 30", timeout_s=1)

    assert (result.timed_out, result.exit_code, result.stdout) == (True, None, "started\n")
    row = Command.objects.get(run=run)
    assert (row.status, row.timed_out, row.exit_code, row.stdout_tail) == (
        "timed_out", True, None, "started\n",
    )  # fmt: skip
    [finished] = _trail(run, "command.finished")
    assert (finished.data["status"], finished.data["timed_out"]) == ("timed_out", True)
    run.refresh_from_db()
    assert run.status == "running"


def test_exec_on_a_sandbox_gone_at_the_runs_deadline_fails_the_run_as_max_duration(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    fake_backend.kill(run.sandbox_id)  # the sandbox's own deadline, which is the run's
    SandboxRun.objects.filter(pk=run.pk).update(
        created_at=timezone.now() - timedelta(milliseconds=run.max_duration_ms + 10)
    )
    run.refresh_from_db()

    with pytest.raises(Conflict) as raised:
        execution.run_exec(run=run, actor=mia, command="true")

    assert raised.value.code == "max_duration"
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "max_duration")
    assert run.error is not None and run.error["code"] == "max_duration"


@pytest.mark.bwrap
def test_exec_as_a_local_sandbox_expires_with_its_run_ends_it_max_duration(
    local_sandboxes: Any, workspace: Workspace, mia: Actor
) -> None:
    import time

    run = start_run(workspace=workspace, max_duration_ms=2000)
    execution.run_exec(run=run, actor=mia, command="true")  # busy until the end
    time.sleep(max(0.0, run.remaining_s()) + 1.2)  # the sandbox's own timeout passes

    with pytest.raises(Conflict) as raised:
        execution.run_exec(run=run, actor=mia, command="true")

    assert raised.value.code == "max_duration"
    assert (run.__class__.objects.get(pk=run.pk).end_reason) == "max_duration"


def test_exec_on_a_vanished_sandbox_fails_the_run_as_sandbox_lost(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    fake_backend.kill(run.sandbox_id)  # the provider ended it

    with pytest.raises(Conflict) as raised:
        execution.run_exec(run=run, actor=mia, command="true")

    assert raised.value.code == "sandbox_lost"
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "sandbox_lost")
    assert run.error is not None and run.error["code"] == "sandbox_not_found"
    assert [e.actor for e in transitions(run.pk)][-1] == "system:sandbox_lost"
    row = Command.objects.get(run=run)
    assert (row.status, row.error) == (
        "failed",
        {"code": "sandbox_lost", "message": "The sandbox is gone; the run has failed."},
    )


def test_a_backend_outage_fails_the_command_not_the_run(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    fake_backend.fail_next("run", TransientBackendError("E2B is busy (503)"))

    with pytest.raises(ServiceUnavailable):
        execution.run_exec(run=run, actor=mia, command="true")

    run.refresh_from_db()
    assert run.status == "running"
    row = Command.objects.get(run=run)
    assert (row.status, row.error["code"] if row.error else None) == (
        "failed",
        "backend_unavailable",
    )
    [finished] = _trail(run, "command.finished")
    assert finished.data["status"] == "failed"


@pytest.mark.parametrize("status", ["booting", "succeeded", "failed", "canceled"])
def test_exec_needs_a_running_run(workspace: Workspace, mia: Actor, status: str) -> None:
    run = make_run(workspace=workspace, status=status)
    with pytest.raises(Conflict) as raised:
        execution.run_exec(run=run, actor=mia, command="true")
    assert raised.value.code == "invalid_state"
    assert not Command.objects.exists()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        pytest.param({"timeout_s": 10**7}, "timeout_too_long", id="past-the-max-duration"),
        pytest.param({"cwd": "../etc"}, "invalid_path", id="cwd"),
        pytest.param({"env": {"1BAD": "x"}}, "invalid", id="env"),
    ],
)
def test_bad_exec_input_is_refused_before_anything_runs(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor, fields: dict[str, Any], code: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        execution.run_exec(run=run, actor=mia, command="true", **fields)
    assert raised.value.code == code
    assert fake_backend.commands == []
    assert not Command.objects.exists()


def test_the_history_keeps_the_last_bytes_of_long_output(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    long = "x" * COMMAND_TAIL_BYTES + "the end\n"
    fake_backend.command_results["chatty"] = CommandResult(0, long, "", False, 1)

    result = execution.run_exec(run=run, actor=mia, command="chatty")

    assert result.stdout == long  # the caller gets all of it
    row = Command.objects.get(run=run)
    assert row.stdout_tail.endswith("the end\n")
    assert len(row.stdout_tail.encode()) == COMMAND_TAIL_BYTES
    assert row.truncated
    assert _trail(run, "command.finished")[0].data["truncated"] is True


def test_a_tail_is_cut_on_a_character_boundary_and_holds_no_nul() -> None:
    assert execution.tail("short") == ("short", False)
    assert execution.tail("a\x00b") == ("a\ufffdb", False)
    text, cut = execution.tail("é" * 10, limit=5)  # 2 bytes each: the odd byte is dropped
    assert (text, cut) == ("éé", True)


def test_a_command_finishes_once(run: SandboxRun, mia: Actor) -> None:
    row = execution.command_start(
        run=run, actor=mia, kind=CommandKind.JOB, command="job", cwd="/home/user"
    )
    execution.command_finish(command=row, actor=mia, status=CommandStatus.EXITED, exit_code=0)
    execution.command_finish(
        command=Command.objects.get(pk=row.pk),
        actor=mia,
        status=CommandStatus.KILLED,
    )
    row.refresh_from_db()
    assert (row.status, row.exit_code) == ("exited", 0)
    assert len(_trail(run, "command.finished")) == 1


# --- exec on real local sandboxes ------------------------------------------------------------


@pytest.mark.bwrap
def test_exec_runs_in_the_sandbox_with_its_cwd_and_env(sandbox_run: SandboxRun, mia: Actor) -> None:
    execution.run_exec(run=sandbox_run, actor=mia, command="mkdir -p work")
    result = execution.run_exec(
        run=sandbox_run,
        actor=mia,
        command='echo "$GREETING from $(pwd)"; echo err >&2; exit 4',
        cwd="/home/user/work",
        env={"GREETING": "hello"},
        timeout_s=10,
    )
    assert (result.exit_code, result.stdout, result.stderr) == (
        4,
        "hello from /home/user/work\n",
        "err\n",
    )


@pytest.mark.bwrap
def test_exec_output_is_bounded_and_flagged(
    sandbox_run: SandboxRun, mia: Actor, settings: Any
) -> None:
    settings.EXEC_MAX_OUTPUT_BYTES = 1024
    result = execution.run_exec(
        run=sandbox_run, actor=mia, command="head -c 100000 /dev/zero | tr '\\\\0' a"
    )
    assert result.truncated is True
    assert len(result.stdout) == 1024
    assert Command.objects.get(run=sandbox_run).truncated


@pytest.mark.bwrap
def test_exec_that_times_out_says_so(sandbox_run: SandboxRun, mia: Actor) -> None:
    result = execution.run_exec(
        run=sandbox_run, actor=mia, command="echo started; sleep 30", timeout_s=1
    )
    assert (result.timed_out, result.exit_code, result.stdout) == (True, None, "started\n")
    assert Command.objects.get(run=sandbox_run).status == "timed_out"


# --- files -----------------------------------------------------------------------------------


def test_an_upload_lands_in_the_sandbox_and_on_the_trail(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    size = execution.run_upload_file(
        run=run, actor=mia, path="/home/user/in//data.bin", stream=io.BytesIO(b"\x00\x01payload")
    )
    assert size == 9
    assert fake_backend.files[(run.sandbox_id, "/home/user/in/data.bin")] == b"\x00\x01payload"
    [event] = _trail(run, "file.uploaded")
    assert (event.actor, event.data) == ("user:mia", {"path": "/home/user/in/data.bin", "size": 9})
    assert (event.subject_type, event.subject_id) == ("run", str(run.pk))


def test_an_upload_over_the_limit_leaves_nothing_in_the_sandbox(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor, settings: Any
) -> None:
    settings.UPLOAD_MAX_BYTES = 1000
    with pytest.raises(TooLarge):
        execution.run_upload_file(
            run=run, actor=mia, path="/home/user/big", stream=io.BytesIO(b"x" * 1001)
        )
    assert fake_backend.files == {}
    assert _trail(run, "file.uploaded") == []


def test_an_upload_of_declared_length_goes_straight_to_the_sandbox(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    body = io.BytesIO(b"z" * 3_000_000 + b"trailing bytes past the declared length")
    size = execution.run_upload_file(
        run=run, actor=mia, path="/home/user/big.bin", stream=body, size=3_000_000
    )
    assert size == 3_000_000
    assert fake_backend.files[(run.sandbox_id, "/home/user/big.bin")] == b"z" * 3_000_000
    [event] = _trail(run, "file.uploaded")
    assert event.data == {"path": "/home/user/big.bin", "size": 3_000_000}


def test_an_upload_declared_over_the_limit_is_refused_before_it_is_read(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor, settings: Any
) -> None:
    settings.UPLOAD_MAX_BYTES = 1000

    class Unread(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            raise AssertionError("the body was read")

    with pytest.raises(TooLarge):
        execution.run_upload_file(
            run=run, actor=mia, path="/home/user/big", stream=Unread(), size=1001
        )
    assert fake_backend.files == {}


def test_an_upload_shorter_than_declared_leaves_nothing(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    with pytest.raises(InvalidInput) as raised:
        execution.run_upload_file(
            run=run, actor=mia, path="/home/user/cut", stream=io.BytesIO(b"x" * 10), size=20
        )
    assert raised.value.code == "incomplete_body"
    assert fake_backend.files == {}
    assert _trail(run, "file.uploaded") == []


def test_a_download_streams_the_file_and_a_missing_one_is_not_found(
    run: SandboxRun, fake_backend: FakeBackend
) -> None:
    fake_backend.files[(run.sandbox_id, "/home/user/out.txt")] = b"a" * 100_000
    chunks = list(execution.run_download_file(run=run, path="/home/user/out.txt", chunk_size=4096))
    assert b"".join(chunks) == b"a" * 100_000
    assert max(len(chunk) for chunk in chunks) == 4096

    with pytest.raises(NotFound) as raised:
        execution.run_download_file(run=run, path="/home/user/missing.txt")
    assert raised.value.code == "file_not_found"
    run.refresh_from_db()
    assert run.status == "running"  # a missing file is not a lost sandbox


def test_a_listing_shows_a_directorys_entries(run: SandboxRun, fake_backend: FakeBackend) -> None:
    fake_backend.files[(run.sandbox_id, "/home/user/data/a.csv")] = b"1,2\n"
    fake_backend.files[(run.sandbox_id, "/home/user/elsewhere.txt")] = b""
    assert execution.run_list_files(run=run, path="/home/user/data/") == [
        FileEntry(name="a.csv", path="/home/user/data/a.csv", type="file", size=4)
    ]


def test_file_calls_on_a_vanished_sandbox_fail_the_run(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor
) -> None:
    fake_backend.kill(run.sandbox_id)
    with pytest.raises(Conflict) as raised:
        execution.run_list_files(run=run, path="/home/user")
    assert raised.value.code == "sandbox_lost"
    run.refresh_from_db()
    assert (run.status, run.end_reason) == ("failed", "sandbox_lost")


@pytest.mark.parametrize(
    "call",
    [
        lambda run, actor: execution.run_upload_file(
            run=run, actor=actor, path="/home/user/a", stream=io.BytesIO(b"a")
        ),
        lambda run, actor: execution.run_download_file(run=run, path="/home/user/a"),
        lambda run, actor: execution.run_list_files(run=run, path="/home/user"),
    ],
    ids=["upload", "download", "list"],
)
def test_file_calls_need_a_running_run(workspace: Workspace, mia: Actor, call: Any) -> None:
    run = make_run(workspace=workspace, status="succeeded")
    with pytest.raises(Conflict) as raised:
        call(run, mia)
    assert raised.value.code == "invalid_state"


@pytest.mark.parametrize("path", ["relative", "/home/user/../../etc/shadow", "/etc", ""])
def test_file_calls_refuse_paths_outside_the_home(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor, path: str
) -> None:
    for call in (
        lambda: execution.run_upload_file(run=run, actor=mia, path=path, stream=io.BytesIO(b"")),
        lambda: execution.run_download_file(run=run, path=path),
        lambda: execution.run_list_files(run=run, path=path),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert fake_backend.files == {}


# --- spool_upload ----------------------------------------------------------------------------


def test_a_spooled_upload_reads_back_whole_up_to_the_limit() -> None:
    spool = execution.spool_upload(io.BytesIO(b"y" * 1000), limit=1000)
    assert spool.read() == b"y" * 1000


def test_a_spooled_upload_one_byte_over_the_limit_is_too_large() -> None:
    with pytest.raises(TooLarge) as raised:
        execution.spool_upload(io.BytesIO(b"y" * 1001), limit=1000)
    assert raised.value.status_code == 413


def test_an_upload_bigger_than_the_memory_spool_reads_back_the_same() -> None:
    body = bytes(range(256)) * (execution.SPOOL_IN_MEMORY_BYTES // 256 + 10)
    spool = execution.spool_upload(io.BytesIO(body), limit=len(body))
    try:
        assert spool.read() == body
    finally:
        spool.close()


# --- streamed exec ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the stream writes the history from its own thread
def test_a_streamed_exec_yields_the_output_then_the_result_and_forwards_at_most_the_limit(
    run: SandboxRun, fake_backend: FakeBackend, mia: Actor, settings: Any
) -> None:
    import asyncio

    settings.EXEC_MAX_OUTPUT_BYTES = 1024
    fake_backend.command_results["chatty"] = CommandResult(0, "é" * 1000, "oops", True, 3)
    prepared = execution.exec_prepare(run=run, actor=mia, command="chatty")

    async def collect() -> list[Any]:
        return [item async for item in execution.exec_stream(prepared)]

    *chunks, result = asyncio.run(collect())
    stdout = "".join(c.text for c in chunks if c.stream == "stdout")
    assert stdout == "é" * 512  # 1,024 bytes of two-byte characters, never half of one
    assert [c.text for c in chunks if c.stream == "stderr"] == ["oops"]
    assert isinstance(result, execution.ExecResult) and result.truncated
    assert Command.objects.get(pk=result.command_id).status == "exited"


# --- a paused run is resumed within the call (SPEC §15) ------------------------------------

CALLS_THAT_RESUME = [
    pytest.param(
        lambda run, actor: execution.run_exec(run=run, actor=actor, command="echo hi"), id="exec"
    ),
    pytest.param(
        lambda run, actor: execution.run_upload_file(
            run=run, actor=actor, path="/home/user/f", stream=io.BytesIO(b"x")
        ),
        id="upload",
    ),
    pytest.param(
        lambda run, actor: list(
            execution.run_download_file(run=run, path="/home/user/f", actor=actor)
        ),
        id="download",
    ),
    pytest.param(
        lambda run, actor: execution.run_list_files(run=run, path="/home/user", actor=actor),
        id="list",
    ),
    pytest.param(
        lambda run, actor: background.command_start_background(
            run=run, actor=actor, command="sleep 5"
        ),
        id="background command",
    ),
]


@pytest.mark.parametrize("call", CALLS_THAT_RESUME)
def test_a_call_on_a_paused_run_resumes_it_within_the_call(
    run: SandboxRun, mia: Actor, fake_backend: FakeBackend, call: Any
) -> None:
    fake_backend.write_file(run.sandbox_id, "/home/user/f", b"x")
    paused = services.run_pause(run=run, actor=Actor(user=run.created_by))

    call(paused, mia)

    run.refresh_from_db()
    assert (run.status, run.paused_at) == ("running", None)
    assert run.sandbox_id not in fake_backend.paused
    [resumed] = _trail(run, "run.resumed")
    assert resumed.actor == str(mia)


def test_a_call_refused_for_its_input_does_not_resume_the_run(
    run: SandboxRun, mia: Actor, fake_backend: FakeBackend
) -> None:
    paused = services.run_pause(run=run, actor=mia)
    with pytest.raises(InvalidInput):
        execution.run_exec(run=paused, actor=mia, command="true", cwd="/etc")
    with pytest.raises(InvalidInput):
        execution.run_list_files(run=paused, path="/etc", actor=mia)
    assert SandboxRun.objects.get(pk=run.pk).status == "paused"
    assert run.sandbox_id in fake_backend.paused


def test_a_sandbox_paused_under_a_call_is_a_409_that_says_to_call_again(
    run: SandboxRun, mia: Actor, fake_backend: FakeBackend
) -> None:
    fake_backend.pause(run.sandbox_id)  # the sweep, as the call comes in
    with pytest.raises(Conflict, match="call again") as excinfo:
        execution.run_exec(run=run, actor=mia, command="echo hi")
    assert excinfo.value.code == "run_paused"
    assert SandboxRun.objects.get(pk=run.pk).status == "running"  # not failed, not lost
    assert run.sandbox_id not in fake_backend.paused  # resumed, as the call was activity
    assert execution.run_exec(run=run, actor=mia, command="echo hi").exit_code == 0


def test_a_sandbox_paused_under_a_call_of_a_run_recorded_paused_is_left_to_the_next_call(
    run: SandboxRun, mia: Actor, fake_backend: FakeBackend
) -> None:
    fake_backend.pause(run.sandbox_id)
    SandboxRun.objects.filter(pk=run.pk).update(status="paused", paused_at=timezone.now())
    with pytest.raises(Conflict, match="call again"):
        execution.run_exec(run=run, actor=mia, command="echo hi")  # its copy said running
    assert run.sandbox_id in fake_backend.paused  # not running unbilled behind a paused run
    fresh = SandboxRun.objects.get(pk=run.pk)
    assert execution.run_exec(run=fresh, actor=mia, command="echo hi").exit_code == 0
    assert SandboxRun.objects.get(pk=run.pk).status == "running"

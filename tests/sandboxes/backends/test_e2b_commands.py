"""The e2b backend's commands against the E2B double, which behaves like envd: a stream ends
when the pipes close and envd signals one process, so the backend must make a command's own
process decide the call and its timeout or kill end everything it started (SPEC §14/§15)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sandboxes.backends.base import (
    CommandCanceled,
    CommandNotFound,
    CommandTimeout,
    SandboxNotFound,
)
from sandboxes.backends.e2b import E2BBackend
from tests.fakes.e2b import FakeE2BServer
from tests.sandboxes.backends.test_e2b import (
    TAGS,
    backend_for,
    closed_port_url,
    fake,
    pid_is_running,
    wait_until,
)


@pytest.fixture
def sandbox_id(e2b_backend: E2BBackend) -> str:
    return e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=120).sandbox_id


def home(server: FakeE2BServer, sandbox_id: str) -> Path:
    return fake(server, sandbox_id).home


def pid_in(path: Path) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "")
    return int(path.read_text().split()[0])


# -- foreground: the command's own process decides ---------------------------------------------


def test_a_background_child_does_not_hold_the_call_and_lives_until_the_sandbox_ends(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    result = e2b_backend.run(sandbox_id, "sleep 30 & echo $! > child; echo started", timeout_s=10)

    assert (result.exit_code, result.stdout) == (0, "started\n")
    child = pid_in(home(e2b_server, sandbox_id) / "child")
    assert pid_is_running(child)  # left in the background, as on E2B
    e2b_backend.kill(sandbox_id)
    assert wait_until(lambda: not pid_is_running(child))


def test_a_background_childs_later_output_neither_blocks_nor_kills_it(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    result = e2b_backend.run(
        sandbox_id,
        "(while [ ! -e go ]; do sleep 0.02; done; head -c 1000000 /dev/zero; echo err >&2;"
        " touch done) & echo started",
        timeout_s=10,
    )
    root = home(e2b_server, sandbox_id)
    (root / "go").touch()

    assert result.stdout == "started\n"
    assert wait_until(lambda: (root / "done").exists())  # wrote a megabyte after the call


def test_a_background_child_can_be_seen_and_killed_by_a_later_command(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    e2b_backend.run(sandbox_id, "sleep 30 & echo $! > child", timeout_s=10)

    seen = e2b_backend.run(sandbox_id, 'kill -0 "$(cat child)" && echo alive', timeout_s=10)
    e2b_backend.run(sandbox_id, 'kill "$(cat child)"', timeout_s=10)
    gone = e2b_backend.run(
        sandbox_id,
        'for _ in $(seq 50); do kill -0 "$(cat child)" 2>/dev/null || exit 0; sleep 0.1; done;'
        " exit 1",
        timeout_s=10,
    )

    assert seen.stdout == "alive\n"
    assert gone.exit_code == 0


def test_a_deadline_that_reaches_the_sdk_as_exit_minus_one_is_a_timeout(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_server.state.deadline_sends_end_event = True  # envd's other side of the race

    with pytest.raises(CommandTimeout) as excinfo:
        e2b_backend.run(sandbox_id, "sleep 30 & echo $! > child; echo started; wait", timeout_s=1)

    assert excinfo.value.stdout == "started\n"
    child = pid_in(home(e2b_server, sandbox_id) / "child")
    assert wait_until(lambda: not pid_is_running(child))


def test_a_command_whose_shell_is_killed_reports_an_exit_code_never_minus_one(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    # $PPID is the backend's wrapper: envd then reports the main process "signal: killed".
    result = e2b_backend.run(sandbox_id, "kill -KILL $PPID; sleep 0.2", timeout_s=10)

    assert result.exit_code == 128 + 9


def test_cancel_kills_the_command_and_everything_it_started(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    cancel = threading.Event()

    def on_output(stream: str, text: str) -> None:
        if "started" in text:
            cancel.set()  # e.g. the streaming client went away

    with pytest.raises(CommandCanceled) as excinfo:
        e2b_backend.run(
            sandbox_id,
            "sleep 30 & echo $! > child; echo started; sleep 30",
            timeout_s=30,
            on_output=on_output,
            cancel=cancel,
        )

    assert excinfo.value.stdout == "started\n"
    child = pid_in(home(e2b_server, sandbox_id) / "child")
    assert wait_until(lambda: not pid_is_running(child))


def test_a_failing_output_callback_kills_the_command(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    def on_output(stream: str, text: str) -> None:
        raise RuntimeError("the consumer broke")

    with pytest.raises(RuntimeError):
        e2b_backend.run(
            sandbox_id, "sleep 30 & echo $! > child; echo x; sleep 30", timeout_s=30,
            on_output=on_output,
        )  # fmt: skip

    child = pid_in(home(e2b_server, sandbox_id) / "child")
    assert wait_until(lambda: not pid_is_running(child))


def test_commands_reach_envd_on_the_sandboxs_own_domain_without_a_sandbox_url(
    e2b_server: FakeE2BServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_SANDBOX_URL", closed_port_url())  # never consulted
    backend = backend_for(e2b_server, sandbox_url=None)
    info = backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60)

    result = backend.run(info.sandbox_id, "echo hi", timeout_s=10)
    backend.write_file(info.sandbox_id, "/home/user/f.txt", b"data")

    assert result.stdout == "hi\n"
    assert b"".join(backend.read_file(info.sandbox_id, "/home/user/f.txt")) == b"data"
    envd = [r for r in e2b_server.state.requests if r.role == "envd"]
    assert envd
    assert {r.host for r in envd} == {f"49983-{info.sandbox_id}.{e2b_server.sandbox_domain}"}


def test_run_reads_the_sandbox_without_connecting_to_it(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_backend.run(sandbox_id, "true", timeout_s=10)

    # POST …/connect resumes a paused sandbox and moves deadlines: never used to reach one.
    assert e2b_server.state.requests_for("POST", r"/(v2/)?sandboxes/[^/]+/connect") == []


# -- background commands, by handle ------------------------------------------------------------


def test_a_background_command_is_started_read_by_offsets_and_ends_with_its_exit_code(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    root = home(e2b_server, sandbox_id)
    handle = e2b_backend.start_command(
        sandbox_id,
        "printf 'one\\n'; printf 'e1' >&2; while [ ! -e go ]; do sleep 0.02; done;"
        " printf '\\377two\\n'; exit 4",
    )

    assert wait_until(lambda: e2b_backend.command_output(sandbox_id, handle).stdout == b"one\n")
    first = e2b_backend.command_output(sandbox_id, handle)
    assert (first.running, first.exit_code) == (True, None)
    (root / "go").touch()
    assert wait_until(lambda: not e2b_backend.command_output(sandbox_id, handle).running)
    rest = e2b_backend.command_output(
        sandbox_id, handle, stdout_offset=first.stdout_end, stderr_offset=first.stderr_end
    )

    assert (first.stdout, first.stderr) == (b"one\n", b"e1")
    assert (rest.stdout, rest.stderr) == (b"\xfftwo\n", b"")
    assert (rest.stdout_end, rest.stderr_end) == (9, 2)
    assert (rest.exit_code, rest.running, rest.truncated) == (4, False, False)


def test_a_background_handle_works_from_another_worker(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    handle = e2b_backend.start_command(sandbox_id, "echo from the first worker")
    other = backend_for(e2b_server)  # a fresh backend, as in another process

    assert wait_until(lambda: other.command_output(sandbox_id, handle).exit_code == 0)
    assert other.command_output(sandbox_id, handle).stdout == b"from the first worker\n"


def test_a_background_commands_output_is_bounded_on_the_sandbox_side(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    handle = e2b_backend.start_command(
        sandbox_id,
        "head -c 5000 /dev/zero | tr '\\0' a; echo done > finished",
        max_output_bytes=100,
    )

    assert wait_until(lambda: e2b_backend.command_output(sandbox_id, handle).exit_code == 0)
    output = e2b_backend.command_output(sandbox_id, handle)
    assert (output.stdout, output.truncated) == (b"a" * 100, True)
    finished = e2b_backend.run(sandbox_id, "cat finished", timeout_s=10)
    assert finished.stdout == "done\n"  # it ran to the end: dropped output never blocked it


def test_kill_command_ends_the_command_and_everything_it_started(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    handle = e2b_backend.start_command(sandbox_id, "sleep 30 & echo $! > child; sleep 30")
    child = pid_in(home(e2b_server, sandbox_id) / "child")

    assert e2b_backend.kill_command(sandbox_id, handle) is True

    assert wait_until(lambda: not pid_is_running(child))
    output = e2b_backend.command_output(sandbox_id, handle)
    assert (output.running, output.exit_code) == (False, None)
    assert e2b_backend.kill_command(sandbox_id, handle) is False  # already ended


def test_kill_command_of_an_ended_command_returns_false(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    handle = e2b_backend.start_command(sandbox_id, "true")
    assert wait_until(lambda: e2b_backend.command_output(sandbox_id, handle).exit_code == 0)

    assert e2b_backend.kill_command(sandbox_id, handle) is False
    assert e2b_backend.command_output(sandbox_id, handle).exit_code == 0


@pytest.mark.parametrize("handle", ["0" * 32, "not-a-handle", "../../etc"])
def test_an_unknown_handle_is_command_not_found(
    e2b_backend: E2BBackend, sandbox_id: str, handle: str
) -> None:
    with pytest.raises(CommandNotFound):
        e2b_backend.command_output(sandbox_id, handle)
    with pytest.raises(CommandNotFound):
        e2b_backend.kill_command(sandbox_id, handle)


def test_background_commands_of_a_gone_sandbox_raise_sandbox_not_found(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    handle = e2b_backend.start_command(sandbox_id, "sleep 30")
    e2b_backend.kill(sandbox_id)

    with pytest.raises(SandboxNotFound):
        e2b_backend.command_output(sandbox_id, handle)
    with pytest.raises(SandboxNotFound):
        e2b_backend.start_command(sandbox_id, "true")

"""The sandbox backend contract: every backend passes this suite unchanged.

Only behaviour every backend can honour is asserted here; what is particular to one backend
(isolation and host limits for ``local``, SDK error mapping for ``e2b``) lives in its own
test module. Pause is asserted where ``supports_pause`` says the backend has it.
"""

from __future__ import annotations

import io
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from sandboxes.backends.base import (
    CommandCanceled,
    CommandNotFound,
    CommandResult,
    CommandTimeout,
    OutputStream,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxPaused,
)
from tests.conftest import require_service
from tests.sandboxes.fake_backend import FakeBackend

HOME = "/home/user"


LIVE = [pytest.param("local_backend", marks=pytest.mark.bwrap), "e2b_backend"]


@pytest.fixture(params=LIVE)
def backend(request: pytest.FixtureRequest) -> SandboxBackend:
    """A backend that runs commands: every case below."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=[*LIVE, "memory_backend"])
def any_backend(request: pytest.FixtureRequest) -> SandboxBackend:
    """Also the in-memory fake the sweep, reconcile and service tests use (it records
    commands instead of running them): the lifecycle and file cases hold for it too."""
    if request.param == "memory_backend":
        return FakeBackend()
    return request.getfixturevalue(request.param)


@pytest.fixture
def any_sandbox(any_backend: SandboxBackend, tag: str) -> Iterator[str]:
    info = any_backend.create(
        template="base", metadata={"suite": "contract", "tag": tag}, envs={}, timeout_s=300
    )
    yield info.sandbox_id
    any_backend.kill(info.sandbox_id)


@pytest.fixture
def tag() -> str:
    """Unique per test, so listings never pick up another test's sandboxes."""
    return uuid.uuid4().hex


@pytest.fixture
def sandbox(backend: SandboxBackend, tag: str) -> Iterator[str]:
    info = backend.create(
        template="base", metadata={"suite": "contract", "tag": tag}, envs={}, timeout_s=300
    )
    yield info.sandbox_id
    backend.kill(info.sandbox_id)


def read_all(backend: SandboxBackend, sandbox_id: str, path: str) -> bytes:
    return b"".join(backend.read_file(sandbox_id, path))


# -- lifecycle ---------------------------------------------------------------------------------


def test_create_returns_an_id_and_the_metadata(any_backend: SandboxBackend, tag: str) -> None:
    info = any_backend.create(template="base", metadata={"tag": tag}, envs={}, timeout_s=120)
    try:
        assert isinstance(info.sandbox_id, str)
        assert info.sandbox_id
        assert info.metadata.items() >= {"tag": tag}.items()
        assert any_backend.get_info(info.sandbox_id).sandbox_id == info.sandbox_id
    finally:
        any_backend.kill(info.sandbox_id)


def test_each_sandbox_gets_its_own_id(any_backend: SandboxBackend, tag: str) -> None:
    first = any_backend.create(template="base", metadata={"tag": tag}, envs={}, timeout_s=120)
    second = any_backend.create(template="base", metadata={"tag": tag}, envs={}, timeout_s=120)
    try:
        assert first.sandbox_id != second.sandbox_id
    finally:
        any_backend.kill(first.sandbox_id)
        any_backend.kill(second.sandbox_id)


def test_list_sandboxes_matches_a_subset_of_the_metadata(
    any_backend: SandboxBackend, tag: str
) -> None:
    alpha = any_backend.create(
        template="base", metadata={"group": tag, "role": "alpha"}, envs={}, timeout_s=120
    )
    beta = any_backend.create(
        template="base", metadata={"group": tag, "role": "beta"}, envs={}, timeout_s=120
    )
    try:
        in_group = {info.sandbox_id for info in any_backend.list_sandboxes({"group": tag})}
        only_alpha = any_backend.list_sandboxes({"group": tag, "role": "alpha"})
        other_group = any_backend.list_sandboxes({"group": uuid.uuid4().hex})

        assert in_group == {alpha.sandbox_id, beta.sandbox_id}
        assert [info.sandbox_id for info in only_alpha] == [alpha.sandbox_id]
        assert only_alpha[0].metadata.items() >= {"group": tag, "role": "alpha"}.items()
        assert other_group == []
    finally:
        any_backend.kill(alpha.sandbox_id)
        any_backend.kill(beta.sandbox_id)


def test_set_timeout_moves_the_end_shown_by_get_info(
    any_backend: SandboxBackend, any_sandbox: str
) -> None:
    any_backend.set_timeout(any_sandbox, 600)
    later = any_backend.get_info(any_sandbox).end_at
    any_backend.set_timeout(any_sandbox, 60)
    sooner = any_backend.get_info(any_sandbox).end_at

    assert later is not None
    assert sooner is not None
    expected = datetime.now(UTC) + timedelta(seconds=60)
    assert abs((sooner - expected).total_seconds()) < 30
    assert later - sooner > timedelta(seconds=400)


def test_kill_ends_the_sandbox_for_every_call(any_backend: SandboxBackend, tag: str) -> None:
    info = any_backend.create(template="base", metadata={"tag": tag}, envs={}, timeout_s=120)
    sandbox_id = info.sandbox_id

    assert any_backend.kill(sandbox_id) is True

    with pytest.raises(SandboxNotFound):
        any_backend.get_info(sandbox_id)
    with pytest.raises(SandboxNotFound):
        any_backend.run(sandbox_id, "true", timeout_s=10)
    with pytest.raises(SandboxNotFound):
        any_backend.set_timeout(sandbox_id, 60)
    with pytest.raises(SandboxNotFound):
        any_backend.write_file(sandbox_id, f"{HOME}/x.txt", b"x")
    with pytest.raises(SandboxNotFound):
        read_all(any_backend, sandbox_id, f"{HOME}/x.txt")
    with pytest.raises(SandboxNotFound):
        any_backend.list_files(sandbox_id, HOME)
    assert any_backend.list_sandboxes({"tag": tag}) == []
    assert any_backend.kill(sandbox_id) is False


# -- commands ----------------------------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_code(backend: SandboxBackend, sandbox: str) -> None:
    result = backend.run(sandbox, "echo out; echo err >&2", timeout_s=30)

    assert result.exit_code == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.truncated is False
    assert result.duration_ms >= 0


def test_a_non_zero_exit_is_a_result_not_an_error(backend: SandboxBackend, sandbox: str) -> None:
    result = backend.run(sandbox, "echo partial; exit 7", timeout_s=30)

    assert result.exit_code == 7
    assert result.stdout == "partial\n"


def test_run_passes_env_vars(backend: SandboxBackend, sandbox: str) -> None:
    result = backend.run(
        sandbox,
        'printf "%s|%s" "$GREETING" "$EMPTY"',
        timeout_s=30,
        envs={"GREETING": "hi there", "EMPTY": ""},
    )

    assert result.stdout == "hi there|"


def test_create_envs_reach_every_command(backend: SandboxBackend, tag: str) -> None:
    info = backend.create(
        template="base", metadata={"tag": tag}, envs={"SANDBOX_WIDE": "yes"}, timeout_s=120
    )
    try:
        inherited = backend.run(info.sandbox_id, 'echo "$SANDBOX_WIDE"', timeout_s=30)
        overridden = backend.run(
            info.sandbox_id, 'echo "$SANDBOX_WIDE"', timeout_s=30, envs={"SANDBOX_WIDE": "run"}
        )
    finally:
        backend.kill(info.sandbox_id)

    assert inherited.stdout == "yes\n"
    assert overridden.stdout == "run\n"


def test_run_defaults_to_the_home_and_honours_cwd(backend: SandboxBackend, sandbox: str) -> None:
    backend.write_file(sandbox, f"{HOME}/work/marker.txt", b"here")

    default = backend.run(sandbox, "pwd", timeout_s=30)
    inside = backend.run(sandbox, "pwd; ls", timeout_s=30, cwd=f"{HOME}/work")

    assert default.stdout == f"{HOME}\n"
    assert inside.stdout == f"{HOME}/work\nmarker.txt\n"


def test_a_command_past_its_timeout_raises_command_timeout(
    backend: SandboxBackend, sandbox: str
) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        backend.run(sandbox, "sleep 30", timeout_s=1)

    assert time.monotonic() - started < 15
    # The sandbox itself survives a command's timeout.
    assert backend.run(sandbox, "echo alive", timeout_s=30).stdout == "alive\n"


def test_output_is_cut_at_max_output_bytes(backend: SandboxBackend, sandbox: str) -> None:
    result = backend.run(
        sandbox,
        "head -c 100000 /dev/zero | tr '\\0' a; head -c 5000 /dev/zero | tr '\\0' b >&2",
        timeout_s=30,
        max_output_bytes=1000,
    )

    assert result.exit_code == 0
    assert result.truncated is True
    assert result.stdout == "a" * 1000
    assert result.stderr == "b" * 1000


def test_on_output_receives_both_streams(backend: SandboxBackend, sandbox: str) -> None:
    received: list[tuple[OutputStream, str]] = []

    result = backend.run(
        sandbox,
        "echo one; echo two >&2; echo three",
        timeout_s=30,
        on_output=lambda stream, text: received.append((stream, text)),
    )

    assert "".join(text for stream, text in received if stream == "stdout") == "one\nthree\n"
    assert "".join(text for stream, text in received if stream == "stderr") == "two\n"
    assert result.stdout == "one\nthree\n"


def test_output_is_decoded_as_utf8_with_replacement(backend: SandboxBackend, sandbox: str) -> None:
    result = backend.run(sandbox, "printf 'caf\\303\\251 \\377\\n'", timeout_s=30)

    assert result.stdout == "café \ufffd\n"


# -- files -------------------------------------------------------------------------------------


def test_write_then_read_round_trips_binary_bytes(
    any_backend: SandboxBackend, any_sandbox: str
) -> None:
    data = bytes(range(256)) * 1024 + b"\0tail\0"

    any_backend.write_file(any_sandbox, f"{HOME}/blob.bin", data)

    assert read_all(any_backend, any_sandbox, f"{HOME}/blob.bin") == data


def test_write_file_accepts_a_stream_and_replaces_the_file(
    any_backend: SandboxBackend, any_sandbox: str
) -> None:
    any_backend.write_file(
        any_sandbox, f"{HOME}/notes.txt", b"first version, longer than the second"
    )
    any_backend.write_file(any_sandbox, f"{HOME}/notes.txt", io.BytesIO(b"second"))

    assert read_all(any_backend, any_sandbox, f"{HOME}/notes.txt") == b"second"


def test_write_file_creates_parent_directories(
    any_backend: SandboxBackend, any_sandbox: str
) -> None:
    any_backend.write_file(any_sandbox, f"{HOME}/a/b/c/deep.txt", b"deep")

    assert read_all(any_backend, any_sandbox, f"{HOME}/a/b/c/deep.txt") == b"deep"
    assert [(e.name, e.type) for e in any_backend.list_files(any_sandbox, f"{HOME}/a/b")] == [
        ("c", "dir")
    ]


def test_files_are_shared_between_commands_and_file_calls(
    backend: SandboxBackend, sandbox: str
) -> None:
    backend.write_file(sandbox, f"{HOME}/shared.txt", b"from the host\n")

    result = backend.run(
        sandbox,
        "cat shared.txt; echo 'from a command' >> shared.txt; echo made > made.txt",
        timeout_s=30,
    )

    assert result.stdout == "from the host\n"
    assert read_all(backend, sandbox, f"{HOME}/shared.txt") == b"from the host\nfrom a command\n"
    assert read_all(backend, sandbox, f"{HOME}/made.txt") == b"made\n"


def test_reading_a_missing_file_raises_file_not_found(
    any_backend: SandboxBackend, any_sandbox: str
) -> None:
    with pytest.raises(SandboxFileNotFound):
        read_all(any_backend, any_sandbox, f"{HOME}/nope.txt")
    with pytest.raises(SandboxFileNotFound):
        read_all(any_backend, any_sandbox, f"{HOME}/no/such/dir/file.txt")


def test_list_files_shows_files_and_directories(backend: SandboxBackend, sandbox: str) -> None:
    backend.write_file(sandbox, f"{HOME}/listing/report.txt", b"12345")
    backend.run(sandbox, "mkdir -p listing/sub", timeout_s=30)

    entries = {entry.name: entry for entry in backend.list_files(sandbox, f"{HOME}/listing")}

    assert set(entries) == {"report.txt", "sub"}
    assert entries["report.txt"].type == "file"
    assert entries["report.txt"].path == f"{HOME}/listing/report.txt"
    assert entries["report.txt"].size == 5
    assert entries["sub"].type == "dir"
    assert entries["sub"].path == f"{HOME}/listing/sub"


def test_listing_a_missing_directory_raises_file_not_found(
    any_backend: SandboxBackend, any_sandbox: str
) -> None:
    with pytest.raises(SandboxFileNotFound):
        any_backend.list_files(any_sandbox, f"{HOME}/missing")


# -- a live machine (SPEC §14, §15) ------------------------------------------------------------
#
# A sandbox is a machine: what a command leaves in the background is still there for the
# next command, never holds a foreground command open, and ends with the sandbox; a command
# that times out or is canceled takes everything it started with it.

SERVER_PORT = 8765
SERVER = f"python3 -m http.server {SERVER_PORT} --bind 127.0.0.1 --directory {HOME}/site"


def _answers(backend: SandboxBackend, sandbox_id: str, path: str) -> CommandResult:
    """Ask the sandbox's own server, from inside the sandbox, until it answers."""
    client = (
        "python3 -c 'import sys, urllib.request; "
        f'print(urllib.request.urlopen("http://127.0.0.1:{SERVER_PORT}/{path}", timeout=5)'
        ".read().decode())'"
    )
    return backend.run(
        sandbox_id,
        f"for i in $(seq 100); do {client} 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
        timeout_s=30,
    )


def _running(backend: SandboxBackend, sandbox_id: str, pattern: str) -> bool:
    # "[x]yz" matches "xyz" but not the command line of the shell that runs pgrep.
    found = backend.run(sandbox_id, f"pgrep -f '{pattern}' >/dev/null && echo yes", timeout_s=30)
    return found.stdout == "yes\n"


def _gone(backend: SandboxBackend, sandbox_id: str, pattern: str) -> bool:
    return not _running(backend, sandbox_id, pattern)


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_background_server_answers_the_next_command(
    backend: SandboxBackend, sandbox: str
) -> None:
    backend.write_file(sandbox, f"{HOME}/site/index.html", b"hello from the sandbox")

    started = backend.run(sandbox, f"{SERVER} >/dev/null 2>&1 & echo started", timeout_s=30)
    answered = _answers(backend, sandbox, "index.html")

    assert started.stdout == "started\n"
    assert answered.exit_code == 0
    assert answered.stdout == "hello from the sandbox\n"


def test_background_children_never_hold_a_foreground_command_open(
    backend: SandboxBackend, sandbox: str
) -> None:
    # Their output streams stay open after the command's own process exits; the call must
    # return anyway (not time out), and they must keep running.
    result = backend.run(sandbox, "sleep 300 & (sleep 1; echo later) & echo now", timeout_s=20)

    assert result.exit_code == 0
    assert result.stdout == "now\n"
    assert _running(backend, sandbox, "[s]leep 300")


def test_a_timeout_kills_everything_the_command_started(
    backend: SandboxBackend, sandbox: str
) -> None:
    with pytest.raises(CommandTimeout):
        backend.run(
            sandbox,
            "sleep 301 & setsid sleep 302 & (sleep 303 &) ; sleep 304",
            timeout_s=1,
        )

    for pattern in ("[s]leep 301", "[s]leep 302", "[s]leep 303", "[s]leep 304"):
        assert _eventually(partial(_gone, backend, sandbox, pattern)), pattern


def test_a_cancel_kills_everything_the_command_started(
    backend: SandboxBackend, sandbox: str
) -> None:
    cancel = threading.Event()

    def on_output(stream: OutputStream, text: str) -> None:
        if "started" in text:
            cancel.set()

    with pytest.raises(CommandCanceled) as caught:
        backend.run(
            sandbox,
            "sleep 305 & echo started; sleep 306",
            timeout_s=60,
            on_output=on_output,
            cancel=cancel,
        )

    assert "started" in caught.value.stdout
    assert _eventually(lambda: not _running(backend, sandbox, "[s]leep 30[56]"))
    assert backend.run(sandbox, "echo usable", timeout_s=30).stdout == "usable\n"


def test_a_background_command_by_handle(backend: SandboxBackend, sandbox: str) -> None:
    handle = backend.start_command(
        sandbox, "echo one; echo oops >&2; sleep 0.5; echo two; exit 3", cwd=HOME
    )

    assert _eventually(lambda: not backend.command_output(sandbox, handle).running)
    whole = backend.command_output(sandbox, handle)
    tail = backend.command_output(sandbox, handle, stdout_offset=4, stderr_offset=5)

    assert whole.stdout == b"one\ntwo\n"
    assert whole.stderr == b"oops\n"
    assert (whole.stdout_end, whole.stderr_end) == (8, 5)
    assert whole.exit_code == 3
    assert whole.truncated is False
    assert (tail.stdout, tail.stderr) == (b"two\n", b"")
    assert (tail.stdout_end, tail.stderr_end) == (8, 5)


def test_kill_command_ends_a_background_command_and_what_it_started(
    backend: SandboxBackend, sandbox: str
) -> None:
    handle = backend.start_command(sandbox, "sleep 307 & setsid sleep 308 & sleep 309")
    assert _eventually(lambda: _running(backend, sandbox, "[s]leep 309"))

    assert backend.kill_command(sandbox, handle) is True

    assert _eventually(lambda: not backend.command_output(sandbox, handle).running)
    assert _eventually(lambda: not _running(backend, sandbox, "[s]leep 30[789]"))
    assert backend.kill_command(sandbox, handle) is False


def test_an_unknown_handle_is_command_not_found(backend: SandboxBackend, sandbox: str) -> None:
    with pytest.raises(CommandNotFound):
        backend.command_output(sandbox, "no-such-command")
    with pytest.raises(CommandNotFound):
        backend.kill_command(sandbox, "no-such-command")


def test_nothing_is_left_once_the_sandbox_is_killed(backend: SandboxBackend, tag: str) -> None:
    info = backend.create(template="base", metadata={"tag": tag}, envs={}, timeout_s=120)
    backend.write_file(info.sandbox_id, f"{HOME}/site/index.html", b"x")
    backend.run(info.sandbox_id, f"{SERVER} >/dev/null 2>&1 &", timeout_s=30)
    handle = backend.start_command(info.sandbox_id, "sleep 310")

    assert backend.kill(info.sandbox_id) is True

    assert backend.list_sandboxes({"tag": tag}) == []
    with pytest.raises(SandboxNotFound):
        backend.run(info.sandbox_id, "true", timeout_s=10)
    with pytest.raises(SandboxNotFound):
        backend.command_output(info.sandbox_id, handle)


def test_pause_and_resume_keep_processes_and_files(backend: SandboxBackend, sandbox: str) -> None:
    require_service(backend.supports_pause, f"the {backend.name} backend can pause (a freezer)")
    backend.write_file(sandbox, f"{HOME}/site/index.html", b"kept")
    backend.run(sandbox, f"{SERVER} >/dev/null 2>&1 &", timeout_s=30)
    assert _answers(backend, sandbox, "index.html").stdout == "kept\n"

    backend.pause(sandbox)
    with pytest.raises(SandboxPaused):
        backend.run(sandbox, "true", timeout_s=10)
    backend.resume(sandbox, timeout_s=120)

    assert _answers(backend, sandbox, "index.html").stdout == "kept\n"
    assert read_all(backend, sandbox, f"{HOME}/site/index.html") == b"kept"
    backend.resume(sandbox, timeout_s=120)  # a running sandbox: nothing happens
    assert backend.run(sandbox, "echo running", timeout_s=30).stdout == "running\n"


def test_pause_and_resume_keep_a_processs_memory(backend: SandboxBackend, sandbox: str) -> None:
    """A background process holds a value only in its memory (a shell variable it never
    wrote down) and keeps counting; after pause and resume it is the same process with the
    same value, and it goes on from where it was."""
    require_service(backend.supports_pause, f"the {backend.name} backend can pause (a freezer)")
    holder = (
        "v=$(od -An -N8 -tx8 /dev/urandom | tr -d ' '); n=0; echo $$ > pid; "
        "echo $v | sha256sum > digest; "
        "while [ ! -f ask ]; do n=$((n + 1)); sleep 0.05; done; "
        "echo $v | sha256sum > after; echo $n > count"
    )
    background = f"(bash -c {shlex.quote(holder)} </dev/null >/dev/null 2>&1 &)"
    backend.run(sandbox, background, timeout_s=30)
    wait = "for _ in $(seq 200); do [ -s {0} ] && exit 0; sleep 0.05; done; exit 1"
    assert backend.run(sandbox, wait.format("digest"), timeout_s=30).exit_code == 0
    pid = backend.run(sandbox, "cat pid", timeout_s=30).stdout

    backend.pause(sandbox)
    backend.resume(sandbox, timeout_s=120)
    backend.run(sandbox, "touch ask", timeout_s=30)

    assert backend.run(sandbox, wait.format("count"), timeout_s=30).exit_code == 0
    assert backend.run(sandbox, "cat pid", timeout_s=30).stdout == pid
    before = read_all(backend, sandbox, f"{HOME}/digest")
    assert read_all(backend, sandbox, f"{HOME}/after") == before  # the value in its memory
    assert int(read_all(backend, sandbox, f"{HOME}/count")) > 0


# -- E2B semantics (SPEC §14/§15), written for every backend ---------------------------------
# Added with the E2B backend's envd work: a command's own process decides when the call
# returns, and a timeout ends everything the command started. Checked from inside the
# sandbox, so the same assertions hold wherever the sandbox runs.


def test_a_background_child_does_not_hold_the_call_open(
    backend: SandboxBackend, sandbox: str
) -> None:
    result = backend.run(sandbox, "sleep 30 & echo started", timeout_s=10)

    assert (result.exit_code, result.stdout) == (0, "started\n")


def test_a_timeout_kills_the_children_of_the_command(backend: SandboxBackend, sandbox: str) -> None:
    with pytest.raises(CommandTimeout) as excinfo:
        backend.run(
            sandbox,
            "sleep 30 & echo $! > child.pid; echo started; sleep 30",
            timeout_s=1,
        )

    assert excinfo.value.stdout == "started\n"
    check = backend.run(
        sandbox,
        "for _ in $(seq 50); do kill -0 $(cat child.pid) 2>/dev/null || exit 0; sleep 0.1; done;"
        " exit 1",
        timeout_s=30,
    )
    assert check.exit_code == 0  # the background child is gone

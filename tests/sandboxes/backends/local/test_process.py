"""Commands in a live sandbox (sandboxes/backends/local/process.py and init.py): what lives
on between commands, and what a timeout, a cancel or a kill takes with it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from sandboxes.backends.base import (
    BackendError,
    CommandCanceled,
    CommandNotFound,
    CommandResult,
    CommandTimeout,
    SandboxNotFound,
    SandboxPaused,
)
from sandboxes.backends.local import LocalBackend
from tests.sandboxes.backends.fixtures_local import make_local_backend
from tests.sandboxes.backends.local.helpers import (
    HOME,
    PROJECT_DIR,
    in_another_worker,
    in_background,
    processes_with,
    run,
    wait_until,
)

pytestmark = [pytest.mark.bwrap, pytest.mark.usefixtures("as_root")]

SERVER = "python3 -m http.server 8123 --bind 127.0.0.1 --directory /home/user/site"
CLIENT = (
    "python3 -c 'import urllib.request; "
    'print(urllib.request.urlopen("http://127.0.0.1:8123/index.html", timeout=5).read().decode())'
    "'"
)


def test_a_background_server_survives_between_commands_and_ends_with_the_sandbox(
    local_backend: LocalBackend, sandbox: str
) -> None:
    local_backend.write_file(sandbox, f"{HOME}/site/index.html", b"served from the sandbox")

    started = run(local_backend, sandbox, f"{SERVER} > server.log 2>&1 & echo started")
    answered = run(
        local_backend, sandbox, f"for i in $(seq 50); do {CLIENT} 2>/dev/null && break; "
        "sleep 0.1; done",
    )  # fmt: skip

    assert started.stdout == "started\n"
    assert answered.stdout == "served from the sandbox\n"
    assert processes_with(SERVER, exactly=True) != []
    local_backend.kill(sandbox)
    assert processes_with(SERVER, exactly=True) == []


def test_background_processes_outlive_the_command_that_started_them(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # A live machine (SPEC §14): the command returns when its own process exits; what it
    # left in the background keeps running (and writing) until the sandbox ends.
    result = run(local_backend, sandbox, "(sleep 47.11; echo late) & echo started", timeout_s=10)

    assert result.stdout == "started\n"
    assert processes_with("sleep 47.11") != []
    # ([.]: so that the pattern does not match the shell that runs pgrep itself)
    seen = run(local_backend, sandbox, "pgrep -f 'sleep 47[.]11' > /dev/null && echo seen")
    assert seen.stdout == "seen\n"
    killed = run(local_backend, sandbox, "pkill -f 'sleep 47[.]11'; echo killed")
    assert killed.stdout == "killed\n"
    assert wait_until(lambda: processes_with("sleep 47.11") == [])


def test_background_output_neither_blocks_nor_kills_what_writes_it(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # Far more than a pipe holds, written long after the command returned.
    run(
        local_backend,
        sandbox,
        "(sleep 0.3; head -c 5000000 /dev/zero | tr '\\0' x; echo done > finished) & true",
    )

    assert wait_until(
        lambda: run(local_backend, sandbox, "cat finished 2>/dev/null").stdout == "done\n",
        timeout_s=10,
    )


def test_a_timeout_kills_everything_the_command_started(
    local_backend: LocalBackend, sandbox: str
) -> None:
    with pytest.raises(CommandTimeout):
        run(
            local_backend,
            sandbox,
            "(sleep 1.5; touch /home/user/survived) & sleep 3.14159 & "
            "setsid sleep 6.28318 & sleep 60",
            timeout_s=0.5,
        )

    assert wait_until(lambda: processes_with("sleep 3.14159") == [], timeout_s=2)
    assert processes_with("sleep 6.28318") == []  # it left the process group, not its cgroup
    time.sleep(1.5)
    assert run(local_backend, sandbox, "ls -A").stdout == ""


def test_a_cancel_kills_the_command_and_keeps_what_it_printed(
    local_backend: LocalBackend, sandbox: str
) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def on_output(stream: str, text: str) -> None:
        seen.append(text)
        cancel.set()  # the client went away once the command had started

    with pytest.raises(CommandCanceled) as caught:
        run(
            local_backend,
            sandbox,
            "echo begun; sleep 59.5 & sleep 60",
            on_output=on_output,
            cancel=cancel,
            timeout_s=30,
        )

    assert caught.value.stdout == "begun\n"
    assert seen == ["begun\n"]
    assert wait_until(lambda: processes_with("sleep 59.5") == [])
    assert run(local_backend, sandbox, "echo after").stdout == "after\n"


def test_a_background_command_by_handle_from_any_worker(
    local_backend: LocalBackend, sandbox: str
) -> None:
    handle = local_backend.start_command(
        sandbox, "echo one; echo warn >&2; sleep 0.2; echo two; sleep 93.1"
    )

    # Another worker process reads its output by offset, and kills it.
    assert wait_until(
        lambda: b"two" in local_backend.command_output(sandbox, handle).stdout, timeout_s=10
    )
    later = in_another_worker(
        local_backend.root,
        "out = backend.command_output(sys.argv[2], sys.argv[3], stdout_offset=4); "
        "print(repr(out.stdout), out.stdout_end, repr(out.stderr), out.running)",
        sandbox,
        handle,
    )
    killed = in_another_worker(
        local_backend.root, "print(backend.kill_command(sys.argv[2], sys.argv[3]))", sandbox, handle
    )
    final = local_backend.command_output(sandbox, handle)

    assert later.split() == ["b'two\\n'", "8", "b'warn\\n'", "True"]
    assert killed.strip() == "True"
    assert final.running is False
    assert final.stdout == b"one\ntwo\n"
    assert processes_with("sleep 93.1") == []
    assert local_backend.kill_command(sandbox, handle) is False
    with pytest.raises(CommandNotFound):
        local_backend.command_output(sandbox, "c0123456789abcdef")
    with pytest.raises(CommandNotFound):
        local_backend.kill_command(sandbox, "../../etc")


def test_a_background_command_keeps_the_latest_output(
    local_backend: LocalBackend, sandbox: str
) -> None:
    handle = local_backend.start_command(sandbox, "seq 1 1000; echo end", max_output_bytes=100)
    assert wait_until(lambda: not local_backend.command_output(sandbox, handle).running)

    output = local_backend.command_output(sandbox, handle)

    assert output.truncated is True
    assert output.exit_code == 0
    assert output.stdout.endswith(b"999\n1000\nend\n")
    assert len(output.stdout) == 100
    assert output.stdout_end == len("".join(f"{n}\n" for n in range(1, 1001))) + 4


def test_a_kill_from_another_process_stops_running_commands(
    local_backend: LocalBackend, sandbox: str
) -> None:
    thread, outcome = in_background(
        lambda: run(local_backend, sandbox, "sleep 52.9 & sleep 53.1", timeout_s=60)
    )
    assert wait_until(lambda: len(processes_with("sleep 53.1")) >= 1)

    # A different worker process, sharing nothing with this one but the root directory.
    killed = in_another_worker(local_backend.root, "print(backend.kill(sys.argv[2]))", sandbox)
    thread.join(10)

    assert killed.strip() == "True"
    assert not thread.is_alive()
    assert isinstance(outcome[0], SandboxNotFound)
    assert wait_until(lambda: processes_with("sleep 52.9") == [], timeout_s=2)
    assert not (local_backend.root / sandbox).exists()


def test_a_command_dies_with_the_worker_that_waits_for_it(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # No timeout can fire once its worker is gone: the command must not outlive it. The
    # sandbox itself does (another worker still uses it).
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from sandboxes.backends.local import LocalBackend; "
            "LocalBackend(root=Path(sys.argv[1])).run(sys.argv[2], 'sleep 61.3 & sleep 62.7', "
            "timeout_s=60)",
            str(local_backend.root),
            sandbox,
        ],
        cwd=PROJECT_DIR,
    )
    try:
        assert wait_until(lambda: bool(processes_with("sleep 62.7", exactly=True)), timeout_s=10)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    assert wait_until(
        lambda: processes_with("sleep 61.3") == processes_with("sleep 62.7") == [], timeout_s=5
    )
    assert run(local_backend, sandbox, "echo alive").stdout == "alive\n"


def test_a_sandbox_that_kills_its_own_init_is_gone(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # Pid 1 is bwrap's reaper, which ignores signals from inside; the init below it is 2.
    with pytest.raises(SandboxNotFound):
        run(local_backend, sandbox, "kill -9 2; sleep 5")

    with pytest.raises(SandboxNotFound):
        local_backend.get_info(sandbox)
    assert not (local_backend.root / sandbox).exists()


def test_a_command_dies_with_its_sandbox_at_the_sandbox_timeout(
    local_backend: LocalBackend,
) -> None:
    sandbox_id = local_backend.create(template="base", metadata={}, envs={}, timeout_s=1).sandbox_id
    started = time.monotonic()

    with pytest.raises(SandboxNotFound):
        local_backend.run(sandbox_id, "sleep 61.8", timeout_s=30)

    assert time.monotonic() - started < 5
    assert wait_until(lambda: processes_with("sleep 61.8") == [], timeout_s=2)


def test_set_timeout_from_another_worker_keeps_a_running_command_alive(
    local_backend: LocalBackend,
) -> None:
    sandbox_id = local_backend.create(template="base", metadata={}, envs={}, timeout_s=1).sandbox_id
    thread, outcome = in_background(
        lambda: run(local_backend, sandbox_id, "sleep 1.5; echo done", timeout_s=30)
    )
    time.sleep(0.3)

    make_local_backend(local_backend.root).set_timeout(sandbox_id, 60)
    thread.join(10)

    assert isinstance(outcome[0], CommandResult)
    assert outcome[0].stdout == "done\n"
    local_backend.kill(sandbox_id)


def test_a_missing_cwd_is_a_backend_error(local_backend: LocalBackend, sandbox: str) -> None:
    with pytest.raises(BackendError, match="/home/user/nowhere"):
        run(local_backend, sandbox, "pwd", cwd=f"{HOME}/nowhere")


def test_a_paused_sandbox_keeps_its_processes_and_refuses_calls(
    local_backend: LocalBackend, sandbox: str
) -> None:
    ticks = local_backend.root / sandbox / "home" / "ticks"
    run(local_backend, sandbox, "(while :; do date +%s%N >> ticks; sleep 0.05; done) &")
    assert wait_until(lambda: ticks.exists() and ticks.read_bytes().count(b"\n") > 1)

    local_backend.pause(sandbox)
    frozen_at = ticks.read_bytes()
    time.sleep(0.3)
    still = ticks.read_bytes()
    with pytest.raises(SandboxPaused):
        run(local_backend, sandbox, "true")
    with pytest.raises(SandboxPaused):
        local_backend.list_files(sandbox, HOME)
    assert local_backend.list_sandboxes({"suite": "local"})[0].sandbox_id == sandbox
    local_backend.resume(sandbox, timeout_s=60)

    assert still == frozen_at
    assert wait_until(lambda: ticks.read_bytes() != frozen_at)

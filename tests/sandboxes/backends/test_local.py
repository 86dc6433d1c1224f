"""Isolation of the ``local`` (bubblewrap) backend: what a hostile command must not reach.

Each test attacks from inside a real sandbox and checks the host side, so a regression in the
bwrap command line or in the file calls shows up as a failure, not as a silent pass.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sandboxes.backends.local as local_module
from sandboxes.backends.base import (
    BackendError,
    CommandResult,
    CommandTimeout,
    SandboxFileNotFound,
    SandboxNotFound,
)
from sandboxes.backends.local import LocalBackend
from tests.sandboxes.backends.fixtures_local import TEST_LIMITS, make_local_backend

pytestmark = pytest.mark.bwrap

HOME = "/home/user"
PROJECT_DIR = Path(local_module.__file__).resolve().parents[3]
WORKER_IS_ROOT = os.geteuid() == 0
# What every command starts with; bash adds PWD, SHLVL and _.
SANDBOX_ENV_NAMES = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "PWD", "SHLVL", "_"}


@pytest.fixture
def sandbox(local_backend: LocalBackend) -> Iterator[str]:
    info = local_backend.create(
        template="base", metadata={"suite": "local"}, envs={}, timeout_s=300
    )
    yield info.sandbox_id
    local_backend.kill(info.sandbox_id)


def run(backend: LocalBackend, sandbox_id: str, command: str, **kwargs: Any) -> CommandResult:
    kwargs.setdefault("timeout_s", 20)
    return backend.run(sandbox_id, command, **kwargs)


def processes_with(marker: str, *, exactly: bool = False) -> list[int]:
    """Live host processes whose command line contains ``marker``, or with ``exactly`` is
    it (arguments joined by spaces). Zombies have no command line."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        needle = marker.encode()
        joined = cmdline.rstrip(b"\0").replace(b"\0", b" ")
        if (joined == needle) if exactly else (needle in cmdline):
            found.append(int(entry.name))
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def host_uids(pid: int) -> tuple[int, ...]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(value) for value in line.split()[1:])
    raise AssertionError(f"no Uid line for {pid}")


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid line for {pid}")


def in_background(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``target`` in a thread; the list receives its result or exception."""
    outcome: list[object] = []

    def main() -> None:
        try:
            outcome.append(target())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, outcome


# -- identity ----------------------------------------------------------------------------------


def test_it_runs_as_an_unprivileged_user_without_capabilities(
    local_backend: LocalBackend, sandbox: str
) -> None:
    result = run(
        local_backend,
        sandbox,
        "id -u; id -g; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status",
    )

    lines = result.stdout.splitlines()
    assert lines[0] != "0"
    assert lines[1] != "0"
    caps = dict(line.split(":\t") for line in lines[2:])
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert set(caps.values()) == {"0000000000000000"}


def test_it_cannot_create_nested_user_namespaces(local_backend: LocalBackend, sandbox: str) -> None:
    # A nested namespace would hand the sandbox "root" again, and the kernel attack surface.
    result = run(local_backend, sandbox, "unshare --user --map-root-user id -u")

    assert result.exit_code != 0
    assert result.stdout == ""


def test_on_the_host_every_sandbox_process_is_unprivileged(
    local_backend: LocalBackend, sandbox: str
) -> None:
    marker = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    thread, outcome = in_background(lambda: run(local_backend, sandbox, f"sleep {marker}; true"))
    assert wait_until(lambda: bool(processes_with(f"sleep {marker}", exactly=True)))

    # From the sleeping command up to this test process: bash, bwrap's init, bwrap itself.
    chain = []
    [pid] = processes_with(f"sleep {marker}", exactly=True)
    while pid != os.getpid():
        chain.append((pid, host_uids(pid)))
        pid = parent_pid(pid)
    local_backend.kill(sandbox)
    thread.join(10)

    assert len(chain) >= 4
    expected = local_backend.host_uid if WORKER_IS_ROOT else os.geteuid()
    for pid, uids in chain:
        assert set(uids) == {expected}, f"pid {pid} runs with host uids {uids}"
        assert 0 not in uids
    assert isinstance(outcome[0], SandboxNotFound)


# -- network, processes, environment -----------------------------------------------------------


def test_it_has_no_network(local_backend: LocalBackend, sandbox: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]

        result = run(
            local_backend,
            sandbox,
            f"(exec 3<>/dev/tcp/127.0.0.1/{port}) && echo connected; "
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        )

        with pytest.raises(BlockingIOError):
            listener.accept()
    assert "connected" not in result.stdout
    assert result.stdout.split() == ["lo"]


def test_it_cannot_see_host_processes(local_backend: LocalBackend, sandbox: str) -> None:
    result = run(
        local_backend,
        sandbox,
        "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done",
    )

    pids = {int(line.split()[0]) for line in result.stdout.splitlines()}
    # bwrap's init, the shell, the loop's subshell: nothing of the host.
    assert len(pids) <= 5
    assert "pytest" not in result.stdout


def test_the_workers_environment_does_not_leak(
    local_backend: LocalBackend, sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRLOCK_WORKER_SECRET", "hunter2-do-not-leak")

    result = run(
        local_backend, sandbox, "env; tr '\\0' '\\n' < /proc/1/environ", envs={"RUN_VAR": "visible"}
    )

    assert "hunter2-do-not-leak" not in result.stdout
    assert "AIRLOCK_WORKER_SECRET" not in result.stdout
    assert "RUN_VAR=visible" in result.stdout
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert names <= SANDBOX_ENV_NAMES | {"RUN_VAR"}


def test_run_envs_never_appear_in_a_host_command_line(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # /proc/<pid>/cmdline is readable by every host user; the run's env carries secrets.
    secret = f"tok-{secrets.token_hex(8)}"
    thread, _ = in_background(
        lambda: run(local_backend, sandbox, "sleep 2.71828", envs={"API_TOKEN": secret})
    )
    assert wait_until(lambda: bool(processes_with("sleep 2.71828")))

    assert processes_with(secret) == []
    local_backend.kill(sandbox)
    thread.join(10)


# -- host files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host_path",
    [
        "/etc/shadow",
        "/etc/ssl/private",
        "/root",
        str(PROJECT_DIR),
        str(PROJECT_DIR / "config" / "settings.py"),
        str(PROJECT_DIR / "var"),
        str(PROJECT_DIR / "var" / "db.sqlite3"),
        "/work",
        "/home/user/../../etc/shadow",
    ],
)
def test_host_files_do_not_exist_inside(
    local_backend: LocalBackend, sandbox: str, host_path: str
) -> None:
    result = run(local_backend, sandbox, f"ls -d '{host_path}' && cat '{host_path}'")

    assert result.exit_code != 0
    assert result.stdout == ""


def test_the_backend_root_and_other_sandboxes_are_invisible(
    local_backend: LocalBackend, sandbox: str
) -> None:
    other = local_backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    local_backend.write_file(other, f"{HOME}/neighbour-secret.txt", b"s3cret")

    result = run(
        local_backend,
        sandbox,
        f"ls -d '{local_backend.root}' '{local_backend.root / other}'; "
        "find / -path /proc -prune -o -path /usr -prune -o -name neighbour-secret.txt -print; "
        "true",
    )

    assert result.stdout == ""


def test_it_cannot_write_outside_its_home(local_backend: LocalBackend, sandbox: str) -> None:
    result = run(
        local_backend,
        sandbox,
        "for p in /usr/x /etc/x /x /dev/x /proc/x /home/x /tmp/x /dev/shm/x /home/user/x; do "
        '  touch $p 2>/dev/null && echo "wrote $p"; '
        "done",
    )

    assert result.stdout.splitlines() == ["wrote /tmp/x", "wrote /dev/shm/x", "wrote /home/user/x"]


def test_tmp_is_fresh_for_every_command(local_backend: LocalBackend, sandbox: str) -> None:
    run(local_backend, sandbox, "echo leftover > /tmp/leftover")

    assert run(local_backend, sandbox, "ls -A /tmp").stdout == ""


# -- limits ------------------------------------------------------------------------------------


def test_a_timeout_kills_processes_forked_into_the_background(
    local_backend: LocalBackend, sandbox: str
) -> None:
    with pytest.raises(CommandTimeout):
        run(
            local_backend,
            sandbox,
            "(sleep 1.5; touch /home/user/survived) & sleep 3.14159 & sleep 60",
            timeout_s=0.5,
        )

    assert wait_until(lambda: processes_with("sleep 3.14159") == [], timeout_s=2)
    time.sleep(1.5)
    assert run(local_backend, sandbox, "ls -A").stdout == ""


def test_background_processes_end_with_the_command(
    local_backend: LocalBackend, sandbox: str
) -> None:
    started = time.monotonic()

    result = run(local_backend, sandbox, "sleep 47.11 & echo started")

    assert result.stdout == "started\n"
    assert time.monotonic() - started < 5
    assert wait_until(lambda: processes_with("sleep 47.11") == [], timeout_s=2)


def test_a_kill_from_another_process_stops_running_commands(
    local_backend: LocalBackend, sandbox: str
) -> None:
    thread, outcome = in_background(
        lambda: run(local_backend, sandbox, "sleep 52.9 & sleep 53.1", timeout_s=60)
    )
    assert wait_until(lambda: len(processes_with("sleep 53.1")) >= 1)

    # A different worker process, sharing nothing with this one but the root directory.
    killer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from sandboxes.backends.local import LocalBackend; "
            "print(LocalBackend(root=Path(sys.argv[1])).kill(sys.argv[2]))",
            str(local_backend.root),
            sandbox,
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        timeout=60,
        check=True,
    )
    thread.join(10)

    assert killer.stdout.strip() == "True"
    assert not thread.is_alive()
    assert isinstance(outcome[0], SandboxNotFound)
    assert wait_until(lambda: processes_with("sleep 52.9") == [], timeout_s=2)
    assert not (local_backend.root / sandbox).exists()


def test_commands_die_with_a_worker_that_dies(local_backend: LocalBackend, sandbox: str) -> None:
    # No timeout can fire once the worker is gone: the commands must not outlive it.
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
        worker.kill()
        worker.wait()

    assert wait_until(
        lambda: processes_with("sleep 61.3") == processes_with("sleep 62.7") == [], timeout_s=5
    )


def test_a_fork_bomb_is_stopped_by_the_process_limit(
    local_backend: LocalBackend, sandbox: str
) -> None:
    counted = run(
        local_backend,
        sandbox,
        "python3 -c '\n"
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "print(forked)\n"
        "'",
    )
    # And the real thing, cut short by the timeout.
    with pytest.raises(CommandTimeout):
        run(
            local_backend,
            sandbox,
            "bomb_4e7a() { bomb_4e7a | bomb_4e7a & }; bomb_4e7a; sleep 60",
            timeout_s=3,
        )

    assert 0 < int(counted.stdout) < TEST_LIMITS["max_processes"]
    assert wait_until(lambda: processes_with("bomb_4e7a") == [], timeout_s=5)
    # The worker itself is untouched.
    assert subprocess.run(["true"], check=False).returncode == 0
    assert run(local_backend, sandbox, "echo fine").stdout == "fine\n"


def test_a_memory_hog_is_stopped_by_the_memory_limit(
    local_backend: LocalBackend, sandbox: str
) -> None:
    result = run(local_backend, sandbox, "python3 -c 'b = bytearray(2 * 1024**3); print(len(b))'")

    assert result.exit_code != 0
    assert "MemoryError" in result.stderr
    assert result.stdout == ""


def test_cpu_time_is_limited(local_backend: LocalBackend) -> None:
    backend = make_local_backend(local_backend.root, cpu_seconds=1)
    sandbox_id = backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    started = time.monotonic()

    result = backend.run(sandbox_id, "while :; do :; done", timeout_s=20)

    assert result.exit_code == 128 + 9  # SIGKILL at the hard limit
    assert time.monotonic() - started < 10


def test_file_size_and_tmpfs_are_limited(local_backend: LocalBackend, sandbox: str) -> None:
    file_limit = TEST_LIMITS["max_file_mb"]
    tmp_limit = TEST_LIMITS["tmp_mb"]

    big_file = run(
        local_backend,
        sandbox,
        f"head -c {file_limit + 1}M /dev/zero > big; echo $?; stat -c %s big",
    )
    big_tmp = run(local_backend, sandbox, f"head -c {tmp_limit + 1}M /dev/zero > /tmp/big")

    status, size = big_file.stdout.split()
    assert int(status) == 128 + 25  # SIGXFSZ
    assert int(size) == file_limit * 1024 * 1024
    assert big_tmp.exit_code != 0
    assert "No space left on device" in big_tmp.stderr


# -- links planted by the sandbox --------------------------------------------------------------


def test_read_file_does_not_follow_a_link_to_a_host_file(
    local_backend: LocalBackend, sandbox: str
) -> None:
    run(local_backend, sandbox, f"ln -s /etc/shadow out; ln -s {PROJECT_DIR}/pyproject.toml proj")

    for name in ("out", "proj"):
        with pytest.raises(BackendError) as caught:
            b"".join(local_backend.read_file(sandbox, f"{HOME}/{name}"))
        assert not isinstance(caught.value, SandboxNotFound)


def test_a_link_to_the_host_root_leads_nowhere(local_backend: LocalBackend, sandbox: str) -> None:
    escape = f"airlock-escape-{secrets.token_hex(6)}"
    run(local_backend, sandbox, "ln -s / root")

    with pytest.raises(BackendError):
        b"".join(local_backend.read_file(sandbox, f"{HOME}/root/etc/shadow"))
    with pytest.raises(BackendError):
        local_backend.write_file(sandbox, f"{HOME}/root/tmp/{escape}", b"escaped")
    with pytest.raises(BackendError):
        local_backend.list_files(sandbox, f"{HOME}/root")
    with pytest.raises(BackendError):
        local_backend.list_files(sandbox, f"{HOME}/root/etc")

    assert not Path("/tmp", escape).exists()
    listing = local_backend.list_files(sandbox, HOME)
    assert [(entry.name, entry.type) for entry in listing] == [("root", "symlink")]


def test_a_link_swapped_in_for_a_parent_directory_is_refused(
    local_backend: LocalBackend, sandbox: str
) -> None:
    escape = f"airlock-escape-{secrets.token_hex(6)}"
    local_backend.write_file(sandbox, f"{HOME}/d/inner.txt", b"inner")
    run(local_backend, sandbox, "rm -rf d && ln -s /tmp d")

    with pytest.raises(BackendError):
        local_backend.write_file(sandbox, f"{HOME}/d/{escape}", b"escaped")
    with pytest.raises(BackendError):
        b"".join(local_backend.read_file(sandbox, f"{HOME}/d/inner.txt"))

    assert not Path("/tmp", escape).exists()


def test_racing_link_swaps_never_redirect_file_calls(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # The sandbox flips d between a directory and a link to the host's /tmp as fast as it
    # can while the worker writes and reads through d: each call lands inside or fails.
    escape = f"airlock-race-{secrets.token_hex(6)}"
    local_backend.write_file(sandbox, f"{HOME}/d/probe", b"inside")
    flipper, _ = in_background(
        lambda: run(
            local_backend,
            sandbox,
            "end=$((SECONDS + 2)); while [ $SECONDS -lt $end ]; do "
            "mv d d.real; ln -s /tmp d; rm d; mv d.real d; done",
        )
    )
    outcomes = {"ok": 0, "refused": 0}
    while flipper.is_alive():
        try:
            local_backend.write_file(sandbox, f"{HOME}/d/{escape}", b"x")
            assert b"".join(local_backend.read_file(sandbox, f"{HOME}/d/probe")) == b"inside"
            outcomes["ok"] += 1
        except (BackendError, SandboxFileNotFound):
            outcomes["refused"] += 1
    flipper.join()

    assert not Path("/tmp", escape).exists()
    assert outcomes["ok"] > 5
    assert outcomes["refused"] > 5


def test_write_file_replaces_a_planted_link_instead_of_following_it(
    local_backend: LocalBackend, sandbox: str
) -> None:
    target = Path("/tmp", f"airlock-target-{secrets.token_hex(6)}")
    run(local_backend, sandbox, f"ln -s {target} out")

    local_backend.write_file(sandbox, f"{HOME}/out", b"mine")

    assert not target.exists()
    assert run(local_backend, sandbox, "test -L out || cat out").stdout == "mine"


def test_a_planted_fifo_does_not_hang_read_file(local_backend: LocalBackend, sandbox: str) -> None:
    run(local_backend, sandbox, "mkfifo pipe")

    # Opening a FIFO for reading blocks until a writer appears: in a thread, so a regression
    # fails here instead of hanging the suite.
    thread, outcome = in_background(
        lambda: b"".join(local_backend.read_file(sandbox, f"{HOME}/pipe"))
    )
    thread.join(5)

    assert not thread.is_alive()
    assert isinstance(outcome[0], BackendError)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/home/user/../../etc/passwd", "relative.txt", "/home/userx/f", "/tmp/f"],
)
def test_paths_outside_the_home_are_refused(
    local_backend: LocalBackend, sandbox: str, path: str
) -> None:
    with pytest.raises(BackendError) as caught:
        b"".join(local_backend.read_file(sandbox, path))
    assert not isinstance(caught.value, SandboxNotFound | SandboxFileNotFound)
    with pytest.raises(BackendError):
        local_backend.write_file(sandbox, path, b"x")


def test_files_written_by_the_worker_belong_to_the_sandbox_user(
    local_backend: LocalBackend, sandbox: str
) -> None:
    local_backend.write_file(sandbox, f"{HOME}/new/dir/file.txt", b"x")

    result = run(local_backend, sandbox, "stat -c '%U %a' new new/dir new/dir/file.txt")

    assert result.stdout.splitlines() == ["user 755", "user 755", "user 644"]


# -- lifecycle particular to this backend ------------------------------------------------------


def test_a_sandbox_past_its_timeout_is_gone(local_backend: LocalBackend) -> None:
    sandbox_id = local_backend.create(
        template="base", metadata={"short": "lived"}, envs={}, timeout_s=1
    ).sandbox_id
    time.sleep(1.1)

    assert local_backend.list_sandboxes({"short": "lived"}) == []
    with pytest.raises(SandboxNotFound):
        local_backend.get_info(sandbox_id)
    assert not (local_backend.root / sandbox_id).exists()
    assert local_backend.kill(sandbox_id) is False


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


def test_unknown_and_malformed_ids_are_not_found(local_backend: LocalBackend) -> None:
    for sandbox_id in ("0" * 20, "../../etc", ""):
        with pytest.raises(SandboxNotFound):
            local_backend.get_info(sandbox_id)
        assert local_backend.kill(sandbox_id) is False


def test_a_missing_cwd_is_a_backend_error(local_backend: LocalBackend, sandbox: str) -> None:
    with pytest.raises(BackendError, match="/home/user/nowhere"):
        run(local_backend, sandbox, "pwd", cwd=f"{HOME}/nowhere")


def test_check_reports_the_bwrap_version(local_backend: LocalBackend) -> None:
    summary = local_backend.check()

    assert summary.startswith("local: bubblewrap ")
    assert local_backend.list_sandboxes({"purpose": "check"}) == []


# -- a broken installation ---------------------------------------------------------------------


def test_missing_bwrap_names_the_fix(local_backend_root: Path) -> None:
    backend = make_local_backend(local_backend_root, bwrap_path="/nonexistent/bwrap")

    with pytest.raises(BackendError, match="apt-get install -y bubblewrap"):
        backend.create(template="base", metadata={}, envs={}, timeout_s=60)
    with pytest.raises(BackendError, match="apt-get install -y bubblewrap"):
        backend.check()


def test_a_bwrap_that_cannot_create_namespaces_names_the_fix(local_backend_root: Path) -> None:
    # What bwrap prints where unprivileged user namespaces are switched off.
    fake = local_backend_root / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "bubblewrap 0.8.0"; exit 0; }\n'
        "echo 'bwrap: setting up uid map: Permission denied' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    backend = make_local_backend(local_backend_root, bwrap_path=str(fake))
    sandbox_id = backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id

    with pytest.raises(BackendError, match="unprivileged user namespaces") as caught:
        backend.run(sandbox_id, "true", timeout_s=10)
    assert "uid map" in str(caught.value)


def test_a_root_worker_never_runs_sandboxes_as_root(local_backend_root: Path) -> None:
    if not WORKER_IS_ROOT:
        pytest.skip("only a root worker chooses the sandbox's host uid")
    with pytest.raises(BackendError):
        make_local_backend(local_backend_root, sandbox_uid=0)

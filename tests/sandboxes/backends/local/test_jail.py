"""The jail (sandboxes/backends/local/jail.py): what a hostile command must not reach.

Each test attacks from inside a real sandbox and checks the host side, so a regression in the
bwrap command line or the seccomp filter shows up as a failure, not as a silent pass.
"""

from __future__ import annotations

import base64
import io
import secrets
import socket
import zipfile
from pathlib import Path

import pytest

from sandboxes.backends.base import BackendError
from sandboxes.backends.local import LocalBackend
from sandboxes.backends.local.limits import SandboxCgroups
from tests.sandboxes.backends.fixtures_local import make_local_backend
from tests.sandboxes.backends.local.helpers import (
    HOME,
    PROJECT_DIR,
    WORKER_IS_ROOT,
    in_background,
    processes_with,
    run,
    status_field,
    wait_until,
)

pytestmark = pytest.mark.bwrap

# What every command starts with; bash adds PWD, SHLVL and _.
SANDBOX_ENV_NAMES = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "PWD", "SHLVL", "_"}


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


@pytest.mark.usefixtures("as_root")
def test_on_the_host_every_sandbox_process_is_unprivileged(
    local_backend: LocalBackend, sandbox: str
) -> None:
    marker = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"
    run(local_backend, sandbox, f"sleep {marker} & true")
    assert wait_until(lambda: bool(processes_with(f"sleep {marker}", exactly=True)))

    # Every process of the sandbox (its cgroups hold them all), and bwrap above them.
    cgroups = SandboxCgroups.from_json((local_backend.root / sandbox / "cgroups.json").read_bytes())
    pids = cgroups.pids()
    [bwrap_pid1] = [pid for pid in pids if int(status_field(pid, "PPid")[0]) not in pids]
    outside = int(status_field(bwrap_pid1, "PPid")[0])

    # bwrap's pid 1, the init, the standby shell of the next command, the sleep (whose shell
    # has exited)
    assert len(pids) == 4
    expected = local_backend.host_uid if WORKER_IS_ROOT else None
    for pid in [*pids, outside]:
        uids = {int(uid) for uid in status_field(pid, "Uid")}
        assert 0 not in uids, f"pid {pid} runs with host uids {uids}"
        if expected is not None:
            assert uids == {expected}
    assert processes_with(f"sleep {marker}", exactly=True)[0] in pids


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
    # bwrap's pid 1, the sandbox's init, the next command's standby shell, the shell, the
    # loop's subshell: nothing of the host.
    assert len(pids) <= 7
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


def test_run_envs_reach_the_command_exactly_and_never_change_what_runs(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # Names the sandbox's own shell uses on the way to the command, and values no shell
    # quoting survives by accident.
    tricky = {
        "cmd": "echo hijacked",
        "vars": "x",
        "kv": "y",
        "cwd": "/",
        "IFS": ":",
        "MULTI": "a\nb \"q\" 'r' $HOME \\ ;|&",
        "EMPTY": "",
    }

    result = run(
        local_backend,
        sandbox,
        'printf "%s|" "$cmd" "$vars" "$kv" "$cwd" "$MULTI" "$EMPTY"; pwd',
        envs=tricky,
    )

    assert result.stdout == "echo hijacked|x|y|/|a\nb \"q\" 'r' $HOME \\ ;|&||/home/user\n"


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


def test_tmp_lasts_as_long_as_the_sandbox(local_backend: LocalBackend) -> None:
    # A live machine (SPEC §14): /tmp is the sandbox's, from one command to the next, and
    # another sandbox's /tmp is another one.
    first = local_backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    second = local_backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    run(local_backend, first, "echo leftover > /tmp/leftover")

    assert run(local_backend, first, "cat /tmp/leftover").stdout == "leftover\n"
    assert run(local_backend, second, "ls -A /tmp").stdout == ""


# -- the seccomp filter ------------------------------------------------------------------------

SYSCALL_PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
calls = {
    "unshare": (272, 0x10000000),           # unshare(CLONE_NEWUSER)
    "keyctl": (250, 0, 0, 0, 0, 0),         # keyctl(KEYCTL_GET_KEYRING_ID, 0, ...)
    "bpf": (321, 0, 0, 0),                  # bpf(BPF_MAP_CREATE, NULL, 0)
    "add_key": (248, 0, 0, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
    "io_uring_setup": (425, 1, 0),
    "userfaultfd": (323, 0),
    "mount": (165, 0, 0, 0, 0, 0),
}
for name, (number, *args) in calls.items():
    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    print(name, result, errno.errorcode.get(ctypes.get_errno(), "0"))
"""


def test_denied_system_calls_fail_with_eperm(local_backend: LocalBackend, sandbox: str) -> None:
    if not local_backend.limits()[4].enforced:
        pytest.fail("seccomp is not available on this host")
    local_backend.write_file(sandbox, f"{HOME}/probe.py", SYSCALL_PROBE.encode())

    result = run(local_backend, sandbox, "python3 probe.py; grep Seccomp /proc/self/status")

    lines = result.stdout.splitlines()
    outcomes = {line.split()[0]: line.split()[1:] for line in lines[:-2]}
    assert outcomes == {name: ["-1", "EPERM"] for name in outcomes}
    assert set(outcomes) >= {"unshare", "keyctl", "bpf"}
    assert lines[-2:] == ["Seccomp:\t2", "Seccomp_filters:\t1"]


def test_clone3_answers_enosys_so_threads_fall_back_to_clone(
    local_backend: LocalBackend, sandbox: str
) -> None:
    result = run(
        local_backend,
        sandbox,
        'python3 -c \'import threading; t = threading.Thread(target=print, args=("thread",)); '
        "t.start(); t.join()'",
    )

    assert result.stdout == "thread\n"


# -- ordinary programs still work --------------------------------------------------------------


def test_python_sh_and_coreutils_work(local_backend: LocalBackend, sandbox: str) -> None:
    result = run(
        local_backend,
        sandbox,
        "python3 -c 'print(sum(range(10)))'; sh -c 'echo sh'; "
        "seq 3 | sort -r | tr '\\n' ' '; echo; printf 'x' | sha256sum | cut -c1-8; "
        "mkdir -p a/b && cp /etc/hostname a/b/ && ls -R a | wc -l",
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["45", "sh", "3 2 1 ", "2d711642", "5"]


def _pure_python_wheel() -> bytes:
    """A minimal wheel of one module, built here rather than shipped."""
    files = {
        "hello_airlock.py": "def greet():\n    return 'hello from a wheel'\n",
        "hello_airlock-1.0.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: hello-airlock\nVersion: 1.0\n"
        ),
        "hello_airlock-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: airlock-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    import hashlib

    record = []
    for name, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content.encode()).digest())
        record.append(f"{name},sha256={digest.rstrip(b'=').decode()},{len(content.encode())}")
    record.append("hello_airlock-1.0.dist-info/RECORD,,")
    files["hello_airlock-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, content in files.items():
            wheel.writestr(name, content)
    return buffer.getvalue()


def test_pip_installs_a_local_pure_python_wheel(local_backend: LocalBackend, sandbox: str) -> None:
    local_backend.write_file(
        sandbox, f"{HOME}/hello_airlock-1.0-py3-none-any.whl", _pure_python_wheel()
    )

    result = run(
        local_backend,
        sandbox,
        "python3 -m pip install --quiet --no-index --no-cache-dir --target lib "
        "hello_airlock-1.0-py3-none-any.whl && "
        "PYTHONPATH=lib python3 -c 'import hello_airlock; print(hello_airlock.greet())'",
        timeout_s=120,
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "hello from a wheel"


def test_gcc_compiles_and_runs_a_c_file(local_backend: LocalBackend, sandbox: str) -> None:
    local_backend.write_file(
        sandbox,
        f"{HOME}/hello.c",
        b'#include <stdio.h>\nint main(void) { printf("compiled %d\\n", 6 * 7); return 0; }\n',
    )

    result = run(local_backend, sandbox, "gcc -O1 -o hello hello.c && ./hello", timeout_s=120)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == "compiled 42\n"


# -- a broken installation ---------------------------------------------------------------------


def test_missing_bwrap_names_the_fix(local_backend_root: Path) -> None:
    backend = make_local_backend(local_backend_root, bwrap_path="/nonexistent/bwrap")

    with pytest.raises(BackendError, match="apt-get install -y bubblewrap"):
        backend.create(template="base", metadata={}, envs={}, timeout_s=60)
    with pytest.raises(BackendError, match="apt-get install -y bubblewrap"):
        backend.check()


def test_a_bwrap_that_cannot_create_namespaces_names_the_fix(local_backend_root: Path) -> None:
    # What bwrap prints where unprivileged user namespaces are switched off. The sandbox's
    # bwrap starts at create now (a live sandbox), so create is where it is said.
    fake = local_backend_root / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "bubblewrap 0.8.0"; exit 0; }\n'
        "echo 'bwrap: setting up uid map: Permission denied' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    backend = make_local_backend(local_backend_root, bwrap_path=str(fake))

    with pytest.raises(BackendError, match="unprivileged user namespaces") as caught:
        backend.create(template="base", metadata={}, envs={}, timeout_s=60)
    assert "uid map" in str(caught.value)
    assert backend.list_sandboxes({}) == []
    assert [p.name for p in local_backend_root.iterdir() if not p.name.startswith(".")] == ["bwrap"]


def test_a_root_worker_never_runs_sandboxes_as_root(local_backend_root: Path) -> None:
    if not WORKER_IS_ROOT:
        pytest.skip("only a root worker chooses the sandbox's host uid")
    with pytest.raises(BackendError):
        make_local_backend(local_backend_root, sandbox_uid=0)

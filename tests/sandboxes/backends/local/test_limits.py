"""Limits the kernel enforces per sandbox (sandboxes/backends/local/limits.py): memory,
processes, CPU and disk for all of a sandbox's processes together, and what happens where
the host cannot enforce one. Real cgroups, real loop devices: CI runs as root."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxes.backends.base import BackendError, CommandTimeout
from sandboxes.backends.local import LocalBackend
from sandboxes.backends.local.limits import Group, SandboxCgroups, mounted_hierarchies
from tests.sandboxes.backends.fixtures_local import TEST_LIMITS, make_local_backend
from tests.sandboxes.backends.local.helpers import processes_with, run, wait_until

pytestmark = [pytest.mark.bwrap, pytest.mark.usefixtures("as_root")]

MIB = 1024 * 1024


def cgroups_of(backend: LocalBackend, sandbox_id: str) -> SandboxCgroups:
    return SandboxCgroups.from_json((backend.root / sandbox_id / "cgroups.json").read_bytes())


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def lowest_while(action: threading.Thread, sample: Callable[[], int]) -> int:
    lowest = sample()
    while action.is_alive():
        lowest = min(lowest, sample())
        time.sleep(0.01)
    return lowest


# -- what is in force --------------------------------------------------------------------------


def test_every_limit_is_enforced_here(local_backend: LocalBackend) -> None:
    report = {limit.name: limit for limit in local_backend.limits()}

    assert list(report) == [
        "memory", "processes", "cpu", "disk", "seccomp", "command kill", "pause",
    ]  # fmt: skip
    assert [name for name, limit in report.items() if not limit.enforced] == []
    assert "256 MB per sandbox" in report["memory"].detail
    assert "64 processes" in report["processes"].detail
    assert "1 CPUs per sandbox" in report["cpu"].detail
    assert "128 MB for home and /tmp" in report["disk"].detail
    assert local_backend.missing_limits() == []


def test_the_sandbox_cgroups_hold_the_limits(local_backend: LocalBackend, sandbox: str) -> None:
    groups = cgroups_of(local_backend, sandbox).groups

    memory, pids, cpu = groups["memory"], groups["pids"], groups["cpu"]
    limit = memory.read("memory.max" if memory.version == 2 else "memory.limit_in_bytes")
    assert int(limit) == 256 * MIB
    assert pids.read("pids.max").strip() == "64"
    if cpu.version == 2:
        assert cpu.read("cpu.max").split() == ["100000", "100000"]
    else:
        assert cpu.read("cpu.cfs_quota_us").strip() == "100000"
        assert cpu.read("cpu.cfs_period_us").strip() == "100000"
    # Every process of the sandbox is in each of them.
    marker = "sleep 41.5"
    run(local_backend, sandbox, f"{marker} &")
    assert wait_until(lambda: bool(processes_with(marker, exactly=True)))
    [pid] = processes_with(marker, exactly=True)
    for group in groups.values():
        assert pid in group.pids()


# -- memory ------------------------------------------------------------------------------------


def test_a_memory_hog_is_stopped_by_the_memory_limit(
    local_backend: LocalBackend, sandbox: str
) -> None:
    result = run(local_backend, sandbox, "python3 -c 'b = bytearray(2 * 1024**3); print(len(b))'")

    # The OOM killer acts inside the sandbox's cgroup (no per-process RLIMIT_AS any more,
    # which failed the allocation with MemoryError), and the command says what happened.
    assert result.exit_code == 128 + 9
    assert "out of memory" in result.stderr
    assert "256 MB limit" in result.stderr
    assert result.stdout == ""


def test_a_memory_bomb_of_several_processes_is_killed_with_the_host_barely_moved(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # Five processes of 400 MB each: none is over the limit alone, together they are.
    bomb = (
        "for i in 1 2 3 4 5; do "
        "python3 -c 'import time; b = bytearray(400 * 1024**2); time.sleep(20)' & "
        "done; wait"
    )
    before = available_memory()
    outcome: list[object] = []
    action = threading.Thread(target=lambda: outcome.append(run(local_backend, sandbox, bomb)))
    action.start()
    lowest = lowest_while(action, available_memory)

    peak = cgroups_of(local_backend, sandbox).memory_peak()
    assert peak is not None and peak <= 256 * MIB
    # Without the cgroup the host would have given it 2 GB.
    assert before - lowest < 700 * MIB
    [result] = outcome
    assert "out of memory" in result.stderr  # type: ignore[attr-defined]
    assert run(local_backend, sandbox, "echo still here").stdout == "still here\n"


# -- processes ---------------------------------------------------------------------------------


# Forks until it cannot; the children end with it (when the pipe's last writer goes), so the
# sandbox's processes are free again once it returns.
FORK_COUNTER = (
    "python3 -c '\n"
    "import os\n"
    "forked = 0\n"
    "r, w = os.pipe()\n"
    "for _ in range(500):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError as exc:\n"
    "        print(exc.errno)\n"
    "        break\n"
    "    if pid == 0:\n"
    "        os.close(w)\n"
    "        os.read(r, 1)\n"
    "        os._exit(0)\n"
    "    forked += 1\n"
    "print(forked)\n"
    "'"
)


def test_a_fork_bomb_is_stopped_by_the_process_limit(
    local_backend: LocalBackend, sandbox: str
) -> None:
    counted = run(local_backend, sandbox, FORK_COUNTER)
    # And the real thing, cut short by the timeout.
    with pytest.raises(CommandTimeout):
        run(
            local_backend,
            sandbox,
            "bomb_4e7a() { bomb_4e7a | bomb_4e7a & }; bomb_4e7a; sleep 60",
            timeout_s=3,
        )

    errno_seen, forked = counted.stdout.split()
    assert errno_seen == "11"  # EAGAIN
    assert 0 < int(forked) < TEST_LIMITS["max_processes"]
    assert wait_until(lambda: processes_with("bomb_4e7a") == [], timeout_s=5)
    # The worker itself is untouched.
    assert subprocess.run(["true"], check=False).returncode == 0
    assert run(local_backend, sandbox, "echo fine").stdout == "fine\n"


def test_a_fork_bomb_in_one_sandbox_leaves_another_its_processes(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # Every sandbox runs as the same host user: the limit is per sandbox (a pids cgroup),
    # not per user (RLIMIT_NPROC), so the bomb cannot eat the other sandbox's budget.
    other = local_backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    local_backend.start_command(sandbox, "bomb_9c1d() { bomb_9c1d | bomb_9c1d & }; bomb_9c1d")
    assert wait_until(
        lambda: (
            len(cgroups_of(local_backend, sandbox).groups["pids"].pids())
            >= TEST_LIMITS["max_processes"] - 2
        ),
        timeout_s=10,
    )

    result = run(local_backend, other, FORK_COUNTER.replace("500", "40"))

    assert result.stdout.split() == ["40"]
    local_backend.kill(sandbox)
    assert wait_until(lambda: processes_with("bomb_9c1d") == [], timeout_s=5)


# -- cpu ---------------------------------------------------------------------------------------


def test_cpu_time_is_limited(local_backend: LocalBackend) -> None:
    backend = make_local_backend(local_backend.root, cpu_seconds=1)
    sandbox_id = backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    started = time.monotonic()

    result = backend.run(sandbox_id, "while :; do :; done", timeout_s=20)

    assert result.exit_code == 128 + 9  # SIGKILL at the hard limit
    assert time.monotonic() - started < 10


# -- disk --------------------------------------------------------------------------------------


def test_file_size_is_limited(local_backend: LocalBackend, sandbox: str) -> None:
    file_limit = TEST_LIMITS["max_file_mb"]

    big_file = run(
        local_backend,
        sandbox,
        f"head -c {file_limit + 1}M /dev/zero > big; echo $?; stat -c %s big",
    )

    status, size = big_file.stdout.split()
    assert int(status) == 128 + 25  # SIGXFSZ
    assert int(size) == file_limit * MIB


def test_dev_shm_is_a_small_tmpfs(local_backend: LocalBackend, sandbox: str) -> None:
    tmp_limit = TEST_LIMITS["tmp_mb"]

    big_shm = run(local_backend, sandbox, f"head -c {tmp_limit + 1}M /dev/zero > /dev/shm/big")

    assert big_shm.exit_code != 0
    assert "No space left on device" in big_shm.stderr


def test_a_disk_fill_stops_at_the_quota_with_the_host_disk_barely_moved(
    local_backend: LocalBackend, sandbox: str
) -> None:
    # Home and /tmp share the sandbox's quota; several files, none over the per-file limit.
    host = os.statvfs(local_backend.root)
    free_before = host.f_bavail * host.f_frsize

    result = run(
        local_backend,
        sandbox,
        "for i in 1 2 3; do head -c 60M /dev/zero > home-$i || echo full; done; "
        "for i in 1 2 3; do head -c 60M /dev/zero > /tmp/tmp-$i || echo full; done; "
        "df --output=size,used -B1M /home/user /tmp | tail -n 2",
        timeout_s=60,
    )

    assert "No space left on device" in result.stderr
    assert "full" in result.stdout
    host = os.statvfs(local_backend.root)
    rise = free_before - host.f_bavail * host.f_frsize
    image = local_backend.root / sandbox / "disk.img"
    assert image.stat().st_blocks * 512 <= TEST_LIMITS["disk_mb"] * MIB
    assert rise < (TEST_LIMITS["disk_mb"] + 64) * MIB  # 360 MB were asked for
    # The sandbox can make room and write again.
    assert run(local_backend, sandbox, "rm -f home-* /tmp/tmp-*; echo ok > f; cat f").stdout == (
        "ok\n"
    )


# -- where a limit cannot be enforced ----------------------------------------------------------


@pytest.fixture
def backend_without_cgroups(local_backend: LocalBackend) -> LocalBackend:
    # A cgroup parent nobody can create (below a file): every cgroup role is unavailable,
    # as on a host where the worker may not make cgroups.
    return make_local_backend(local_backend.root, cgroup_parent="cgroup.procs/airlock")


def test_the_report_names_each_missing_limit_and_what_happens_instead(
    backend_without_cgroups: LocalBackend,
) -> None:
    report = {limit.name: limit for limit in backend_without_cgroups.limits()}

    missing = [name for name, limit in report.items() if not limit.enforced]
    assert missing == ["memory", "processes", "cpu", "command kill", "pause"]
    assert "RLIMIT_AS" in report["memory"].detail
    assert "RLIMIT_NPROC" in report["processes"].detail
    assert "every core" in report["cpu"].detail
    assert "process group" in report["command kill"].detail
    assert backend_without_cgroups.supports_pause is False


def test_without_cgroups_the_per_process_stand_ins_apply(
    backend_without_cgroups: LocalBackend,
) -> None:
    sandbox_id = backend_without_cgroups.create(
        template="base", metadata={}, envs={}, timeout_s=60
    ).sandbox_id

    hog = backend_without_cgroups.run(
        sandbox_id, "python3 -c 'b = bytearray(2 * 1024**3)'", timeout_s=20
    )
    with pytest.raises(CommandTimeout):
        backend_without_cgroups.run(sandbox_id, "sleep 77.7 & sleep 60", timeout_s=1)

    assert "MemoryError" in hog.stderr  # RLIMIT_AS
    assert wait_until(lambda: processes_with("sleep 77.7") == [])  # its process group
    backend_without_cgroups.kill(sandbox_id)


def test_require_limits_refuses_to_run_without_all_of_them(local_backend: LocalBackend) -> None:
    strict = make_local_backend(
        local_backend.root, cgroup_parent="cgroup.procs/airlock", require_limits=True
    )

    with pytest.raises(BackendError, match="SANDBOX_LOCAL_REQUIRE_LIMITS") as caught:
        strict.create(template="base", metadata={}, envs={}, timeout_s=60)
    with pytest.raises(BackendError, match="SANDBOX_LOCAL_REQUIRE_LIMITS"):
        strict.check()
    assert "memory" in str(caught.value)
    assert strict.list_sandboxes({}) == []
    # Where every limit is enforced, the same setting lets sandboxes run.
    fine = make_local_backend(local_backend.root, require_limits=True)
    sandbox_id = fine.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id
    assert fine.run(sandbox_id, "echo ok", timeout_s=10).stdout == "ok\n"


# -- cgroup v1 and v2 --------------------------------------------------------------------------


@pytest.mark.parametrize("prefer", [1, 2])
def test_each_cgroup_version_tracks_and_kills_commands(
    local_backend: LocalBackend, prefer: int
) -> None:
    versions = {hierarchy.version for hierarchy in mounted_hierarchies()}
    if prefer not in versions:
        pytest.fail(f"this host has no cgroup v{prefer} hierarchy")
    backend = make_local_backend(local_backend.root, cgroup_prefer=prefer)
    sandbox_id = backend.create(template="base", metadata={}, envs={}, timeout_s=60).sandbox_id

    # setsid leaves the command's process group; its cgroup it cannot leave.
    with pytest.raises(CommandTimeout):
        backend.run(sandbox_id, "setsid sleep 88.1 & sleep 60", timeout_s=1)
    backend.pause(sandbox_id)
    state = cgroups_of(backend, sandbox_id).groups["track"]
    frozen = (
        "frozen 1" in state.read("cgroup.events")
        if state.version == 2
        else state.read("freezer.state").strip() == "FROZEN"
    )
    backend.resume(sandbox_id, timeout_s=60)

    assert state.version == prefer
    assert wait_until(lambda: processes_with("sleep 88.1") == [])
    assert frozen
    assert backend.run(sandbox_id, "echo thawed", timeout_s=10).stdout == "thawed\n"
    backend.kill(sandbox_id)


# -- cgroup v2 controllers ---------------------------------------------------------------------
# This host has v2 mounted with no controllers (they are all in v1), so the v2 memory, pids
# and cpu files cannot be written for real here; what is written, and read back, is checked
# on a plain directory standing in for a v2 cgroup.

PURE_V2_MOUNTINFO = (
    "24 29 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "25 29 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
)
HYBRID_MOUNTINFO = (
    "30 25 0:26 / /run/airlock-sample/unified rw,relatime - cgroup2 cgroup2 rw\n"
    "31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "33 25 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
)


def test_the_hierarchies_are_read_from_mountinfo() -> None:
    [pure] = mounted_hierarchies(PURE_V2_MOUNTINFO)
    hybrid = mounted_hierarchies(HYBRID_MOUNTINFO)

    assert (pure.version, pure.mount) == (2, Path("/sys/fs/cgroup"))
    assert [(h.version, str(h.mount), sorted(h.controllers)) for h in hybrid] == [
        (2, "/run/airlock-sample/unified", []),  # controllers: read from the mount
        (1, "/sys/fs/cgroup/memory", ["memory"]),
        (1, "/sys/fs/cgroup/cpu,cpuacct", ["cpu"]),
    ]


def test_v2_limits_are_written_in_the_v2_format(tmp_path: Path) -> None:
    group = Group(tmp_path / "sandbox", 2)
    cgroups = SandboxCgroups({"memory": group, "pids": group, "cpu": group})

    cgroups.create(memory_mb=256, max_processes=64, cpus=1.5)
    (group.path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (group.path / "memory.peak").write_text("1048576\n")

    assert (group.path / "memory.max").read_text() == str(256 * MIB)
    assert (group.path / "pids.max").read_text() == "64"
    assert (group.path / "cpu.max").read_text() == "150000 100000"
    assert cgroups.oom_kills() == 2
    assert cgroups.memory_peak() == MIB


@pytest.mark.parametrize("gone", [errno.ENOENT, errno.ENODEV])
def test_killing_a_group_that_goes_meanwhile_is_nothing_to_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gone: int
) -> None:
    """A command's cgroup removed as it is killed (its last process ended, and its owner
    removed it): the kernel answers the write with ENOENT, or ENODEV while the group's files
    are torn down. Any other error still surfaces."""
    from sandboxes.backends.local import limits

    group = Group(tmp_path, 2)
    (tmp_path / "cgroup.kill").write_text("")

    def failing(self: Group, name: str, value: str) -> None:
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(Group, "write", failing)
    failure = gone
    limits.kill_group(group)  # nothing raised
    failure = errno.EACCES
    with pytest.raises(PermissionError):
        limits.kill_group(group)

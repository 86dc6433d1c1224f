"""Aggregate limits the kernel enforces on a sandbox: its cgroups (v2 and v1) and its disk.

Every sandbox gets a cgroup per role, each in the hierarchy that can serve it on this host:

    memory   memory.max (v2) / memory.limit_in_bytes (v1), swap included where accounted
    pids     pids.max: processes and threads, per sandbox
    cpu      cpu.max (v2) / cpu.cfs_quota_us (v1)
    track    where each command gets a cgroup of its own (named by its id), so that a kill or
             timeout reaches everything it started, even what called setsid; and where the
             sandbox is frozen for pause: cgroup v2's core (cgroup.kill, cgroup.freeze, no
             controller needed) or the v1 freezer

cgroup v2 is preferred; a role falls back to a v1 hierarchy when the v2 one cannot serve it
(on a hybrid host v2 is mounted at /sys/fs/cgroup/unified with no controllers). The sandbox's
home and /tmp live on a sparse ext4 image of its own, loop-mounted, so ENOSPC is the sandbox's
alone. What cannot be enforced here is reported (``HostLimits.report``), never assumed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import secrets
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["memory", "pids", "cpu", "track"]
ROLES: tuple[Role, ...] = ("memory", "pids", "cpu", "track")
_V1_CONTROLLER: dict[Role, str] = {
    "memory": "memory",
    "pids": "pids",
    "cpu": "cpu",
    "track": "freezer",
}
CPU_PERIOD_US = 100_000
_SETTLE_S = 5.0  # how long freezing, or emptying a killed cgroup, may take

# -- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    version: Literal[1, 2]
    mount: Path
    controllers: frozenset[str]


def mounted_hierarchies(mountinfo: str | None = None) -> list[Hierarchy]:
    """The cgroup hierarchies mounted in this mount namespace (v2 first)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    found: list[Hierarchy] = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fstype, _, options = [*after.split(), "", "", ""][:3]
        mount = Path(_unescape(before.split()[4]))
        if fstype == "cgroup2":
            try:
                names = (mount / "cgroup.controllers").read_text().split()
            except OSError:
                names = []
            found.append(Hierarchy(2, mount, frozenset(names)))
        elif fstype == "cgroup":
            names = [name for name in options.split(",") if name in _V1_CONTROLLER.values()]
            if names:
                found.append(Hierarchy(1, mount, frozenset(names)))
    return sorted(found, key=lambda hierarchy: hierarchy.version, reverse=True)


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    return path.encode().decode("unicode_escape")


# -- what a sandbox's cgroups are --------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One cgroup directory and the version of the hierarchy it is in."""

    path: Path
    version: Literal[1, 2]

    def child(self, name: str) -> Group:
        return Group(self.path / name, self.version)

    def write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def pids(self) -> list[int]:
        """Every process in this cgroup and below."""
        found: list[int] = []
        with contextlib.suppress(FileNotFoundError):
            for directory, _, _ in os.walk(self.path):
                with contextlib.suppress(FileNotFoundError):
                    found += [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
        return found

    def attach(self, pid: int) -> None:
        self.write("cgroup.procs", str(pid))


@dataclass(frozen=True)
class SandboxCgroups:
    """A sandbox's cgroup per role (several roles may share one directory)."""

    groups: dict[Role, Group] = field(default_factory=dict)

    def directories(self) -> list[Group]:
        unique: dict[Path, Group] = {}
        for group in self.groups.values():
            unique.setdefault(group.path, group)
        return list(unique.values())

    def to_json(self) -> bytes:
        return json.dumps(
            {role: [str(g.path), g.version] for role, g in self.groups.items()}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SandboxCgroups:
        data = json.loads(raw)
        return cls({role: Group(Path(path), version) for role, (path, version) in data.items()})

    # -- life ----------------------------------------------------------------------------------

    def create(
        self,
        *,
        memory_mb: int,
        max_processes: int,
        cpus: float,
        delegate_to: tuple[int, int | None] | None = None,
    ) -> None:
        """Make the directories and set the limits. ``delegate_to`` (a host uid and gid):
        the tracking cgroup is handed to that user, so that the sandbox's init can make its
        commands' cgroups below it; the limits stay root's."""
        for group in self.directories():
            group.path.mkdir()
        track = self.groups.get("track")
        if track is not None and delegate_to is not None:
            uid, gid = delegate_to
            for path in (track.path, track.path / "cgroup.procs"):
                os.chown(path, uid, gid if gid is not None else uid)
        if (memory := self.groups.get("memory")) is not None:
            limit = str(memory_mb * 1024 * 1024)
            if memory.version == 2:
                memory.write("memory.max", limit)
                if memory.has("memory.swap.max"):
                    memory.write("memory.swap.max", "0")
            else:
                memory.write("memory.limit_in_bytes", limit)
                if memory.has("memory.memsw.limit_in_bytes"):  # swap accounting is on
                    memory.write("memory.memsw.limit_in_bytes", limit)
        if (pids := self.groups.get("pids")) is not None:
            pids.write("pids.max", str(max_processes))
        if (cpu := self.groups.get("cpu")) is not None:
            quota = max(1000, math.ceil(cpus * CPU_PERIOD_US))
            if cpu.version == 2:
                cpu.write("cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                cpu.write("cpu.cfs_period_us", str(CPU_PERIOD_US))
                cpu.write("cpu.cfs_quota_us", str(quota))

    def attach(self, pid: int) -> None:
        for group in self.directories():
            group.attach(pid)

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this sandbox so far."""
        memory = self.groups.get("memory")
        if memory is None:
            return 0
        name = "memory.events" if memory.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in memory.read(name).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def memory_peak(self) -> int | None:
        memory = self.groups.get("memory")
        if memory is None:
            return None
        name = "memory.peak" if memory.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(memory.read(name))
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        found: set[int] = set()
        for group in self.directories():
            found.update(group.pids())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process of the sandbox."""
        track = self.groups.get("track")
        if track is not None:
            with contextlib.suppress(OSError):  # a freezer that will not settle: one by one
                kill_group(track)
        for group in self.directories():
            for pid in group.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def wait_empty(self, timeout_s: float = _SETTLE_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def remove(self) -> bool:
        """Remove every directory (command groups first). False if one is still in use."""
        removed = True
        for group in self.directories():
            if not group.path.exists():
                continue
            for child in sorted(group.path.iterdir(), reverse=True):
                if child.is_dir():
                    removed &= _rmdir(child)
            removed &= _rmdir(group.path)
        return removed

    # -- commands ------------------------------------------------------------------------------

    def command_group(self, cid: str) -> Group | None:
        track = self.groups.get("track")
        return None if track is None else track.child(cid)

    # -- pause ---------------------------------------------------------------------------------

    def freeze(self, frozen: bool) -> None:
        track = self.groups.get("track")
        if track is None:
            raise OSError(errno.ENOTSUP, "no freezer for this sandbox")
        set_frozen(track, frozen)


def _rmdir(path: Path) -> bool:
    for _ in range(50):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return False
            time.sleep(0.01)  # its last process is still exiting
    return False


def set_frozen(group: Group, frozen: bool, *, wait: bool = True) -> None:
    if group.version == 2:
        group.write("cgroup.freeze", "1" if frozen else "0")
        if wait:
            _wait(lambda: ("frozen 1" in group.read("cgroup.events").splitlines()) == frozen)
    else:
        group.write("freezer.state", "FROZEN" if frozen else "THAWED")
        wanted = "FROZEN" if frozen else "THAWED"
        if wait:
            _wait(lambda: group.read("freezer.state").strip() == wanted)


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _SETTLE_S
    while not condition():
        if time.monotonic() > deadline:
            raise OSError(errno.ETIMEDOUT, "the cgroup did not settle")
        time.sleep(0.001)


# A cgroup removed while it is written to (its last process ended and its owner removed it):
# the write fails with ENOENT, or ENODEV once its files are being torn down.
_GONE = (errno.ENOENT, errno.ENODEV)


def kill_group(group: Group) -> None:
    """SIGKILL everything in ``group`` and below, forkers included; a group that is gone (or
    goes meanwhile) has nothing left to kill."""
    try:
        _kill_group(group)
    except OSError as exc:
        if exc.errno not in _GONE:
            raise


def _kill_group(group: Group) -> None:
    if not group.path.exists():
        return
    if group.version == 2 and group.has("cgroup.kill"):
        group.write("cgroup.kill", "1")
        return
    # Frozen, nothing can fork between listing and killing; a frozen process dies once thawed.
    # (Not waited for: below a paused sandbox, it stays frozen, and dies at resume or kill.)
    set_frozen(group, True)
    try:
        for pid in group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        set_frozen(group, False, wait=False)


# -- what this host can enforce ----------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """One line of the report: a limit, how it is enforced, or what happens instead."""

    name: str
    enforced: bool
    detail: str


class HostCgroups:
    """Which hierarchy serves each role on this host, found by trying (once per backend)."""

    def __init__(self, *, parent: str, prefer: Literal[1, 2] = 2) -> None:
        self.parent = parent.strip("/")
        self.prefer = prefer
        self.parents: dict[Role, Group] = {}
        self.problems: dict[Role, str] = {}
        self.can_kill_natively = False
        self._probed = False

    def probe(self) -> None:
        if self._probed:
            return
        hierarchies = mounted_hierarchies()
        for role in ROLES:
            reasons = []
            for hierarchy in sorted(hierarchies, key=lambda h: h.version != self.prefer):
                try:
                    self.parents[role] = self._prepare(role, hierarchy)
                    break
                except _Unusable as exc:
                    reasons.append(str(exc))
            else:
                self.problems[role] = "; ".join(reasons) or "no cgroup hierarchy is mounted"
        track = self.parents.get("track")
        self.can_kill_natively = track is not None and track.version == 2
        self._probed = True

    def _prepare(self, role: Role, hierarchy: Hierarchy) -> Group:
        """The parent cgroup of every sandbox for ``role`` in ``hierarchy``, made ready."""
        controller = _V1_CONTROLLER[role]
        if hierarchy.version == 1 and controller not in hierarchy.controllers:
            raise _Unusable(f"v1: no {controller} hierarchy")
        if hierarchy.version == 2 and role != "track" and role not in hierarchy.controllers:
            raise _Unusable(f"v2: the {role} controller is not available at {hierarchy.mount}")
        parent = Group(hierarchy.mount / self.parent, hierarchy.version)
        try:
            parent.path.mkdir(parents=True, exist_ok=True)
            if hierarchy.version == 2 and role != "track":
                # Each level down to the parent hands the controller to its children.
                level = hierarchy.mount
                for part in [*Path(self.parent).parts]:
                    Group(level, 2).write("cgroup.subtree_control", f"+{role}")
                    level = level / part
                parent.write("cgroup.subtree_control", f"+{role}")
            probe = parent.child(f"probe-{secrets.token_hex(4)}")
            try:
                SandboxCgroups({role: probe}).create(memory_mb=64, max_processes=8, cpus=1)
                if role == "track" and hierarchy.version == 2 and not probe.has("cgroup.freeze"):
                    raise _Unusable(f"v2 at {hierarchy.mount}: no cgroup.freeze (kernel < 5.2)")
            finally:
                _rmdir(probe.path)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EBUSY:
                hint = (
                    " (cgroup v2 lets no cgroup with processes of its own hand out controllers:"
                    " run the worker in a leaf cgroup, or set SANDBOX_LOCAL_CGROUP to a"
                    " delegated subtree)"
                )
            elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                hint = " (the worker needs root, or a delegated cgroup: SANDBOX_LOCAL_CGROUP)"
            where = f"v{hierarchy.version} at {parent.path}"
            raise _Unusable(f"{where}: {exc.strerror or exc}{hint}") from None
        return parent

    def for_sandbox(self, sandbox_id: str) -> SandboxCgroups:
        self.probe()
        return SandboxCgroups({role: p.child(sandbox_id) for role, p in self.parents.items()})


class _Unusable(Exception):
    pass


# -- the disk ----------------------------------------------------------------------------------

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_AUTOCLEAR = 4
_MKFS_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
_libc.mount.argtypes += [ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mkfs_path() -> str | None:
    return shutil.which("mkfs.ext4", path=os.pathsep.join(_MKFS_DIRS))


def disk_problem() -> str | None:
    """Why a quota'd disk per sandbox cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "the worker is not root (loop devices and mounts need root)"
    if mkfs_path() is None:
        return "mkfs.ext4 not found (apt-get install e2fsprogs)"
    try:
        os.close(os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"/dev/loop-control: {exc.strerror} (the host or container must allow loop devices)"
    return None


def make_disk(image: Path, mount_point: Path, *, size_mb: int) -> None:
    """A sparse ext4 image of ``size_mb``, loop-mounted at ``mount_point`` (nosuid, nodev).

    The loop device is set to clear itself, so it is released when the last mount of the
    filesystem goes, whoever unmounts it and whenever."""
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size_mb * 1024 * 1024)
    finally:
        os.close(fd)
    mkfs = mkfs_path() or "mkfs.ext4"
    # No journal and lazily initialised inode tables: the image is as young as the sandbox,
    # and a fresh one takes a few hundred KB on the host instead of megabytes.
    done = subprocess.run(
        [mkfs, "-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode",
         "-E", "lazy_itable_init=1,nodiscard", str(image)],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/sbin:/usr/bin"},
    )  # fmt: skip
    if done.returncode != 0:
        raise OSError(errno.EIO, f"mkfs.ext4 failed: {done.stderr.strip()}")
    device_fd = _attach_loop(image)
    try:
        mount_point.mkdir(mode=0o711)
        flags = _MS_NOSUID | _MS_NODEV
        _mount(_device_path(device_fd), mount_point, "ext4", flags, "noinit_itable")
    finally:
        os.close(device_fd)  # the mount holds the device now


def bind(source: Path, target: Path) -> None:
    _mount(str(source), target, None, _MS_BIND, None)


def _mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    result = _libc.mount(
        source.encode(),
        str(target).encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {source} on {target}: {os.strerror(code)}")


def _device_path(device_fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{device_fd}")


def _attach_loop(image: Path) -> int:
    """A free loop device backed by ``image``, set to auto-clear; returns its open fd."""
    image_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(100):
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                device = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
                try:
                    _configure_loop(device, image_fd, image)
                    return device
                except OSError as exc:
                    os.close(device)
                    if exc.errno != errno.EBUSY:  # another worker took it first: try again
                        raise
        finally:
            os.close(control)
    finally:
        os.close(image_fd)
    raise OSError(errno.EBUSY, "no free loop device")


def _configure_loop(device: int, image_fd: int, image: Path) -> None:
    name = str(image).encode()[:63]
    info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, _LO_FLAGS_AUTOCLEAR, name,
                       b"", b"", 0, 0)  # fmt: skip
    try:
        fcntl.ioctl(device, _LOOP_CONFIGURE, struct.pack("=II", image_fd, 0) + info + bytes(64))
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):  # LOOP_CONFIGURE needs Linux 5.8
            raise
        fcntl.ioctl(device, _LOOP_SET_FD, image_fd)
        fcntl.ioctl(device, _LOOP_SET_STATUS64, info)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` in this mount namespace, deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == prefix.rstrip("/") or point.startswith(prefix):
            found.append(Path(point))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def unmount_all(directory: Path) -> None:
    """Unmount everything below ``directory``; lazily where something still holds it."""
    for point in mounts_under(directory):
        if _libc.umount2(str(point).encode(), 0) != 0:
            code = ctypes.get_errno()
            if code == errno.EBUSY:
                _libc.umount2(str(point).encode(), _MNT_DETACH)
    for device in loop_devices_under(directory):
        # Mounted nowhere (a crash between attach and mount): release it.
        with contextlib.suppress(OSError):
            fd = os.open(f"/dev/{device}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, _LOOP_CLR_FD)
            finally:
                os.close(fd)
    # The kernel clears an auto-clearing loop device a moment after its last user goes.
    deadline = time.monotonic() + _SETTLE_S
    while loop_devices_under(directory) and time.monotonic() < deadline:
        time.sleep(0.005)


def loop_devices_under(directory: Path) -> list[str]:
    """Loop devices whose backing file is below ``directory`` (names such as ``loop3``)."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for entry in _iter_dir(Path("/sys/block")):
        if not entry.startswith("loop"):
            continue
        with contextlib.suppress(OSError):
            backing = Path("/sys/block", entry, "loop", "backing_file").read_text().strip()
            if backing.removesuffix(" (deleted)").startswith(prefix):
                found.append(entry)
    return found


def _iter_dir(path: Path) -> Iterator[str]:
    with contextlib.suppress(FileNotFoundError):
        yield from os.listdir(path)


def remove_if_empty(group: Group, *, wait_s: float = 0.0) -> None:
    """Remove a command's cgroup unless something it started still runs there."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            group.path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return
            time.sleep(0.005)

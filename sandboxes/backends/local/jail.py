"""The jail: bubblewrap's command line, the generated /etc, and the seccomp filter.

A sandbox is one bwrap started at create with its own user, pid, mount, ipc, uts and network
namespaces (no network: only a loopback of its own), which sees only ``/usr``
(read-only), a generated ``/etc``, the sandbox's home and ``/tmp``, a private ``/dev/shm`` and
its own ``/proc`` and ``/dev``. When the worker is root, bwrap runs as an unprivileged host
user (``nobody`` unless configured), so nothing in a sandbox ever holds host root or a
capability. The home, /tmp and /etc reach bwrap as open descriptors (``--bind-fd``), so a path
swapped meanwhile cannot redirect the mount; the command line reaches it through a memfd
(``--args``), never through the world-readable ``/proc/<pid>/cmdline``. bwrap loads the
seccomp filter into the sandbox's first processes, and everything they start inherits it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxes.backends.base import SANDBOX_HOME, BackendError
from sandboxes.backends.local.store import write_all

INSTALL_HINT = "install bubblewrap: apt-get install -y bubblewrap"
USERNS_HINT = (
    "bubblewrap could not create a user namespace; enable unprivileged user namespaces "
    "(sysctl -w kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; "
    "on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0), or run the worker in a "
    "container that allows them (e.g. docker --security-opt seccomp=unconfined)"
)
MIN_BWRAP_VERSION = (0, 8, 0)  # --disable-userns, --size, --perms for tmpfs, --bind-fd

NOBODY_UID = 65534
# The identity inside the sandbox. Fixed, so files and /etc/passwd agree whatever host uid
# (nobody, a configured uid, or the worker's own when it is not root) runs bwrap.
SANDBOX_UID = 1000
SANDBOX_HOSTNAME = "sandbox"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The whole environment of a command, before the sandbox's and the run's own variables.
BASE_ENV = {
    "PATH": SANDBOX_PATH,
    "HOME": SANDBOX_HOME,
    "USER": "user",
    "LOGNAME": "user",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
}

# Host files programs need from /etc, bound read-only over empty mount points in the generated
# /etc. Anything else of the host's /etc (shadow, ssh keys, ssl/private, ...) stays invisible.
_HOST_ETC_FILES = ("ld.so.cache", "ssl/openssl.cnf")
_HOST_ETC_DIRS = ("alternatives", "ssl/certs")
_HOST_ETC_BINDS = tuple(
    arg
    for name in (*_HOST_ETC_FILES, *_HOST_ETC_DIRS)
    for arg in ("--ro-bind-try", f"/etc/{name}", f"/etc/{name}")
)
# Top-level host directories that are symlinks into /usr on a merged-/usr system, or real
# directories on an older one.
_HOST_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_GENERATED_ETC: dict[str, str] = {
    "passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"user:x:{SANDBOX_UID}:{SANDBOX_UID}:Sandbox user:{SANDBOX_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\nuser:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hostname": f"{SANDBOX_HOSTNAME}\n",
    "hosts": (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{SANDBOX_HOSTNAME}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    ),
    "resolv.conf": "# The sandbox has no network.\n",
    "nsswitch.conf": (
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n"
        "protocols: files\nservices: files\n"
    ),
}
_GENERATED_ETC_LINKS = {
    "localtime": "/usr/share/zoneinfo/Etc/UTC",
    "os-release": "../usr/lib/os-release",
}
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# -- seccomp -----------------------------------------------------------------------------------

# Denied with EPERM: what Docker's default profile keeps from containers, since a sandboxed
# program never needs it and each is kernel attack surface. Names unknown on this
# architecture are skipped.
DENIED_SYSCALLS = (
    # namespaces, mounts, the root
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # kernel keyrings
    "keyctl", "add_key", "request_key",
    # BPF, perf, kernel tracing
    "bpf", "perf_event_open", "lookup_dcookie", "fanotify_init",
    # kernel images and modules
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module",
    # memory managers and io_uring, the usual exploit primitives
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "mbind", "set_mempolicy", "migrate_pages", "move_pages",
    # host-wide state
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "stime", "syslog", "quotactl", "quotactl_fd", "nfsservctl", "_sysctl",
    "sysfs", "uselib", "ustat", "vhangup",
    # raw hardware and file handles (the "shocker" escape)
    "iopl", "ioperm", "pciconfig_read", "pciconfig_write", "pciconfig_iobase",
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip
# clone() asking for a new namespace is denied too (its flags are a register, so the filter
# sees them); clone3's flags live in memory the filter cannot read, so it answers ENOSYS and
# libc falls back to clone(), as under Docker.
_CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


@functools.lru_cache(maxsize=1)
def seccomp_program() -> tuple[bytes | None, str]:
    """The compiled BPF filter and a summary, or None and why there is none."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        return None, f"libseccomp is not usable ({exc}): apt-get install libseccomp2"
    deny = pyseccomp.ERRNO(errno.EPERM)
    program = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    denied = 0
    for name in DENIED_SYSCALLS:
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) == -1:
            continue  # not a system call on this architecture
        program.add_rule(deny, name)
        denied += 1
    for flag in _CLONE_NAMESPACE_FLAGS:
        program.add_rule(deny, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    program.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("airlock-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as file:
            program.export_bpf(file)
        size = os.lseek(fd, 0, os.SEEK_END)
        compiled = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    return compiled, f"{denied} system calls denied, and clone() into new namespaces"


# -- bubblewrap --------------------------------------------------------------------------------


def find_bwrap(name: str) -> tuple[str, str]:
    """The absolute path and version of bubblewrap, or BackendError naming the fix."""
    path = shutil.which(name)
    if path is None:
        raise BackendError(f"bubblewrap ({name}) not found: {INSTALL_HINT}")
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"{path} --version failed ({exc}): {INSTALL_HINT}") from None
    version = out.split()[-1] if out.split() else "unknown"
    if _version_tuple(version) < MIN_BWRAP_VERSION:
        wanted = ".".join(map(str, MIN_BWRAP_VERSION))
        raise BackendError(
            f"bubblewrap {version} at {path} is too old, {wanted} or newer is needed: "
            f"{INSTALL_HINT} (Debian 12 or newer)"
        )
    return path, version


def sandbox_python() -> str:
    """A python3 the sandbox can run (its init): one under /usr, which the sandbox sees."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BackendError(
        "python3 under /usr is needed for the sandbox's init: apt-get install python3"
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    return tuple(int(number) for number in numbers[:3]) if numbers else (0,)


def explain_bwrap_failure(stderr: str) -> str:
    message = stderr.strip() or "bwrap exited before the sandbox started"
    lowered = message.lower()
    if "namespace" in lowered or "uid map" in lowered or "operation not permitted" in lowered:
        return f"{message} — {USERNS_HINT}"
    return f"sandbox setup failed: {message}"


def static_args(*, shm_mb: int) -> list[str]:
    """The part of every sandbox's bwrap command line that never changes."""
    args = [
        "--unshare-user",  # required, not just tried: the uid switch depends on it
        "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-net",  # only a loopback of its own: no network at all
        # No cgroup namespace: the init moves its commands into cgroups of their own, which
        # a namespace-delegating cgroup v2 host refuses across a namespace boundary. The
        # sandbox has no cgroup filesystem either way.
        "--disable-userns",  # no nested namespaces: less kernel surface
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", SANDBOX_HOSTNAME,
        "--new-session",  # no TIOCSTI into a terminal outside
        "--clearenv",  # only what --setenv adds, whatever bwrap inherited
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for name in _HOST_ROOT_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    args += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--size", str(shm_mb * 1024 * 1024), "--tmpfs", "/dev/shm",  # noqa: S108
        "--remount-ro", "/dev",  # else /dev itself is a writable, unbounded tmpfs
    ]  # fmt: skip
    return args


def build_etc(root: Path) -> Path:
    """The generated /etc, built once per root and shared by every sandbox under it."""
    mount_files = [name for name in _HOST_ETC_FILES if os.path.isfile(f"/etc/{name}")]
    mount_dirs = [name for name in _HOST_ETC_DIRS if os.path.isdir(f"/etc/{name}")]
    recipe = json.dumps([_GENERATED_ETC, _GENERATED_ETC_LINKS, mount_files, mount_dirs])
    # Named by content, so a change of recipe gets a new directory and workers on old and
    # new code never fight over one.
    target = root / f".etc-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    if target.is_dir():
        return target
    staging = root / f".etc-tmp-{secrets.token_hex(8)}"
    staging.mkdir(mode=0o755)
    try:
        for name, content in _GENERATED_ETC.items():
            (staging / name).write_text(content)
            (staging / name).chmod(0o644)
        for name, link_target in _GENERATED_ETC_LINKS.items():
            (staging / name).symlink_to(link_target)
        # Empty mount points: /etc is bound read-only, so bwrap cannot create them later.
        for name in mount_dirs:
            (staging / name).mkdir(mode=0o755, parents=True, exist_ok=True)
        for name in mount_files:
            (staging / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            (staging / name).touch(mode=0o644)
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # not merely lost the race to another worker
            raise
    return target


@dataclass
class BwrapCommand:
    """A prepared bwrap invocation with the descriptors it needs; a context manager, so they
    are closed. ``argv`` reads its arguments from a memfd (``--args``)."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    user: int | None
    group: int | None
    _owned_fds: list[int] = field(default_factory=list, repr=False)

    def popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "pass_fds": self.pass_fds,
            "cwd": "/",
            "env": {},  # bwrap's own environment; the sandbox's is built with --setenv
        }
        if self.user is not None:
            kwargs.update(user=self.user, group=self.group, extra_groups=[])
        return kwargs

    def close(self) -> None:
        while self._owned_fds:
            os.close(self._owned_fds.pop())

    def __enter__(self) -> BwrapCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare(
    *,
    bwrap: str,
    static: list[str],
    etc: Path,
    home: Path,
    tmp: Path | None,
    tmp_mb: int,
    env: dict[str, str],
    cwd: str,
    seccomp: bytes | None,
    command: list[str],
    extra_fds: tuple[int, ...] = (),
    user: int | None,
    group: int | None,
    die_with_parent: bool,
) -> BwrapCommand:
    """A bwrap command line over the given home (and /tmp: a directory, or a tmpfs of
    ``tmp_mb`` when None) that runs ``command``."""
    owned: list[int] = []

    def keep(fd: int) -> int:
        owned.append(fd)
        return fd

    try:
        args = [*static]
        if die_with_parent:
            args.append("--die-with-parent")
        etc_fd = keep(_open_path(etc))
        args += ["--ro-bind-fd", str(etc_fd), "/etc", *_HOST_ETC_BINDS]
        home_fd = keep(_open_path(home))
        args += ["--bind-fd", str(home_fd), SANDBOX_HOME]
        if tmp is not None:
            args += ["--bind-fd", str(keep(_open_path(tmp))), "/tmp"]  # noqa: S108
        else:
            args += ["--perms", "1777", "--size", str(tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]  # noqa: S108
        for name, value in env.items():
            args += ["--setenv", name, value]
        args += ["--remount-ro", "/", "--chdir", cwd]
        if seccomp is not None:
            seccomp_fd = keep(memfd("airlock-seccomp", seccomp))
            args += ["--seccomp", str(seccomp_fd)]
        # Through a memfd rather than argv: argv is world-readable in /proc/<pid>/cmdline
        # and the envs carry the run's secrets.
        args_fd = keep(memfd("airlock-bwrap-args", b"".join(a.encode() + b"\0" for a in args)))
    except BaseException:
        for fd in owned:
            os.close(fd)
        raise
    return BwrapCommand(
        argv=[bwrap, "--args", str(args_fd), "--", *command],
        pass_fds=(*owned, *extra_fds),
        user=user,
        group=group,
        _owned_fds=owned,
    )


def _open_path(path: Path) -> int:
    try:
        return os.open(path, _PATH_FLAGS)
    except FileNotFoundError:
        raise BackendError(f"{path} is gone") from None


def memfd(name: str, data: bytes) -> int:
    """An in-memory file holding ``data``, positioned at its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd

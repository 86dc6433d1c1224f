"""The ``local`` sandbox backend: bubblewrap on this machine.

A sandbox is a directory under the backend root::

    <root>/.etc-<hash>/                the generated /etc, shared by every sandbox
    <root>/<sandbox_id>/sandbox.json   metadata, envs, created_at, expires_at (mode 0600)
    <root>/<sandbox_id>/home/          bound read-write at /home/user in every command
    <root>/<sandbox_id>/procs/<pid>.<start time>   an empty file per running command (bwrap)

Nothing runs between commands: every ``run`` starts a fresh ``bwrap`` with its own user, pid,
ipc, uts, cgroup and network namespaces, which sees only ``/usr`` (read-only), a generated
``/etc``, the sandbox home, a fresh ``/tmp`` and its own ``/proc`` and ``/dev``. When the worker
is root, bwrap itself is started as an unprivileged host user (``nobody`` unless configured),
so nothing in a sandbox ever holds host root or a capability. The home directory and the
generated ``/etc`` reach bwrap as open descriptors (``--bind-fd``), so a path swapped
meanwhile cannot redirect the mount; the command line, environment included, reaches it
through a memfd (``--args``), never through the world-readable ``/proc/<pid>/cmdline``.

Files are read and written from the worker, never through bwrap: each path component is opened
with ``O_NOFOLLOW`` relative to its parent's descriptor, so a link planted in the sandbox can
never make the worker touch a host file. Symlinks are refused, not followed.

The directory layout and pid files are the only shared state, so any worker process (another
Celery worker) can list, time out and kill any sandbox.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sandboxes.backends.base import (
    DEFAULT_MAX_OUTPUT_BYTES,
    SANDBOX_HOME,
    BackendError,
    CommandResult,
    CommandTimeout,
    FileEntry,
    NetworkPolicy,
    OutputCallback,
    OutputStream,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    iter_chunks,
)

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

METADATA_FILE = "sandbox.json"
HOME_DIR = "home"
PROCS_DIR = "procs"
_SANDBOX_ID = re.compile(r"^[0-9a-z]{20}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_READ_SIZE = 64 * 1024
_WRITE_CHUNK = 1024 * 1024
_KILL_GRACE_S = 5.0
# A sandbox directory without metadata, or a killed one not yet deleted, this old is what a
# crashed create or kill left behind.
_ABANDONED_AFTER_S = 60.0

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

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

# The whole environment of a command, before the sandbox's and the run's own variables.
_BASE_ENV = {
    "PATH": SANDBOX_PATH,
    "HOME": SANDBOX_HOME,
    "USER": "user",
    "LOGNAME": "user",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
}
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


@dataclass(frozen=True)
class _Sandbox:
    """What ``sandbox.json`` holds."""

    sandbox_id: str
    template: str
    metadata: dict[str, str]
    envs: dict[str, str]
    created_at: datetime
    expires_at: datetime
    cpu_count: int
    memory_mb: int
    host_uid: int | None  # who bwrap runs as; None: the worker itself (not root)
    host_gid: int | None

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at

    def info(self) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=self.sandbox_id,
            metadata=dict(self.metadata),
            cpu_count=self.cpu_count,
            memory_mb=self.memory_mb,
            started_at=self.created_at,
            end_at=self.expires_at,
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": 1,
                "sandbox_id": self.sandbox_id,
                "template": self.template,
                "metadata": self.metadata,
                "envs": self.envs,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat(),
                "cpu_count": self.cpu_count,
                "memory_mb": self.memory_mb,
                "host_uid": self.host_uid,
                "host_gid": self.host_gid,
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> _Sandbox:
        data = json.loads(raw)
        return cls(
            sandbox_id=data["sandbox_id"],
            template=data["template"],
            metadata=data["metadata"],
            envs=data["envs"],
            created_at=datetime.fromisoformat(data["created_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            cpu_count=data["cpu_count"],
            memory_mb=data["memory_mb"],
            host_uid=data["host_uid"],
            host_gid=data["host_gid"],
        )


@dataclass
class BwrapCommand:
    """A prepared bwrap invocation: what ``run`` starts, usable on its own for benchmarks.

    Holds open descriptors (the argument memfd, the home and /etc directories, the pipe that
    says the command started); use it as a context manager so they are closed.
    """

    argv: list[str]
    pass_fds: tuple[int, ...]
    user: int | None
    group: int | None
    started_fd: int  # one byte arrives here once bwrap has set up and the shell has started
    _owned_fds: list[int] = field(default_factory=list, repr=False)

    def popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "pass_fds": self.pass_fds,
            "start_new_session": True,  # its own process group, so killpg reaches it alone
            "cwd": "/",
            "env": {},  # bwrap's own environment; the sandbox's is built with --setenv
        }
        if self.user is not None:
            kwargs.update(user=self.user, group=self.group, extra_groups=[])
        return kwargs

    def close_child_ends(self) -> None:
        """Close what only the child needed, once it has been started."""
        for fd in self.pass_fds:
            self._close(fd)

    def close(self) -> None:
        for fd in list(self._owned_fds):
            self._close(fd)

    def _close(self, fd: int) -> None:
        if fd in self._owned_fds:
            self._owned_fds.remove(fd)
            os.close(fd)

    def __enter__(self) -> BwrapCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Capture:
    """One output stream: keeps at most ``limit`` bytes, streams everything to the callback."""

    def __init__(self, stream: OutputStream, limit: int, on_output: OutputCallback | None):
        self.stream = stream
        self.limit = limit
        self.on_output = on_output
        self.data = bytearray()
        self.truncated = False
        # Incremental, so a multi-byte character split across two reads is not mangled.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True
        if self.on_output is not None:
            text = self._decoder.decode(chunk)
            if text:
                self.on_output(self.stream, text)

    def finish(self) -> None:
        if self.on_output is not None:
            text = self._decoder.decode(b"", final=True)
            if text:
                self.on_output(self.stream, text)

    def text(self) -> str:
        if not self.truncated:
            return self.data.decode("utf-8", errors="replace")
        # Cut mid-character at the limit: drop the incomplete tail rather than end in U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(bytes(self.data), final=False)


class LocalBackend(SandboxBackend):
    name = "local"

    def __init__(
        self,
        *,
        root: Path,
        cpu_seconds: int = 600,
        memory_mb: int = 1024,
        max_processes: int = 256,
        max_file_mb: int = 2048,
        tmp_mb: int = 512,
        bwrap_path: str = "bwrap",
        sandbox_uid: int | None = None,
        sandbox_gid: int | None = None,
    ):
        """Limits apply to every command (``RLIMIT_CPU`` seconds, ``RLIMIT_AS`` per process,
        ``RLIMIT_NPROC`` within the command's user namespace, ``RLIMIT_FSIZE``); ``tmp_mb``
        bounds each of the command's tmpfs mounts (/tmp and /dev/shm).

        ``sandbox_uid``/``sandbox_gid``: the host user bwrap runs as when the worker is root
        (default ``nobody``). A worker that is not root runs bwrap as itself.
        """
        for label, value in (
            ("cpu_seconds", cpu_seconds),
            ("memory_mb", memory_mb),
            ("max_processes", max_processes),
            ("max_file_mb", max_file_mb),
            ("tmp_mb", tmp_mb),
        ):
            if value < 1:
                raise ValueError(f"{label} must be positive, got {value}")
        self.root = Path(root)
        self.cpu_seconds = cpu_seconds
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.max_file_mb = max_file_mb
        self.tmp_mb = tmp_mb
        self.bwrap_path = bwrap_path
        if os.geteuid() == 0:
            self.host_uid: int | None = NOBODY_UID if sandbox_uid is None else sandbox_uid
            self.host_gid: int | None = sandbox_gid if sandbox_gid is not None else self.host_uid
            if self.host_uid == 0 or self.host_gid == 0:
                raise BackendError("sandbox_uid and sandbox_gid must not be 0 (root)")
        else:
            if sandbox_uid not in (None, os.geteuid()):
                raise BackendError(
                    f"sandbox_uid={sandbox_uid} needs a root worker; this worker runs as "
                    f"uid {os.geteuid()}, so its sandboxes run as that uid"
                )
            self.host_uid = self.host_gid = None
        self._bwrap: tuple[str, str] | None = None  # (absolute path, version)
        self._etc_dir: Path | None = None
        self._static_args: list[str] | None = None
        self._root_ready = False

    @classmethod
    def from_settings(cls) -> LocalBackend:
        from django.conf import settings

        base_dir = Path(getattr(settings, "BASE_DIR", Path(__file__).resolve().parents[2]))
        return cls(
            root=Path(getattr(settings, "SANDBOX_LOCAL_ROOT", base_dir / "var" / "sandboxes")),
            cpu_seconds=getattr(settings, "SANDBOX_LOCAL_CPU_SECONDS", 600),
            memory_mb=getattr(settings, "SANDBOX_LOCAL_MEMORY_MB", 1024),
            max_processes=getattr(settings, "SANDBOX_LOCAL_MAX_PROCESSES", 256),
            max_file_mb=getattr(settings, "SANDBOX_LOCAL_MAX_FILE_MB", 2048),
            tmp_mb=getattr(settings, "SANDBOX_LOCAL_TMP_MB", 512),
            bwrap_path=getattr(settings, "SANDBOX_LOCAL_BWRAP", "bwrap"),
            sandbox_uid=getattr(settings, "SANDBOX_LOCAL_UID", None),
            sandbox_gid=getattr(settings, "SANDBOX_LOCAL_GID", None),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def create(
        self,
        *,
        template: str,
        metadata: dict[str, str],
        envs: dict[str, str],
        timeout_s: int,
        network: NetworkPolicy | None = None,
    ) -> SandboxInfo:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        _check_str_dict("metadata", metadata)
        _check_envs(envs)
        self._bwrap_binary()  # fail at create, not at the first command, when bwrap is missing
        now = datetime.now(UTC)
        sandbox = _Sandbox(
            sandbox_id=_new_sandbox_id(),
            template=template,
            metadata=dict(metadata),
            envs=dict(envs),
            created_at=now,
            expires_at=now + timedelta(seconds=timeout_s),
            cpu_count=os.cpu_count() or 1,  # nothing pins a command to fewer cores
            memory_mb=self.memory_mb,
            host_uid=self.host_uid,
            host_gid=self.host_gid,
        )
        try:
            self._ensure_root()
            self.reap_expired()
            directory = self.root / sandbox.sandbox_id
            # 0711: bwrap reaches the home by path as the sandbox's host user (see
            # _ensure_root); everything else in here stays the worker's.
            directory.mkdir(mode=0o711)
            directory.chmod(0o711)  # mkdir's mode is cut by the umask
            (directory / PROCS_DIR).mkdir(mode=0o700)
            home = directory / HOME_DIR
            home.mkdir(mode=0o700)
            if sandbox.host_uid is not None:
                os.chown(home, sandbox.host_uid, sandbox.host_gid or sandbox.host_uid)
            # The metadata file comes last: a directory without one is not a sandbox yet.
            _write_atomic(directory / METADATA_FILE, sandbox.to_json())
        except OSError as exc:
            raise BackendError(f"cannot create a sandbox under {self.root}: {exc}") from exc
        return sandbox.info()

    def kill(self, sandbox_id: str) -> bool:
        if not _SANDBOX_ID.match(sandbox_id):
            return False
        try:
            sandbox: _Sandbox | None = self._read(sandbox_id)
        except SandboxNotFound:
            sandbox = None
        destroyed = self._destroy(sandbox_id)
        # One that outlived its timeout was already gone as far as callers are concerned.
        return destroyed and sandbox is not None and not sandbox.expired()

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        sandbox = self._load(sandbox_id)
        updated = replace(sandbox, expires_at=datetime.now(UTC) + timedelta(seconds=timeout_s))
        try:
            _write_atomic(self._dir(sandbox_id) / METADATA_FILE, updated.to_json())
        except FileNotFoundError:  # killed meanwhile
            raise SandboxNotFound(f"sandbox {sandbox_id} not found") from None

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        return self._load(sandbox_id).info()

    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        found = []
        for sandbox in self._scan()[0]:
            if all(sandbox.metadata.get(key) == value for key, value in metadata.items()):
                found.append(sandbox.info())
        return sorted(found, key=lambda info: info.started_at or datetime.min.replace(tzinfo=UTC))

    def reap_expired(self) -> int:
        """Destroy sandboxes past their timeout and leftovers of crashed creates and kills.

        There is no daemon behind this backend, so this runs on every ``create`` and
        ``list_sandboxes`` (reconcile calls it every few minutes); it is what makes a sandbox
        "die by itself". Returns how many sandboxes it destroyed.
        """
        return self._scan()[1]

    def check(self) -> str:
        path, version = self._bwrap_binary()
        info = self.create(template="check", metadata={"purpose": "check"}, envs={}, timeout_s=60)
        try:
            result = self.run(info.sandbox_id, "true", timeout_s=30)
        finally:
            self.kill(info.sandbox_id)
        if result.exit_code != 0:
            raise BackendError(
                f"bubblewrap ran but `true` exited {result.exit_code}: {result.stderr.strip()}"
            )
        runs_as = f"host uid {self.host_uid}" if self.host_uid is not None else "the worker's uid"
        return (
            f"local: bubblewrap {version} ({path}), root {self.root}, commands run as {runs_as}; "
            f"limits: {self.cpu_seconds} cpu-s, {self.memory_mb} MB memory, "
            f"{self.max_processes} processes, {self.max_file_mb} MB per file"
        )

    # -- commands ----------------------------------------------------------------------------

    def run(
        self,
        sandbox_id: str,
        command: str,
        *,
        timeout_s: float,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        """``timeout_s <= 0`` means no command timeout (the sandbox's own timeout still holds).

        A command still running when the sandbox reaches its timeout is killed with it and
        SandboxNotFound raised, as a provider would.
        """
        sandbox = self._load(sandbox_id)
        started = time.monotonic()
        command_deadline = started + timeout_s if timeout_s > 0 else None
        stdout = _Capture("stdout", max_output_bytes, on_output)
        stderr = _Capture("stderr", max_output_bytes, on_output)
        with self._prepare(sandbox, command, cwd=cwd, envs=envs) as prepared:
            status, outcome = self._execute(prepared, sandbox, stdout, stderr, command_deadline)
        stdout.finish()
        stderr.finish()

        if outcome == "sandbox_expired":
            self._destroy(sandbox_id)
            raise SandboxNotFound(f"sandbox {sandbox_id} reached its timeout")
        if outcome == "timeout":
            raise CommandTimeout(
                f"command timed out after {timeout_s:g}s",
                stdout=stdout.text(),
                stderr=stderr.text(),
            )
        # bwrap killed by a signal (it reports a command's signal as 128+n) means a kill of the
        # sandbox, from this or another worker; bwrap exiting before the shell started means
        # bwrap's own failure, unless that same kill caused it.
        if (status < 0 or outcome == "not_started") and not self._exists(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} was killed while the command ran")
        if outcome == "not_started":
            raise BackendError(_explain_bwrap_failure(stderr.text()))
        return CommandResult(
            exit_code=status if status >= 0 else 128 - status,
            stdout=stdout.text(),
            stderr=stderr.text(),
            truncated=stdout.truncated or stderr.truncated,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    def _execute(
        self,
        prepared: BwrapCommand,
        sandbox: _Sandbox,
        stdout: _Capture,
        stderr: _Capture,
        command_deadline: float | None,
    ) -> tuple[int, str]:
        """Start the prepared command and pump its output until it is gone.

        Returns bwrap's exit status (negative: killed by that signal) and how it ended (see
        ``_pump``). Whatever happens, nothing of the command outlives this call.
        """
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        proc: subprocess.Popen[bytes] | None = None
        pid_file: Path | None = None
        try:
            try:
                proc = subprocess.Popen(
                    prepared.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    **prepared.popen_kwargs(),
                )
            except FileNotFoundError:
                raise BackendError(f"bubblewrap not found: {INSTALL_HINT}") from None
            finally:
                # Only the child writes: EOF then means every process of the sandbox is gone.
                os.close(out_w)
                os.close(err_w)
                prepared.close_child_ends()
            pid_file = self._register(sandbox.sandbox_id, proc.pid)
            captures = {out_r: stdout, err_r: stderr}
            outcome = self._pump(proc, captures, prepared.started_fd, sandbox, command_deadline)
            return proc.returncode, outcome
        finally:
            if proc is not None and proc.returncode is None:  # an exception, e.g. in on_output
                _kill_group(proc.pid)
                proc.wait()
            os.close(out_r)
            os.close(err_r)
            if pid_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    pid_file.unlink()

    def bwrap_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
    ) -> BwrapCommand:
        """The exact bwrap invocation ``run`` would start, without running it (benchmarks)."""
        return self._prepare(self._load(sandbox_id), command, cwd=cwd, envs=envs)

    def _prepare(
        self, sandbox: _Sandbox, command: str, *, cwd: str | None, envs: dict[str, str] | None
    ) -> BwrapCommand:
        run_envs = envs or {}
        _check_envs(run_envs)
        workdir = _check_cwd(cwd)
        bwrap, _ = self._bwrap_binary()
        try:
            home_fd = os.open(self._dir(sandbox.sandbox_id) / HOME_DIR, _PATH_FLAGS)
        except FileNotFoundError:
            raise SandboxNotFound(f"sandbox {sandbox.sandbox_id} not found") from None
        owned = [home_fd]
        try:
            etc_fd = self._open_etc()
            owned.append(etc_fd)
            started_r, started_w = os.pipe2(os.O_CLOEXEC)
            owned += [started_r, started_w]
            os.set_blocking(started_r, False)

            args = [*self._static(), "--ro-bind-fd", str(etc_fd), "/etc", *_HOST_ETC_BINDS]
            args += ["--bind-fd", str(home_fd), SANDBOX_HOME, "--chdir", workdir]
            for name, value in {**_BASE_ENV, **sandbox.envs, **run_envs}.items():
                args += ["--setenv", name, value]
            args += ["--remount-ro", "/"]
            # Through a memfd rather than argv: argv is world-readable in /proc/<pid>/cmdline
            # and the envs carry the run's secrets.
            args_fd = os.memfd_create("airlock-bwrap-args", os.MFD_CLOEXEC)
            owned.append(args_fd)
            _write_all(args_fd, b"".join(arg.encode() + b"\0" for arg in args))
            os.lseek(args_fd, 0, os.SEEK_SET)
        except BaseException:
            for fd in owned:
                os.close(fd)
            raise
        # Limits are set by the sandbox's shell before the command, so they bind everything
        # the command starts and cannot be raised again (no CAP_SYS_RESOURCE in the host's
        # user namespace). The byte on started_w tells a command's exit status from bwrap's
        # own setup failure; the descriptor is closed before the command runs.
        script = (
            f"ulimit -t {self.cpu_seconds} -v {self.memory_mb * 1024} "
            f"-u {self.max_processes} -f {self.max_file_mb * 1024} || exit 126; "
            f"printf . >&{started_w}; exec {started_w}>&-; {command}"
        )
        return BwrapCommand(
            argv=[bwrap, "--args", str(args_fd), "--", "/bin/bash", "-c", script],
            pass_fds=(args_fd, etc_fd, home_fd, started_w),
            user=sandbox.host_uid,
            group=sandbox.host_gid,
            started_fd=started_r,
            _owned_fds=owned,
        )

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        captures: dict[int, _Capture],
        started_fd: int,
        sandbox: _Sandbox,
        command_deadline: float | None,
    ) -> str:
        """Read both pipes until bwrap is gone. Returns ``done``, ``timeout``,
        ``sandbox_expired`` or ``not_started``."""
        expires_at = sandbox.expires_at
        outcome = "done"
        started = False
        grace_deadline: float | None = None
        with selectors.DefaultSelector() as selector:
            for fd in captures:
                selector.register(fd, selectors.EVENT_READ)
            selector.register(started_fd, selectors.EVENT_READ)
            open_streams = len(captures)
            while open_streams:
                now = time.monotonic()
                if grace_deadline is not None:
                    deadline = grace_deadline
                else:
                    deadline = now + (expires_at - datetime.now(UTC)).total_seconds()
                    if command_deadline is not None:
                        deadline = min(deadline, command_deadline)
                if deadline <= now:
                    if grace_deadline is not None:
                        break  # killed, yet something still holds a pipe: stop waiting for it
                    if command_deadline is not None and command_deadline <= now:
                        outcome = "timeout"
                    else:
                        # Another worker may have extended it with set_timeout meanwhile.
                        try:
                            current = self._read(sandbox.sandbox_id)
                        except SandboxNotFound:
                            current = None
                        if current is not None and not current.expired():
                            expires_at = current.expires_at
                            continue
                        outcome = "sandbox_expired"
                    _kill_group(proc.pid)
                    grace_deadline = now + _KILL_GRACE_S
                    continue
                for key, _ in selector.select(deadline - now):
                    fd = key.fd
                    chunk = os.read(fd, _READ_SIZE)
                    if fd == started_fd:
                        started = started or bool(chunk)  # EOF alone: bwrap died first
                        selector.unregister(fd)
                    elif chunk:
                        captures[fd].feed(chunk)
                    else:
                        selector.unregister(fd)
                        open_streams -= 1
        # stdout/stderr close when the last process of the sandbox is gone, bwrap included.
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
        if not started:
            with contextlib.suppress(BlockingIOError):
                started = bool(os.read(started_fd, 1))
        if outcome == "done" and not started:
            return "not_started"
        return outcome

    def _register(self, sandbox_id: str, pid: int) -> Path:
        """Record a running command so ``kill`` from any worker can stop it."""
        # The start time makes the name unique to this process, even once the pid is reused;
        # in the name rather than the content, so no reader ever sees a half-written file.
        pid_file = self._dir(sandbox_id) / PROCS_DIR / f"{pid}.{_process_start_time(pid)}"
        try:
            os.close(os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            # Written before this check, and kill() moves the directory before it reads the
            # pid files: whichever order they run in, the command gets killed.
            if self._exists(sandbox_id):
                return pid_file
        except FileNotFoundError:
            pass
        _kill_group(pid)
        raise SandboxNotFound(f"sandbox {sandbox_id} not found")

    # -- files -------------------------------------------------------------------------------

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        parts = _home_parts(path)
        if not parts:
            raise BackendError(f"{path}: is a directory")
        sandbox = self._load(sandbox_id)
        with self._open_home(sandbox_id) as home_fd:
            dir_fd = _walk(home_fd, parts[:-1], path, create=sandbox)
            try:
                # Written to a fresh name and renamed over the target: a link planted at the
                # target is replaced, never followed, and readers never see half a file.
                tmp_name = f".airlock-upload-{secrets.token_hex(8)}"
                fd = os.open(
                    tmp_name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
                try:
                    try:
                        for chunk in iter_chunks(data, _WRITE_CHUNK):
                            _write_all(fd, chunk)
                        os.fchmod(fd, 0o644)
                        if sandbox.host_uid is not None:
                            os.fchown(fd, sandbox.host_uid, sandbox.host_gid or sandbox.host_uid)
                    finally:
                        os.close(fd)
                    os.replace(tmp_name, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp_name, dir_fd=dir_fd)
                    raise
            except IsADirectoryError:
                raise BackendError(f"{path}: is a directory") from None
            except OSError as exc:
                raise BackendError(f"{path}: {exc.strerror}") from None
            finally:
                os.close(dir_fd)

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        parts = _home_parts(path)
        if not parts:
            raise BackendError(f"{path}: is a directory")
        self._load(sandbox_id)
        with self._open_home(sandbox_id) as home_fd:
            dir_fd = _walk(home_fd, parts[:-1], path, create=None)
            try:
                # O_NONBLOCK: a FIFO planted at the path must not hang the worker in open().
                fd = os.open(
                    parts[-1],
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
            except FileNotFoundError:
                raise SandboxFileNotFound(f"{path}: no such file") from None
            except OSError as exc:
                raise _path_error(path, exc) from None
            finally:
                os.close(dir_fd)
        try:
            # Checked on the descriptor before wrapping it: fdopen refuses a directory.
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise BackendError(f"{path}: is a directory")
            if not stat.S_ISREG(mode):
                raise BackendError(f"{path}: not a regular file")
            os.set_blocking(fd, True)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        # A file object, so the descriptor is closed even if the iterator is never started.
        return _stream(os.fdopen(fd, "rb", buffering=0), chunk_size)

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        parts = _home_parts(path)
        self._load(sandbox_id)
        base = posixpath.join(SANDBOX_HOME, *parts)
        with self._open_home(sandbox_id) as home_fd:
            dir_fd = _walk(home_fd, parts, path, create=None)
        entries = []
        try:
            with os.scandir(dir_fd) as listing:
                for entry in listing:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed by the sandbox meanwhile
                        continue
                    kind = _entry_type(info.st_mode)
                    entries.append(
                        FileEntry(
                            name=entry.name,
                            path=posixpath.join(base, entry.name),
                            type=kind,
                            size=info.st_size if kind == "file" else None,
                            mode=stat.S_IMODE(info.st_mode),
                        )
                    )
        finally:
            os.close(dir_fd)
        return sorted(entries, key=lambda entry: entry.name)

    # -- internals ---------------------------------------------------------------------------

    def _dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def _exists(self, sandbox_id: str) -> bool:
        return (self._dir(sandbox_id) / METADATA_FILE).exists()

    def _read(self, sandbox_id: str) -> _Sandbox:
        if not _SANDBOX_ID.match(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id!r} not found")
        try:
            raw = (self._dir(sandbox_id) / METADATA_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise SandboxNotFound(f"sandbox {sandbox_id} not found") from None
        return _Sandbox.from_json(raw)

    def _load(self, sandbox_id: str) -> _Sandbox:
        """The sandbox, or SandboxNotFound; one past its timeout is destroyed on the way."""
        sandbox = self._read(sandbox_id)
        if sandbox.expired():
            self._destroy(sandbox_id)
            raise SandboxNotFound(f"sandbox {sandbox_id} reached its timeout")
        return sandbox

    def _scan(self) -> tuple[list[_Sandbox], int]:
        """Live sandboxes under the root, and how many expired ones were destroyed on the way
        (leftovers of crashed creates and kills go too)."""
        live: list[_Sandbox] = []
        reaped = 0
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return live, reaped
        now = datetime.now(UTC)
        for name in names:
            if name.startswith(".trash-"):
                self._reap_abandoned_kill(self.root / name)
                continue
            if not _SANDBOX_ID.match(name):
                continue
            try:
                sandbox = self._read(name)
            except SandboxNotFound:
                self._reap_half_created(name)
                continue
            if sandbox.expired(now):
                reaped += self._destroy(name)
            else:
                live.append(sandbox)
        return live, reaped

    def _reap_half_created(self, sandbox_id: str) -> None:
        if _age_s(self._dir(sandbox_id)) > _ABANDONED_AFTER_S:
            self._destroy(sandbox_id)

    def _reap_abandoned_kill(self, trash: Path) -> None:
        # Young ones belong to a kill still under way in another worker.
        if _age_s(trash) > _ABANDONED_AFTER_S:
            self._finish_destroy(trash)

    def _destroy(self, sandbox_id: str) -> bool:
        """Kill what runs in the sandbox and delete it. False when it was already gone."""
        trash = self.root / f".trash-{sandbox_id}-{secrets.token_hex(4)}"
        try:
            # The rename is the claim: of two concurrent kills, exactly one gets here.
            os.rename(self._dir(sandbox_id), trash)
        except FileNotFoundError:
            return False
        self._finish_destroy(trash)
        return True

    def _finish_destroy(self, trash: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(trash / PROCS_DIR):
                pid, _, started = entry.name.partition(".")
                # Only if the pid still names the same process, not a recycled pid.
                if pid.isdigit() and started and _process_start_time(int(pid)) == started:
                    _kill_group(int(pid))
        _remove_tree(trash)

    @contextlib.contextmanager
    def _open_home(self, sandbox_id: str) -> Iterator[int]:
        try:
            fd = os.open(self._dir(sandbox_id) / HOME_DIR, _DIR_FLAGS)
        except FileNotFoundError:
            raise SandboxNotFound(f"sandbox {sandbox_id} not found") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _ensure_root(self) -> None:
        """Create the root, and make sure bwrap can reach the sandboxes in it.

        bwrap binds the home and /etc it is handed as descriptors by resolving them to a path
        again (a mount cannot cross user namespaces), as the unprivileged host user: the root
        and every directory above it must be searchable by that user. The root itself is
        0711, so that user (and anyone) can pass through but not list the sandbox ids.
        """
        if self._root_ready:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self.host_uid is not None:
            self.root.chmod(0o711)
            for directory in [self.root.resolve(), *self.root.resolve().parents]:
                if not _searchable(directory, self.host_uid, self.host_gid or self.host_uid):
                    raise BackendError(
                        f"{directory} is not searchable by the sandbox user (uid "
                        f"{self.host_uid}), so bwrap cannot reach the sandboxes under "
                        f"{self.root}: chmod o+x {directory}, or choose another "
                        "SANDBOX_LOCAL_ROOT"
                    )
        self._root_ready = True

    def _bwrap_binary(self) -> tuple[str, str]:
        if self._bwrap is None:
            path = shutil.which(self.bwrap_path)
            if path is None:
                raise BackendError(f"bubblewrap ({self.bwrap_path}) not found: {INSTALL_HINT}")
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
            self._bwrap = (path, version)
        return self._bwrap

    def _static(self) -> list[str]:
        """The part of every bwrap command line that never changes."""
        if self._static_args is None:
            args = [
                "--unshare-all",  # user, pid, ipc, uts, cgroup, net (no network at all)
                "--unshare-user",  # required, not just tried: the uid switch depends on it
                "--disable-userns",  # no nested namespaces: less kernel surface
                "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--hostname", SANDBOX_HOSTNAME,
                "--die-with-parent",  # a dead worker takes its commands with it
                "--new-session",  # no TIOCSTI into a terminal outside
                "--clearenv",  # only what --setenv adds below, whatever bwrap inherited
                "--ro-bind", "/usr", "/usr",
            ]  # fmt: skip
            for name in _HOST_ROOT_LINKS:
                host = Path("/") / name
                if host.is_symlink():
                    args += ["--symlink", os.readlink(host), f"/{name}"]
                elif host.is_dir():
                    args += ["--ro-bind", str(host), f"/{name}"]
            tmp_bytes = str(self.tmp_mb * 1024 * 1024)
            args += [
                "--proc", "/proc",
                "--dev", "/dev",
                "--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/dev/shm",  # noqa: S108
                "--remount-ro", "/dev",  # else /dev itself is a writable, unbounded tmpfs
                "--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/tmp",  # noqa: S108
            ]  # fmt: skip
            self._static_args = args
        return self._static_args

    def _open_etc(self) -> int:
        """The generated /etc, built once per root and shared by every sandbox under it."""
        for _ in range(2):
            if self._etc_dir is None:
                self._etc_dir = self._build_etc()
            try:
                return os.open(self._etc_dir, _PATH_FLAGS)
            except FileNotFoundError:  # someone cleaned the root: build it again
                self._etc_dir = None
        raise BackendError(f"could not prepare /etc for sandboxes under {self.root}")

    def _build_etc(self) -> Path:
        mount_files = [name for name in _HOST_ETC_FILES if os.path.isfile(f"/etc/{name}")]
        mount_dirs = [name for name in _HOST_ETC_DIRS if os.path.isdir(f"/etc/{name}")]
        recipe = json.dumps([_GENERATED_ETC, _GENERATED_ETC_LINKS, mount_files, mount_dirs])
        # Named by content, so a change of recipe gets a new directory and workers on old and
        # new code never fight over one.
        target = self.root / f".etc-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
        if target.is_dir():
            return target
        self._ensure_root()
        staging = self.root / f".etc-tmp-{secrets.token_hex(8)}"
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


# -- helpers ---------------------------------------------------------------------------------


def _new_sandbox_id() -> str:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(20))


def _check_str_dict(label: str, value: dict[str, str]) -> None:
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise BackendError(f"{label} keys and values must be strings")


def _check_envs(envs: dict[str, str]) -> None:
    _check_str_dict("envs", envs)
    for name, value in envs.items():
        if not _ENV_NAME.match(name):
            raise BackendError(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise BackendError(f"environment variable {name} contains a NUL byte")


def _check_cwd(cwd: str | None) -> str:
    if cwd is None:
        return SANDBOX_HOME
    if "\0" in cwd or not cwd.startswith("/"):
        raise BackendError(f"cwd must be an absolute path, got {cwd!r}")
    return posixpath.normpath(cwd)


def _home_parts(path: str) -> list[str]:
    """The components of ``path`` below /home/user; anything outside it is refused."""
    if not isinstance(path, str) or "\0" in path or not path.startswith("/"):
        raise BackendError(f"path must be an absolute path under {SANDBOX_HOME}, got {path!r}")
    parts = [part for part in posixpath.normpath(path).split("/") if part]
    home = [part for part in SANDBOX_HOME.split("/") if part]
    if parts[: len(home)] != home:
        raise BackendError(f"path must be under {SANDBOX_HOME}, got {path!r}")
    return parts[len(home) :]


def _walk(home_fd: int, parts: list[str], path: str, *, create: _Sandbox | None) -> int:
    """Open the directory ``parts`` below the home, one component at a time, never following
    a symlink. With ``create`` (the sandbox, for ownership) missing directories are made.
    Returns a new descriptor the caller closes."""
    fd = os.dup(home_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise SandboxFileNotFound(f"{path}: no such file or directory") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(next_fd, 0o755)  # whatever the worker's umask
                if create.host_uid is not None:
                    os.fchown(next_fd, create.host_uid, create.host_gid or create.host_uid)
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        raise _path_error(path, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _path_error(path: str, exc: OSError) -> BackendError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return BackendError(
            f"{path}: a component is a symlink or not a directory (links are not followed)"
        )
    if isinstance(exc, FileNotFoundError):
        return SandboxFileNotFound(f"{path}: no such file or directory")
    return BackendError(f"{path}: {exc.strerror}")


def _entry_type(mode: int) -> Literal["file", "dir", "symlink", "other"]:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _stream(file: io.FileIO, chunk_size: int) -> Iterator[bytes]:
    with file:
        fd = file.fileno()
        while chunk := os.read(fd, chunk_size):
            yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _process_start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat: with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(b")") + 2 :].split()[19].decode()


def _age_s(path: Path) -> float:
    """Seconds since ``path`` last changed (ctime: a rename counts); 0 when it is gone."""
    try:
        return time.time() - path.stat().st_ctime
    except FileNotFoundError:
        return 0.0


def _remove_tree(path: Path) -> None:
    def loosen(func: Any, failed: str, exc: Any) -> None:
        # A worker that is not root cannot empty a directory the sandbox made read-only. It
        # owns it, so it can take the right back, through an O_PATH descriptor: a link the
        # sandbox planted is never followed to chmod a host file.
        for target in (failed, os.path.dirname(failed)):
            try:
                fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.chmod(f"/proc/self/fd/{fd}", 0o700)
            except OSError:
                pass
            finally:
                os.close(fd)

    # Passes until it is gone: the first may hit read-only directories (loosened as it goes)
    # or files that processes SIGKILLed a moment ago were still creating.
    for _ in range(20):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=loosen)
        else:
            shutil.rmtree(path, onerror=loosen)
        if not os.path.lexists(path):
            return
        time.sleep(0.05)


def _searchable(directory: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may pass through ``directory`` (ACLs aside)."""
    info = directory.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    return tuple(int(number) for number in numbers[:3]) if numbers else (0,)


def _explain_bwrap_failure(stderr: str) -> str:
    message = stderr.strip() or "bwrap exited before the command started"
    lowered = message.lower()
    if "namespace" in lowered or "uid map" in lowered or "operation not permitted" in lowered:
        return f"{message} — {USERNS_HINT}"
    return f"sandbox setup failed: {message}"

"""The ``local`` sandbox backend: a live, contained machine per sandbox, on this host.

``create`` makes the sandbox once: its directory and record (store), its cgroups and disk
(limits), and one bubblewrap with all of its namespaces, whose init (init.py) stays running
until the sandbox ends (jail). Every command is forked by that init, so it is in the same
namespaces, cgroups and seccomp filter, and what it leaves in the background is still there
for the next command (process). ``kill``, the reaper and reconcile end every process of the
sandbox and remove its cgroups, mounts, loop device and files. Files are read and written
from the worker (files). All state is on disk: any worker process on the host can use or
destroy any sandbox, whichever created it, and a restarted worker finds them all.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import posixpath
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal

from sandboxes.backends.base import (
    DEFAULT_MAX_OUTPUT_BYTES,
    SANDBOX_HOME,
    BackendError,
    CommandCanceled,
    CommandNotFound,
    CommandOutput,
    CommandResult,
    CommandTimeout,
    FileEntry,
    NetworkPolicy,
    OutputCallback,
    SandboxBackend,
    SandboxInfo,
    SandboxNotFound,
    SandboxPaused,
    UnsupportedOption,
)
from sandboxes.backends.local import files, init, jail, limits, process, store
from sandboxes.backends.local.limits import Group, HostCgroups, Limit, SandboxCgroups
from sandboxes.backends.local.store import InitProcess, SandboxRecord

logger = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HANDLE = re.compile(r"^c[0-9a-f]{16}$")
_READY_TIMEOUT_S = 30.0
_REAP_EVERY_S = 10.0  # create reaps expired sandboxes at most this often
REQUIRED_LIMITS = ("memory", "processes", "cpu", "disk", "seccomp")


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
        cpus: float = 1.0,
        disk_mb: int = 2048,
        require_limits: bool = False,
        cgroup_parent: str = "airlock",
        cgroup_prefer: Literal[1, 2] = 2,
        bwrap_path: str = "bwrap",
        sandbox_uid: int | None = None,
        sandbox_gid: int | None = None,
    ):
        """Per sandbox, all its processes together: ``memory_mb``, ``max_processes``,
        ``cpus`` (cgroups) and ``disk_mb`` for home and /tmp (a loop-mounted image). Per
        process: ``cpu_seconds`` (RLIMIT_CPU) and ``max_file_mb`` (RLIMIT_FSIZE). ``tmp_mb``
        bounds /dev/shm (and /tmp where no disk image can be made). Where the host cannot
        enforce a limit, ``limits()`` says so and what is done instead; ``require_limits``
        refuses to create sandboxes then.

        ``cgroup_parent``: the cgroup (in each hierarchy) under which sandboxes get theirs;
        ``cgroup_prefer``: the cgroup version tried first for each role.
        ``sandbox_uid``/``sandbox_gid``: the host user sandboxes run as when the worker is
        root (default ``nobody``). A worker that is not root runs them as itself.
        """
        # Long for its docstring and its checks: it only stores configuration.
        for label, value in (
            ("cpu_seconds", cpu_seconds),
            ("memory_mb", memory_mb),
            ("max_processes", max_processes),
            ("max_file_mb", max_file_mb),
            ("tmp_mb", tmp_mb),
            ("cpus", cpus),
            ("disk_mb", disk_mb),
        ):
            if value <= 0:
                raise ValueError(f"{label} must be positive, got {value}")
        self.root = Path(root)
        self.cpu_seconds = cpu_seconds
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.max_file_mb = max_file_mb
        self.tmp_mb = tmp_mb
        self.cpus = cpus
        self.disk_mb = disk_mb
        self.require_limits = require_limits
        self.bwrap_path = bwrap_path
        if os.geteuid() == 0:
            self.host_uid: int | None = jail.NOBODY_UID if sandbox_uid is None else sandbox_uid
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
        self.cgroup_parent = cgroup_parent
        self._cgroups = HostCgroups(parent=cgroup_parent, prefer=cgroup_prefer)
        self._bwrap: tuple[str, str] | None = None  # (absolute path, version)
        self._etc_dir: Path | None = None
        self._static_args: list[str] | None = None
        self._root_ready = False
        self._disk_problem: str | Literal[False] | None = False  # False: not probed yet
        self._last_reap = 0.0

    @classmethod
    def from_settings(cls) -> LocalBackend:
        from django.conf import settings

        base_dir = Path(getattr(settings, "BASE_DIR", Path(__file__).resolve().parents[3]))
        return cls(
            root=Path(getattr(settings, "SANDBOX_LOCAL_ROOT", base_dir / "var" / "sandboxes")),
            cpu_seconds=getattr(settings, "SANDBOX_LOCAL_CPU_SECONDS", 600),
            memory_mb=getattr(settings, "SANDBOX_LOCAL_MEMORY_MB", 1024),
            max_processes=getattr(settings, "SANDBOX_LOCAL_MAX_PROCESSES", 256),
            max_file_mb=getattr(settings, "SANDBOX_LOCAL_MAX_FILE_MB", 2048),
            tmp_mb=getattr(settings, "SANDBOX_LOCAL_TMP_MB", 512),
            cpus=float(getattr(settings, "SANDBOX_LOCAL_CPUS", 1)),
            disk_mb=getattr(settings, "SANDBOX_LOCAL_DISK_MB", 2048),
            require_limits=getattr(settings, "SANDBOX_LOCAL_REQUIRE_LIMITS", False),
            cgroup_parent=getattr(settings, "SANDBOX_LOCAL_CGROUP", "airlock"),
            bwrap_path=getattr(settings, "SANDBOX_LOCAL_BWRAP", "bwrap"),
            sandbox_uid=getattr(settings, "SANDBOX_LOCAL_UID", None),
            sandbox_gid=getattr(settings, "SANDBOX_LOCAL_GID", None),
        )

    # -- what this host enforces -------------------------------------------------------------

    @property
    def supports_pause(self) -> bool:  # the cgroup freezer, where the host has one
        self._cgroups.probe()
        return "track" in self._cgroups.parents

    @supports_pause.setter
    def supports_pause(self, value: bool) -> None:
        raise AttributeError("supports_pause follows the host; it cannot be set")

    def limits(self) -> list[Limit]:
        """Every limit: how it is enforced here, or what is done instead and why."""
        self._cgroups.probe()
        parents, problems = self._cgroups.parents, self._cgroups.problems
        disk_problem = self._disk()
        _, seccomp_summary = jail.seccomp_program()

        def via(role: limits.Role) -> str:
            return f"cgroup v{parents[role].version} at {parents[role].path}"

        report = [
            Limit("memory", True,
                  f"{self.memory_mb} MB per sandbox, all its processes together ({via('memory')}); "
                  "over it the kernel's OOM killer ends one of its processes")
            if "memory" in parents else
            Limit("memory", False,
                  f"not enforced per sandbox: {problems['memory']}; instead each process may map "
                  f"{self.memory_mb} MB (RLIMIT_AS), so several together can use more"),
            Limit("processes", True,
                  f"{self.max_processes} processes and threads per sandbox ({via('pids')})")
            if "pids" in parents else
            Limit("processes", False,
                  f"not enforced per sandbox: {problems['pids']}; instead RLIMIT_NPROC="
                  f"{self.max_processes} per host user, shared by every sandbox running as it"),
            Limit("cpu", True,
                  f"{self.cpus:g} CPUs per sandbox ({via('cpu')}), and {self.cpu_seconds} "
                  "CPU-seconds per process (RLIMIT_CPU)")
            if "cpu" in parents else
            Limit("cpu", False,
                  f"not enforced per sandbox: {problems['cpu']}; instead only "
                  f"{self.cpu_seconds} CPU-seconds per process (RLIMIT_CPU): a sandbox may "
                  "use every core"),
            Limit("disk", True,
                  f"{self.disk_mb} MB for home and /tmp together (a loop-mounted ext4 image "
                  f"per sandbox), {self.max_file_mb} MB per file")
            if disk_problem is None else
            Limit("disk", False,
                  f"not enforced: {disk_problem}; instead the home is on the host's disk, "
                  f"bounded per file only ({self.max_file_mb} MB, RLIMIT_FSIZE), and /tmp is "
                  f"a {self.tmp_mb} MB tmpfs"),
            Limit("seccomp", True, f"{seccomp_summary} (libseccomp)")
            if jail.seccomp_program()[0] is not None else
            Limit("seccomp", False,
                  f"not enforced: {seccomp_summary}; instead no system call filter (the "
                  "namespaces, no capabilities and no nested user namespaces still apply)"),
            Limit("command kill", True,
                  f"a cgroup per command ({via('track')}): a timeout or kill reaches "
                  "everything it started")
            if "track" in parents else
            Limit("command kill", False,
                  f"no cgroup per command: {problems['track']}; instead a timeout or kill "
                  "ends the command's process group, and what left it lives until the "
                  "sandbox ends"),
            Limit("pause", True, f"the cgroup freezer ({via('track')})")
            if "track" in parents else
            Limit("pause", False, f"not available: {problems['track']}; pausing is refused"),
        ]  # fmt: skip
        return report

    def missing_limits(self) -> list[Limit]:
        required = [limit for limit in self.limits() if limit.name in REQUIRED_LIMITS]
        return [limit for limit in required if not limit.enforced]

    def _require(self) -> None:
        if not self.require_limits:
            return
        missing = self.missing_limits()
        if missing:
            details = "; ".join(f"{limit.name}: {limit.detail}" for limit in missing)
            raise BackendError(
                f"SANDBOX_LOCAL_REQUIRE_LIMITS is set and this host cannot enforce every "
                f"limit: {details}"
            )

    def _cpu_count(self) -> int:
        self._cgroups.probe()
        if "cpu" in self._cgroups.parents:
            return max(1, round(self.cpus))
        return os.cpu_count() or 1  # nothing keeps a sandbox off any core

    def _disk(self) -> str | None:
        if self._disk_problem is False:
            self._disk_problem = limits.disk_problem()
        return self._disk_problem

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
        if network is not None:
            self.check_network(network)
        self._bwrap_binary()  # fail at create, not at the first command, when bwrap is missing
        self._require()
        self._ensure_root()
        if time.monotonic() - self._last_reap > _REAP_EVERY_S:
            self._last_reap = time.monotonic()
            self.reap_expired()
        now = datetime.now(UTC)
        record = SandboxRecord(
            sandbox_id=store.new_sandbox_id(),
            template=template,
            metadata=dict(metadata),
            envs=dict(envs),
            created_at=now,
            expires_at=now + timedelta(seconds=timeout_s),
            cpu_count=self._cpu_count(),
            memory_mb=self.memory_mb,
            host_uid=self.host_uid,
            host_gid=self.host_gid,
            limits={limit.name: limit.enforced for limit in self.limits()},
        )
        directory = self._dir(record.sandbox_id)
        try:
            directory.mkdir(mode=0o711)
            directory.chmod(0o711)  # mkdir's mode is cut by the umask
            store.write_creator(directory)
            cgroups = self._make_cgroups(directory, record.sandbox_id)
            tmp = self._make_home_and_tmp(directory)
            initial = self._start_init(directory, cgroups, tmp)
            # The record comes last: a directory without one is not a sandbox yet.
            store.write_record(directory, replace(record, init=initial))
        except BaseException as exc:
            self._finish_destroy(directory)
            if isinstance(exc, BackendError):
                raise
            if isinstance(exc, OSError):
                raise BackendError(f"cannot create a sandbox under {self.root}: {exc}") from exc
            raise
        return record.info()

    def _make_cgroups(self, directory: Path, sandbox_id: str) -> SandboxCgroups:
        cgroups = self._cgroups.for_sandbox(sandbox_id)
        # Recorded before they exist, so a crash right after still lets the reaper find them.
        store.write_atomic(directory / store.CGROUPS_FILE, cgroups.to_json())
        cgroups.create(
            memory_mb=self.memory_mb,
            max_processes=self.max_processes,
            cpus=self.cpus,
            delegate_to=(self.host_uid, self.host_gid) if self.host_uid is not None else None,
        )
        return cgroups

    def _make_home_and_tmp(self, directory: Path) -> Path | None:
        """The home (always ``<dir>/home`` on the host) and the /tmp to bind, or None for a
        tmpfs /tmp when no disk image can be made here."""
        home = directory / store.HOME_DIR
        home.mkdir(mode=0o700)
        if self._disk() is not None:
            self._own(home)
            return None
        disk = directory / store.DISK_DIR
        limits.make_disk(directory / store.DISK_IMAGE, disk, size_mb=self.disk_mb)
        (disk / "home").mkdir(mode=0o700)
        self._own(disk / "home")
        (disk / "tmp").mkdir()
        (disk / "tmp").chmod(0o1777)
        limits.bind(disk / "home", home)
        return disk / "tmp"

    def _own(self, path: Path) -> None:
        if self.host_uid is not None:
            os.chown(path, self.host_uid, self.host_gid or self.host_uid)

    def _start_init(
        self, directory: Path, cgroups: SandboxCgroups, tmp: Path | None
    ) -> InitProcess:
        """Start the sandbox's bubblewrap and init; move them into the cgroups; let it run."""
        bwrap, _ = self._bwrap_binary()
        seccomp, _ = jail.seccomp_program()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ready, ready_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        owned = [listener, ready, ready_child]
        source_fd = jail.memfd("airlock-init", Path(init.__file__).read_bytes())
        try:
            listener.bind(str(directory / store.CONTROL_SOCKET))
            os.chmod(directory / store.CONTROL_SOCKET, 0o600)
            listener.listen(64)
            ready.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            command = [
                jail.sandbox_python(), "-I", "-S", f"/proc/self/fd/{source_fd}",
                str(listener.fileno()), str(ready_child.fileno()),
            ]  # fmt: skip
            prepared = jail.prepare(
                bwrap=bwrap,
                static=self._static(),
                etc=self._etc(),
                home=directory / store.HOME_DIR,
                tmp=tmp,
                tmp_mb=self.tmp_mb,
                env=jail.BASE_ENV,
                cwd=SANDBOX_HOME,
                seccomp=seccomp,
                command=command,
                extra_fds=(listener.fileno(), ready_child.fileno(), source_fd),
                user=self.host_uid,
                group=self.host_gid,
                die_with_parent=False,  # the sandbox outlives the worker that made it
            )
            with prepared:
                err_r = _launch(prepared)
            for closing in (listener, ready_child):  # the sandbox's now
                closing.close()
            try:
                pid = _read_ready(ready, err_r)
            finally:
                os.close(err_r)
            initial = _identify(pid)
            cgroups.attach(initial.ns_init_pid)
            cgroups.attach(initial.pid)
            self._let_go(ready, cgroups)
            return initial
        finally:
            os.close(source_fd)
            for sock in owned:
                sock.close()

    def _let_go(self, ready: socket.socket, cgroups: SandboxCgroups) -> None:
        """Tell the init to run: the per-process limits of its commands, and the tracking
        cgroup it may make command cgroups in (delegated to the sandbox's host user)."""
        settings = init.request_frame(b"G", {"rlimits": self._rlimits(cgroups)})
        track = cgroups.groups.get("track")
        if track is None:
            ready.sendall(settings)
            return
        track_fd = os.open(track.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rights = struct.pack("i", track_fd)
            ready.sendmsg([settings], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        finally:
            os.close(track_fd)

    def kill(self, sandbox_id: str) -> bool:
        if not store.SANDBOX_ID.match(sandbox_id):
            return False
        record = store.read_record(self._dir(sandbox_id))
        destroyed = self._destroy(sandbox_id)
        # One that outlived its timeout was already gone as far as callers are concerned.
        return destroyed and record is not None and not record.expired()

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        with self._updating(sandbox_id) as (record, save):
            save(replace(record, expires_at=datetime.now(UTC) + timedelta(seconds=timeout_s)))

    def get_info(self, sandbox_id: str) -> SandboxInfo:
        return self._load(sandbox_id).info()

    def list_sandboxes(self, metadata: dict[str, str]) -> list[SandboxInfo]:
        found = []
        for record in self._scan()[0]:
            if all(record.metadata.get(key) == value for key, value in metadata.items()):
                found.append(record.info())
        return sorted(found, key=lambda info: info.started_at or datetime.min.replace(tzinfo=UTC))

    def reap_expired(self) -> int:
        """Destroy sandboxes past their timeout or whose init died, and leftovers of crashed
        creates and kills. There is no daemon behind this backend: the sweep calls this,
        and so do ``create`` and ``list_sandboxes`` (reconcile). Returns how many it destroyed.
        """
        return self._scan()[1]

    def pause(self, sandbox_id: str) -> None:
        if not self.supports_pause:
            raise UnsupportedOption(
                f"the local backend cannot pause sandboxes here: {self._cgroups.problems['track']}"
            )
        with self._updating(sandbox_id) as (record, save):
            if record.paused:
                return
            cgroups = self._sandbox_cgroups(sandbox_id)
            try:
                cgroups.freeze(True)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    cgroups.freeze(False)
                raise BackendError(f"could not pause sandbox {sandbox_id}: {exc}") from None
            save(replace(record, paused=True))

    def resume(self, sandbox_id: str, *, timeout_s: int) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        with self._updating(sandbox_id) as (record, save):
            if record.paused:
                try:
                    self._sandbox_cgroups(sandbox_id).freeze(False)
                except OSError as exc:
                    raise BackendError(f"could not resume sandbox {sandbox_id}: {exc}") from None
            expires_at = datetime.now(UTC) + timedelta(seconds=timeout_s)
            save(replace(record, paused=False, expires_at=expires_at))

    def check(self) -> str:
        path, version = self._bwrap_binary()
        self._require()
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
        missing = [limit.name for limit in self.missing_limits()]
        return (
            f"local: bubblewrap {version} ({path}), root {self.root}, sandboxes run as {runs_as}"
            + (f"; NOT enforced here: {', '.join(missing)}" if missing else "; all limits enforced")
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
        record = self._live(sandbox_id)
        spec, cgroups = self._spec(record, command, cwd=cwd, envs=envs)
        started = time.monotonic()
        stdout = process.Capture("stdout", max_output_bytes, on_output)
        stderr = process.Capture("stderr", max_output_bytes, on_output)
        oom_before = cgroups.oom_kills()
        running: list[tuple[process.Channel, Group | None]] = []

        def kill_command() -> None:
            channel, group = running[0]
            if group is not None:
                limits.kill_group(group)  # its cgroup: everything it started
            else:
                channel.send(init.frame(b"K"))  # the init kills its process group

        watch = process.Watch(
            command_deadline=started + timeout_s if timeout_s > 0 else None,
            sandbox_deadline=self._deadline_of(sandbox_id, record),
            kill=kill_command,
            cancel=cancel,
        )
        try:
            with self._channel(sandbox_id) as channel:
                command_started = process.start(channel, spec)
                running.append((channel, self._group_of(cgroups, command_started)))
                ended = process.pump(channel, stdout, stderr, watch)
        except process.InitGone:
            raise self._lost(sandbox_id) from None
        stdout.finish()
        stderr.finish()
        oom = cgroups.oom_kills() > oom_before
        return self._result(sandbox_id, ended, stdout, stderr, started, timeout_s, oom, on_output)

    def _result(
        self,
        sandbox_id: str,
        ended: process.Ended,
        stdout: process.Capture,
        stderr: process.Capture,
        started: float,
        timeout_s: float,
        oom: bool,
        on_output: OutputCallback | None,
    ) -> CommandResult:
        """How a foreground command ended, as the interface says it: a result, or the error."""
        if ended.outcome is process.Outcome.SANDBOX_EXPIRED:
            self._destroy(sandbox_id)
            raise SandboxNotFound(f"sandbox {sandbox_id} reached its timeout")
        if ended.outcome is process.Outcome.TIMEOUT:
            message = f"command timed out after {timeout_s:g}s"
            raise CommandTimeout(message, stdout=stdout.text(), stderr=stderr.text())
        if ended.outcome is process.Outcome.CANCELED:
            raise CommandCanceled(stdout=stdout.text(), stderr=stderr.text())
        error_text = stderr.text()
        if oom:  # the OOM killer acted in this sandbox while the command ran: say so
            note = (
                f"\n[airlock] out of memory: the sandbox reached its {self.memory_mb} MB limit "
                "and the kernel killed a process in it\n"
            )
            error_text += note
            if on_output is not None:
                on_output("stderr", note)
        return CommandResult(
            exit_code=ended.exit_code if ended.exit_code is not None else -1,
            stdout=stdout.text(),
            stderr=error_text,
            truncated=stdout.truncated or stderr.truncated,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    def start_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> str:
        record = self._live(sandbox_id)
        spec, _ = self._spec(
            record, command, cwd=cwd, envs=envs, background=True, max_output=max_output_bytes
        )
        try:
            with self._channel(sandbox_id) as channel:
                return process.start(channel, spec).cid
        except process.InitGone:
            raise self._lost(sandbox_id) from None

    def command_output(
        self,
        sandbox_id: str,
        handle: str,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> CommandOutput:
        self._live(sandbox_id)
        if not _HANDLE.match(handle):
            raise CommandNotFound(handle)
        try:
            with self._channel(sandbox_id) as channel:
                return process.output(channel, handle, stdout_offset, stderr_offset, max_bytes)
        except process.InitGone:
            raise self._lost(sandbox_id) from None

    def kill_command(self, sandbox_id: str, handle: str) -> bool:
        self._live(sandbox_id)
        if not _HANDLE.match(handle):
            raise CommandNotFound(handle)
        try:
            with self._channel(sandbox_id) as channel:
                was_running = process.kill(channel, handle)
        except process.InitGone:
            raise self._lost(sandbox_id) from None
        group = self._sandbox_cgroups(sandbox_id).command_group(handle)
        if group is not None and group.path.is_dir():
            limits.kill_group(group)  # exact, whatever the init managed
            limits.remove_if_empty(group, wait_s=2.0)
        return was_running

    def bwrap_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
    ) -> jail.BwrapCommand:
        """A fresh bwrap over this sandbox's home running ``command`` on its own, as every
        command ran before sandboxes were live (benchmarks compare against it). It joins
        none of the sandbox's namespaces or cgroups."""
        record = self._live(sandbox_id)
        run_envs = envs or {}
        _check_envs(run_envs)
        bwrap, _ = self._bwrap_binary()
        return jail.prepare(
            bwrap=bwrap,
            static=self._static(),
            etc=self._etc(),
            home=self._dir(sandbox_id) / store.HOME_DIR,
            tmp=None,
            tmp_mb=self.tmp_mb,
            env={**jail.BASE_ENV, **record.envs, **run_envs},
            cwd=_check_cwd(cwd),
            seccomp=jail.seccomp_program()[0],
            command=["/bin/bash", "-c", command],
            user=record.host_uid,
            group=record.host_gid,
            die_with_parent=True,
        )

    def _spec(
        self,
        record: SandboxRecord,
        command: str,
        *,
        cwd: str | None,
        envs: dict[str, str] | None,
        background: bool = False,
        max_output: int = 0,
    ) -> tuple[process.CommandSpec, SandboxCgroups]:
        run_envs = envs or {}
        _check_envs(run_envs)
        if "\0" in command:
            raise BackendError("the command contains a NUL byte")
        cgroups = self._sandbox_cgroups(record.sandbox_id)
        spec = process.CommandSpec(
            command=command,
            env={**jail.BASE_ENV, **record.envs, **run_envs},
            cwd=_check_cwd(cwd),
            background=background,
            max_output=max_output,
        )
        return spec, cgroups

    @staticmethod
    def _group_of(cgroups: SandboxCgroups, started: process.Started) -> Group | None:
        return cgroups.command_group(started.cid) if started.tracked else None

    def _rlimits(self, cgroups: SandboxCgroups) -> list[tuple[str, int]]:
        """Per-process limits; the per-process stand-ins where a cgroup is missing."""
        pairs = [
            ("RLIMIT_CPU", self.cpu_seconds),
            ("RLIMIT_FSIZE", self.max_file_mb * 1024 * 1024),
        ]
        if "memory" not in cgroups.groups:
            pairs.append(("RLIMIT_AS", self.memory_mb * 1024 * 1024))
        if "pids" not in cgroups.groups:
            pairs.append(("RLIMIT_NPROC", self.max_processes))
        return pairs

    def _deadline_of(self, sandbox_id: str, record: SandboxRecord) -> Callable[[], float | None]:
        """The sandbox's own deadline on the monotonic clock, asked again once it passes
        (another worker may have extended it with set_timeout)."""
        current = [_monotonic_at(record.expires_at)]

        def deadline() -> float | None:
            if time.monotonic() < current[0]:
                return current[0]
            latest = store.read_record(self._dir(sandbox_id))
            if latest is None:
                return None
            paused_for = time.monotonic() + 3600  # a paused sandbox does not expire
            current[0] = paused_for if latest.paused else _monotonic_at(latest.expires_at)
            return current[0]

        return deadline

    @contextlib.contextmanager
    def _channel(self, sandbox_id: str) -> Iterator[process.Channel]:
        with process.Channel(self._dir(sandbox_id) / store.CONTROL_SOCKET) as channel:
            yield channel

    def _lost(self, sandbox_id: str) -> SandboxNotFound:
        """The init stopped answering: killed by another worker, or dead. Either way the
        sandbox is gone; what is left of it is removed."""
        if store.read_record(self._dir(sandbox_id)) is not None:
            self._destroy(sandbox_id)
            return SandboxNotFound(f"sandbox {sandbox_id} died (its init ended)")
        return SandboxNotFound(f"sandbox {sandbox_id} was killed while the command ran")

    # -- files -------------------------------------------------------------------------------

    def write_file(self, sandbox_id: str, path: str, data: bytes | BinaryIO) -> None:
        files.home_parts(path)
        record = self._live(sandbox_id)
        home = self._dir(sandbox_id) / store.HOME_DIR
        files.write_file(home, files.Owner(record.host_uid, record.host_gid), path, data)

    def read_file(
        self, sandbox_id: str, path: str, *, chunk_size: int = 64 * 1024
    ) -> Iterator[bytes]:
        files.home_parts(path)
        self._live(sandbox_id)
        return files.read_file(self._dir(sandbox_id) / store.HOME_DIR, path, chunk_size)

    def list_files(self, sandbox_id: str, path: str) -> list[FileEntry]:
        files.home_parts(path)
        self._live(sandbox_id)
        return files.list_files(self._dir(sandbox_id) / store.HOME_DIR, path)

    # -- the store ---------------------------------------------------------------------------

    def _dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def _load(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox, or SandboxNotFound; one past its timeout, or whose init died, is
        destroyed on the way."""
        if not store.SANDBOX_ID.match(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id!r} not found")
        record = store.read_record(self._dir(sandbox_id))
        if record is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} not found")
        if record.expired():
            self._destroy(sandbox_id)
            raise SandboxNotFound(f"sandbox {sandbox_id} reached its timeout")
        if record.init is not None and not record.init.alive():
            self._destroy(sandbox_id)
            raise SandboxNotFound(f"sandbox {sandbox_id} died (its init ended)")
        return record

    def _live(self, sandbox_id: str) -> SandboxRecord:
        record = self._load(sandbox_id)
        if record.paused:
            raise SandboxPaused(f"sandbox {sandbox_id} is paused: resume it first")
        return record

    @contextlib.contextmanager
    def _updating(
        self, sandbox_id: str
    ) -> Iterator[tuple[SandboxRecord, Callable[[SandboxRecord], None]]]:
        """Read-modify-write of the record under a lock, so concurrent pause, resume and
        set_timeout from several workers never lose one another's change."""
        self._load(sandbox_id)
        directory = self._dir(sandbox_id)
        try:
            lock = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            raise SandboxNotFound(f"sandbox {sandbox_id} not found") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self._load(sandbox_id)

            def save(updated: SandboxRecord) -> None:
                try:
                    store.write_record(directory, updated)
                except FileNotFoundError:  # killed meanwhile
                    raise SandboxNotFound(f"sandbox {sandbox_id} not found") from None

            yield record, save
        finally:
            os.close(lock)

    def _sandbox_cgroups(self, sandbox_id: str) -> SandboxCgroups:
        return _cgroups_in(self._dir(sandbox_id))

    def _scan(self) -> tuple[list[SandboxRecord], int]:
        """Live sandboxes under the root, and how many dead ones were destroyed on the way
        (expired, init gone, or leftovers of crashed creates and kills)."""
        live: list[SandboxRecord] = []
        reaped = 0
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return live, reaped
        now = datetime.now(UTC)
        for name in names:
            directory = self.root / name
            if name.startswith(store.TRASH_PREFIX):
                # Young ones belong to a kill still under way in another worker.
                if store.age_s(directory) > store.ABANDONED_AFTER_S:
                    self._finish_destroy(directory)
                continue
            if not store.SANDBOX_ID.match(name):
                continue
            record = store.read_record(directory)
            if record is None:
                alive = store.creator_alive(directory)
                old = store.age_s(directory) > store.ABANDONED_AFTER_S
                if alive is False or (alive is None and old):
                    self._destroy(name)
            elif record.expired(now) or (record.init is not None and not record.init.alive()):
                reaped += self._destroy(name)
            else:
                live.append(record)
        return live, reaped

    def _destroy(self, sandbox_id: str) -> bool:
        """End every process of the sandbox and remove all it had. False when already gone."""
        trash = self.root / f"{store.TRASH_PREFIX}{sandbox_id}-{secrets.token_hex(4)}"
        try:
            # The rename is the claim: of two concurrent kills, exactly one gets here.
            os.rename(self._dir(sandbox_id), trash)
        except FileNotFoundError:
            return False
        self._finish_destroy(trash)
        return True

    def _finish_destroy(self, directory: Path) -> None:
        """Processes first (nothing may hold the mounts), then mounts and the loop device,
        then cgroups, then the files. Left in place for a later reap if a cgroup will not go."""
        record = store.read_record(directory)
        cgroups = _cgroups_in(directory)
        cgroups.kill_all()
        if record is not None and record.init is not None and record.init.alive():
            # Pid 1 of the sandbox's pid namespace: the kernel kills the rest with it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.init.ns_init_pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            cgroups.freeze(False)  # a frozen v1 process dies only once thawed
        cgroups.wait_empty()
        if record is not None and record.init is not None:
            _wait_gone(record.init)
        limits.unmount_all(directory)
        if not cgroups.remove():
            logger.warning("sandbox cgroups still busy, left for the next reap: %s", directory)
            return
        store.remove_tree(directory)

    # -- the host ----------------------------------------------------------------------------

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
                if not store.searchable(directory, self.host_uid, self.host_gid or self.host_uid):
                    raise BackendError(
                        f"{directory} is not searchable by the sandbox user (uid "
                        f"{self.host_uid}), so bwrap cannot reach the sandboxes under "
                        f"{self.root}: chmod o+x {directory}, or choose another "
                        "SANDBOX_LOCAL_ROOT"
                    )
        self._cgroups.probe()
        self._root_ready = True

    def _bwrap_binary(self) -> tuple[str, str]:
        if self._bwrap is None:
            self._bwrap = jail.find_bwrap(self.bwrap_path)
        return self._bwrap

    def _static(self) -> list[str]:
        if self._static_args is None:
            self._static_args = jail.static_args(shm_mb=self.tmp_mb)
        return self._static_args

    def _etc(self) -> Path:
        if self._etc_dir is None or not self._etc_dir.is_dir():
            self._ensure_root()
            self._etc_dir = jail.build_etc(self.root)
        return self._etc_dir


# -- helpers ---------------------------------------------------------------------------------


def _launch(prepared: jail.BwrapCommand) -> int:
    """Start the sandbox's bwrap; returns the read end of its stderr (for setup errors)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        # setsid --fork: bwrap is not this worker's child, so no worker has to reap it, and
        # it leaves the worker's session and process group.
        subprocess.run(
            [_setsid(), "--fork", *prepared.argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_w,
            check=True, timeout=_READY_TIMEOUT_S, **prepared.popen_kwargs(),
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        os.close(err_r)
        raise BackendError(f"could not start bubblewrap (exit {exc.returncode})") from None
    finally:
        os.close(err_w)
    return err_r


def _cgroups_in(directory: Path) -> SandboxCgroups:
    try:
        return SandboxCgroups.from_json((directory / store.CGROUPS_FILE).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return SandboxCgroups()


def _read_ready(ready: socket.socket, err_r: int) -> int:
    """The init's host pid, from its first message; bwrap's error when it never came."""
    ready.settimeout(_READY_TIMEOUT_S)
    try:
        data, ancillary, _, _ = ready.recvmsg(init.HEADER.size, socket.CMSG_SPACE(12))
    except TimeoutError:
        data, ancillary = b"", []
    for level, kind, payload in ancillary:
        if data[:1] == b"P" and level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return int.from_bytes(payload[:4], "little", signed=True)
    errors = b""
    while select.select([err_r], [], [], 1.0)[0]:
        chunk = os.read(err_r, 65536)
        if not chunk:
            break
        errors += chunk
    raise BackendError(jail.explain_bwrap_failure(errors.decode(errors="replace")))


def _identify(pid: int) -> InitProcess:
    status = Path(f"/proc/{pid}/status").read_text()
    parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return InitProcess(
        ns_init_pid=parent,
        ns_init_start=store.process_start_time(parent),
        pid=pid,
        start=store.process_start_time(pid),
        pid_namespace=os.stat(f"/proc/{pid}/ns/pid").st_ino,
    )


def _wait_gone(initial: InitProcess, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while initial.alive() and time.monotonic() < deadline:
        time.sleep(0.002)


def _monotonic_at(moment: datetime) -> float:
    return time.monotonic() + (moment - datetime.now(UTC)).total_seconds()


def _setsid() -> str:
    return shutil.which("setsid") or "/usr/bin/setsid"


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

"""Where local sandboxes live on the host, and what is recorded about each.

    <root>/.etc-<hash>/               the generated /etc, shared by every sandbox
    <root>/<id>/creator               "<pid> <start time>" of the worker creating it
    <root>/<id>/cgroups.json          the sandbox's cgroup directories, written before they exist
    <root>/<id>/sandbox.json          the record (mode 0600); written last: no record, no sandbox
    <root>/<id>/disk.img              the sparse ext4 image holding home and /tmp
    <root>/<id>/disk/                 where that image is mounted (disk/home, disk/tmp)
    <root>/<id>/home/                 disk/home bound here: the host's view of /home/user
    <root>/<id>/init.sock             the init's control socket (the worker's only)
    <root>/.trash-<id>-<random>/      a sandbox being destroyed (the rename is the claim)

This directory is the only state: any worker process on the host can find, use and destroy
any sandbox under the root, whichever worker created it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxes.backends.base import SandboxInfo

RECORD_FILE = "sandbox.json"
CREATOR_FILE = "creator"
CGROUPS_FILE = "cgroups.json"
HOME_DIR = "home"
DISK_DIR = "disk"
DISK_IMAGE = "disk.img"
CONTROL_SOCKET = "init.sock"
TRASH_PREFIX = ".trash-"
SANDBOX_ID = re.compile(r"^[0-9a-z]{20}$")
# A sandbox directory without a record whose creator is unknown, or a trash directory, this
# old is what a crashed create or kill left behind.
ABANDONED_AFTER_S = 60.0


@dataclass(frozen=True)
class InitProcess:
    """The sandbox's processes as the host sees them: bwrap's pid 1 of the sandbox's pid
    namespace (killing it ends every process in the namespace) and the init below it."""

    ns_init_pid: int
    ns_init_start: str
    pid: int
    start: str
    pid_namespace: int  # inode of the namespace: a pid found later is checked against it

    def alive(self) -> bool:
        return process_start_time(self.ns_init_pid) == self.ns_init_start


@dataclass(frozen=True)
class SandboxRecord:
    """What ``sandbox.json`` holds."""

    sandbox_id: str
    template: str
    metadata: dict[str, str]
    envs: dict[str, str]
    created_at: datetime
    expires_at: datetime
    cpu_count: int
    memory_mb: int
    host_uid: int | None  # who the sandbox runs as on the host; None: the worker's own uid
    host_gid: int | None
    init: InitProcess | None = None
    paused: bool = False
    limits: dict[str, Any] = field(default_factory=dict)  # what was enforced, for the record

    def expired(self, now: datetime | None = None) -> bool:
        # A paused sandbox waits, as on E2B, until resumed or killed (the run's max duration).
        return not self.paused and (now or datetime.now(UTC)) >= self.expires_at

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
        init = self.init
        return json.dumps(
            {
                "version": 2,
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
                "init": None if init is None else init.__dict__,
                "paused": self.paused,
                "limits": self.limits,
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SandboxRecord:
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
            init=InitProcess(**data["init"]) if data.get("init") else None,
            paused=data.get("paused", False),
            limits=data.get("limits", {}),
        )


def new_sandbox_id() -> str:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(20))


def read_record(directory: Path) -> SandboxRecord | None:
    try:
        return SandboxRecord.from_json((directory / RECORD_FILE).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_record(directory: Path, record: SandboxRecord) -> None:
    write_atomic(directory / RECORD_FILE, record.to_json())


def write_creator(directory: Path) -> None:
    pid = os.getpid()
    write_atomic(directory / CREATOR_FILE, f"{pid} {process_start_time(pid)}".encode())


def creator_alive(directory: Path) -> bool | None:
    """Whether the worker that is creating this sandbox still runs; None when unknown."""
    try:
        pid, started = (directory / CREATOR_FILE).read_text().split()
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return process_start_time(int(pid)) == started


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def process_start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat: with the pid, it names one process for good. Empty when
    the process is gone (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return "" if fields[0] == b"Z" else fields[19].decode()


def age_s(path: Path) -> float:
    """Seconds since ``path`` last changed (ctime: a rename counts); 0 when it is gone."""
    try:
        return time.time() - path.stat().st_ctime
    except FileNotFoundError:
        return 0.0


def remove_tree(path: Path) -> None:
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


def searchable(directory: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may pass through ``directory`` (ACLs aside)."""
    info = directory.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)

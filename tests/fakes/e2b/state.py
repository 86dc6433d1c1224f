"""What the double knows: sandboxes and their host processes, requests, faults, latencies.

Shared by the control plane and envd (as E2B's API and the VMs share one truth) and open to
tests, which read ``sandboxes`` and ``requests`` and change ``api_key``, ``known_templates``,
``latencies`` or ``deadline_sends_end_event`` directly. All access to the mutable parts goes
through ``lock``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .process import FakeProcess

FAKE_API_KEY = "e2b_fake_0123456789abcdef"
# The envd version the double reports. The pinned SDK opens feature paths by envd version
# (e2b/envd/versions.py); the double implements every path up to this one: stdin off (0.3.0),
# the default user (0.4.0), closing stdin (0.5.2), octet-stream and gzip uploads (0.5.7). It
# does not implement file metadata (0.6.2) nor the watcher options (0.6.3, 0.6.4), so it must
# not report those versions: the SDK would then send what the double cannot serve.
ENVD_VERSION = "0.5.7"
ENVD_PORT = 49983  # e2b ConnectionConfig.envd_port
SANDBOX_HOME = "/home/user"
# infra packages/api/internal/sandbox/sandboxtypes/states.go SandboxTimeoutDefault, and the
# spec's NewSandbox/ResumedSandbox `timeout` default: POST /sandboxes and /resume.
DEFAULT_TIMEOUT_S = 15
# POST /v2/sandboxes and /v2/sandboxes/{id}/connect, which the pinned SDK calls, are in neither
# the spec nor infra at the commits checked; the SDK's own generated models for them
# (NewSandboxV2, ConnectSandboxV2) document `Default: 300`. Not confirmed from a server source.
DEFAULT_TIMEOUT_V2_S = 300
MAX_TIMEOUT_S = 24 * 3600  # Pro teams; infra checks the team's MaxLengthHours
DEADLINE_LEAD_S = 0.2  # see FakeE2BState.deadline_sends_end_event
MAX_PAGE_SIZE = 100  # spec paginationLimit maximum, infra sandboxesMaxLimit
CPU_COUNT = 2
MEMORY_MB = 512
DISK_SIZE_MB = 1024
# Every process the double starts for a sandbox carries this variable, so the sandbox's
# processes can be found on the host (the VM boundary of real E2B), whatever process group or
# session they moved to. Not part of E2B: the double's own bookkeeping.
MARKER_ENV = "FAKE_E2B_SANDBOX"

Role = Literal["api", "envd"]
SandboxState = Literal["running", "paused"]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RecordedRequest:
    """One request the double received, for assertions."""

    role: Role
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any = None  # the parsed JSON body of control-plane requests
    status: int | None = None  # what the double answered

    @property
    def sandbox_id(self) -> str | None:
        return self.headers.get("e2b-sandbox-id")

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


@dataclass
class Fault:
    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path.fullmatch(path) is not None
        )


Latency = float | tuple[float, float]


@dataclass
class Latencies:
    """How long the double takes to answer each operation, in seconds: a number, or a
    ``(low, high)`` range drawn from uniformly per request. Zero (the default) answers at once.

    E.g. ``Latencies(create=(0.15, 0.45), exec=(0.02, 0.05), kill=0.05)`` for a load test.
    ``exec`` delays a command's start event, ``files`` every file transfer and filesystem call,
    ``listing`` each page of the sandbox list.
    """

    create: Latency = 0.0
    connect: Latency = 0.0
    get: Latency = 0.0
    listing: Latency = 0.0
    kill: Latency = 0.0
    set_timeout: Latency = 0.0
    pause: Latency = 0.0
    resume: Latency = 0.0
    exec: Latency = 0.0
    signal: Latency = 0.0
    files: Latency = 0.0

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def wait(self, operation: str) -> None:
        spec: Latency = getattr(self, operation)
        seconds = random.uniform(*spec) if isinstance(spec, tuple) else spec
        if seconds > 0:
            time.sleep(seconds)


# -- the sandbox's processes on the host -------------------------------------------------------


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a host process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    return rest[0], int(rest[2])


def _carries_marker(pid: int, marker: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return marker in environ.split(b"\0")


def host_processes(sandbox_id: str, group: int | None) -> list[int]:
    """Live (non-zombie) host processes of a sandbox: its process group, and everything that
    carries its marker (children that moved to a group or session of their own)."""
    marker = f"{MARKER_ENV}={sandbox_id}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields_ = _stat_fields(pid)
        if fields_ is None or fields_[0] == "Z":
            continue
        if (group is not None and fields_[1] == group) or _carries_marker(pid, marker):
            found.append(pid)
    return found


@dataclass
class FakeSandbox:
    """One sandbox as the double sees it. ``home`` is the host directory behind ``/home/user``;
    ``tmp`` the one the sandbox's commands get as ``TMPDIR``."""

    sandbox_id: str
    template_id: str
    metadata: dict[str, str]
    envs: dict[str, str]
    root: Path
    started_at: datetime
    end_at: datetime
    allow_internet_access: bool | None = None  # as the create request said (None: not said)
    network: dict[str, Any] | None = None  # the create request's `network`, as sent
    auto_pause: bool = False
    domain: str | None = None
    envd_access_token: str = field(default_factory=lambda: secrets.token_hex(16))
    killed_at: datetime | None = None
    paused_at: datetime | None = None
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    reaped: bool = False  # its processes were killed after it died
    _anchor: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def alive(self) -> bool:
        """Known to E2B: running before its deadline, or paused (a paused sandbox is kept
        until it is killed; its deadline starts again at resume)."""
        if self.killed_at is not None:
            return False
        return self.paused_at is not None or now() < self.end_at

    @property
    def running(self) -> bool:
        return self.alive and self.paused_at is None

    @property
    def state(self) -> SandboxState:
        return "paused" if self.paused_at is not None else "running"

    def host_path(self, path: str) -> Path:
        """The host path behind a sandbox path; ValueError outside ``/home/user``.

        Relative paths are relative to the home, as in envd. Links that resolve outside the
        home are refused too, so a test can never read or write the host through the double.
        """
        absolute = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
        if absolute != SANDBOX_HOME and not absolute.startswith(SANDBOX_HOME + "/"):
            raise ValueError(f"the E2B test double only serves paths under {SANDBOX_HOME}: {path}")
        host = self.home / posixpath.relpath(absolute, SANDBOX_HOME)
        resolved = Path(os.path.realpath(host))
        if resolved != self.home.resolve() and not resolved.is_relative_to(self.home.resolve()):
            raise ValueError(f"{path} resolves outside {SANDBOX_HOME}")
        return host

    def sandbox_path(self, host: Path) -> str:
        relative = os.path.relpath(host, self.home)
        return SANDBOX_HOME if relative == "." else posixpath.join(SANDBOX_HOME, relative)

    # -- processes ------------------------------------------------------------------------------

    def process_group(self) -> int:
        """The host process group every command of this sandbox joins, led by a sleeping
        anchor process: like envd's children, a command's main process is never a group
        leader, and ``kill 0`` inside a command reaches the sandbox, never the test runner."""
        if self._anchor is None or self._anchor.poll() is not None:
            self._anchor = subprocess.Popen(
                ["sleep", "infinity"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.marker_env()},
                process_group=0,
            )
        return self._anchor.pid

    def marker_env(self) -> dict[str, str]:
        return {MARKER_ENV: self.sandbox_id}

    def _group(self) -> int | None:
        return self._anchor.pid if self._anchor is not None else None

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every host process of the sandbox, again until no new one shows up
        (a process may fork while we go)."""
        seen: set[int] = set()
        for _ in range(20):
            pids = [p for p in host_processes(self.sandbox_id, self._group()) if p not in seen]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            seen.update(pids)

    def kill_processes(self) -> None:
        """What E2B's VM going away does: every process of the sandbox dies."""
        if self._anchor is None and not self.processes:
            return
        self.signal_all(signal.SIGSTOP)  # no more forks while we look
        for _ in range(50):
            pids = host_processes(self.sandbox_id, self._group())
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        if self._anchor is not None:
            self._anchor.wait()

    def freeze(self) -> None:
        """Pause: every process stops where it is, memory and files kept."""
        self.signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal_all(signal.SIGCONT)

    def running_processes(self) -> list[FakeProcess]:
        return [p for p in self.processes.values() if p.running]

    # -- answers ----------------------------------------------------------------------------

    def listed(self) -> dict[str, Any]:
        """The spec's ListedSandbox. A paused sandbox reports its pause time as ``endAt``, as
        infra does (sandboxes_list.go: EndAt is the snapshot build's creation time)."""
        return {
            "templateID": self.template_id,
            "alias": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": "fake-client",
            "startedAt": rfc3339(self.started_at),
            "endAt": rfc3339(self.paused_at or self.end_at),
            "cpuCount": CPU_COUNT,
            "memoryMB": MEMORY_MB,
            "diskSizeMB": DISK_SIZE_MB,
            "state": self.state,
            "envdVersion": ENVD_VERSION,
            "metadata": dict(self.metadata),
        }

    def detail(self) -> dict[str, Any]:
        """The spec's SandboxDetail (GET /sandboxes/{id}); infra sandbox_get.go reports the
        cluster's domain for a running sandbox and none for a paused one."""
        payload = {
            **self.listed(),
            "envdAccessToken": self.envd_access_token,
            "allowInternetAccess": self.allow_internet_access,
            "domain": self.domain if self.paused_at is None else None,
            "lifecycle": {
                "onTimeout": "pause" if self.auto_pause else "kill",
                "autoResume": False,
            },
        }
        if self.network is not None:
            payload["network"] = self.network
        return payload

    def created(self) -> dict[str, Any]:
        """The spec's Sandbox: what create, connect and resume answer."""
        return {
            "templateID": self.template_id,
            "alias": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": "fake-client",
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.envd_access_token,
            "trafficAccessToken": None,
            "domain": self.domain,
        }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class FakeE2BState:
    """Everything the double knows, shared by its servers and open to tests."""

    def __init__(self, root: Path) -> None:
        self.lock = threading.RLock()
        self.root = root
        self.api_key = FAKE_API_KEY
        self.known_templates: set[str] | None = None  # None: every template exists
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.requests: list[RecordedRequest] = []
        self.latencies = Latencies()
        # envd ends a Start stream at its deadline from two sides at once: the request's
        # context (DEADLINE_EXCEEDED) and the process's (the main process is killed, an end
        # event with exit -1 follows). Which one the client sees first is a race in envd
        # (start.go), and the client's own deadline runs too; the double sends
        # DEADLINE_EXCEEDED. Set this to have the end event win instead: the double then
        # applies the deadline DEADLINE_LEAD_S early, so that it reaches a client whose own
        # deadline would otherwise fire first (the sync SDK's does; the async SDK was seen
        # getting the end event).
        self.deadline_sends_end_event = False
        # The domain create and connect answer, where envd is reached as
        # https://49983-<sandbox id>.<domain> when no sandbox URL is configured.
        self.sandbox_domain: str | None = None
        self._faults: list[Fault] = []

    # -- for tests ----------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next ``times`` control-plane requests answer ``status`` (e.g. 401, 429, 500, 503).

        ``method`` and ``path`` (a regular expression the whole path must match, e.g.
        ``r"/sandboxes/[^/]+"``) narrow the requests that fail; others pass untouched. The SDK
        retries 429/502/503/504 three times by itself: four failures exhaust it.
        """
        pattern = re.compile(path) if path is not None else None
        with self.lock:
            self._faults.append(Fault(status, times, retry_after, method, pattern))

    @property
    def pending_faults(self) -> int:
        with self.lock:
            return sum(f.remaining for f in self._faults)

    def add_sandbox(
        self,
        *,
        template_id: str = "base",
        metadata: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_V2_S,
        started_at: datetime | None = None,
        allow_internet_access: bool | None = None,
        network: dict[str, Any] | None = None,
        auto_pause: bool = False,
    ) -> FakeSandbox:
        """Start a sandbox without a request: to seed state (e.g. many sandboxes to page)."""
        moment = now()
        started = started_at or moment
        sandbox_id = "i" + secrets.token_hex(10)
        root = self.root / sandbox_id
        (root / "home").mkdir(parents=True)
        (root / "tmp").mkdir()
        sandbox = FakeSandbox(
            sandbox_id=sandbox_id,
            template_id=template_id,
            metadata=dict(metadata or {}),
            envs=dict(envs or {}),
            root=root,
            started_at=started,
            end_at=moment + timedelta(seconds=timeout_s),
            allow_internet_access=allow_internet_access,
            network=network,
            auto_pause=auto_pause,
            domain=self.sandbox_domain,
        )
        with self.lock:
            self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def live_sandboxes(self) -> list[FakeSandbox]:
        """Running and paused ones: what E2B still knows."""
        with self.lock:
            return [s for s in self.sandboxes.values() if s.alive]

    def expire(self, sandbox_id: str) -> None:
        """Move the sandbox's provider deadline into the past: it is gone from now on."""
        with self.lock:
            sandbox = self.sandboxes[sandbox_id]
            sandbox.end_at = now() - timedelta(microseconds=1)
            sandbox.paused_at = None
        sandbox.kill_processes()

    def requests_for(self, method: str, path_pattern: str) -> list[RecordedRequest]:
        """Recorded requests whose path fully matches the regular expression."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r.method == method and re.fullmatch(path_pattern, r.path) is not None
            ]

    def reset(self) -> None:
        """Back to an empty double: kill everything, forget requests, faults and settings."""
        with self.lock:
            sandboxes = list(self.sandboxes.values())
            self.sandboxes.clear()
            self.requests.clear()
            self._faults.clear()
            self.api_key = FAKE_API_KEY
            self.known_templates = None
            self.latencies = Latencies()
            self.deadline_sends_end_event = False
        for sandbox in sandboxes:
            sandbox.kill_processes()
        for sandbox in sandboxes:
            for process in list(sandbox.processes.values()):
                process.finished.wait(timeout=5)
            shutil.rmtree(sandbox.root, ignore_errors=True)

    # -- for the servers -----------------------------------------------------------------------

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self._faults = [f for f in self._faults if f.remaining > 0]
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
            return None

    def find(self, sandbox_id: str) -> FakeSandbox | None:
        """The sandbox when E2B still knows it (running or paused)."""
        with self.lock:
            sandbox = self.sandboxes.get(sandbox_id)
        return sandbox if sandbox is not None and sandbox.alive else None

    def pause(self, sandbox: FakeSandbox, *, keep_memory: bool = True) -> None:
        """Freeze the sandbox. Open command streams end as a pause cuts envd's connections;
        without memory (a filesystem-only snapshot) its processes are gone at resume."""
        with self.lock:
            sandbox.paused_at = now()
        for process in list(sandbox.processes.values()):
            process.drop_subscribers()
        if keep_memory:
            sandbox.freeze()
        else:
            sandbox.kill_processes()

    def resume(self, sandbox: FakeSandbox, timeout_s: float) -> None:
        with self.lock:
            sandbox.paused_at = None
            sandbox.end_at = now() + timedelta(seconds=timeout_s)
        sandbox.thaw()

    def reap_expired(self) -> None:
        """At a sandbox's deadline E2B kills its VM, or pauses it when it was created with
        ``autoPause``."""
        with self.lock:
            due = [
                s
                for s in self.sandboxes.values()
                if s.killed_at is None and s.paused_at is None and now() >= s.end_at
            ]
            to_pause = [s for s in due if s.auto_pause]
            dead = [s for s in due if not s.auto_pause and not s.reaped]
            for sandbox in dead:
                sandbox.reaped = True
        for sandbox in to_pause:
            self.pause(sandbox)
        for sandbox in dead:
            sandbox.kill_processes()

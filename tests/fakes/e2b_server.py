"""A local E2B for tests: the control-plane REST API and envd, served over plain HTTP/1.1.

The official SDK talks to it unchanged (``api_url=`` / ``sandbox_url=``), so tests exercise the
real request building, retries and exception mapping of ``e2b==2.63.0``. Two servers share one
:class:`FakeE2BState`: the control plane (``api_url``) and envd (``sandbox_url``), the way E2B
answers them from different hosts; a mixed-up URL therefore fails here as it would in production.

Control plane (``X-API-KEY``): create (``POST /v2/sandboxes``), connect, kill, set timeout, list
with a metadata filter and ``x-next-token`` paging, get info. Routes answer with and without the
``/v2`` prefix. Faults can be injected (:meth:`FakeE2BState.fail_next`) and a wrong key is a 401.

envd (headers ``E2b-Sandbox-Id`` and ``X-Access-Token``): ``process.Process`` over the Connect
protocol — ``Start`` really runs the command with bash in the sandbox's own temporary home and
streams start/data/end events as output is produced — ``GET``/``POST /files``,
``filesystem.Filesystem`` (``ListDir``, ``Stat``, ``MakeDir``, ``Remove``, ``Move``) and
``/health``. A request for a sandbox that is gone gets the 502 "… was not found" E2B's edge
proxy answers with, which the SDK turns into ``SandboxNotRunningException``.

Lifetimes are honoured: a sandbox past its ``end_at`` counts as gone (404 from the control plane,
not listed, 502 from envd) and a reaper thread kills its processes, like E2B killing the VM.

What the double is not (its limits):
- Commands run as the test's own user on the host, in a process group of their own; there is no
  isolation. Only ``/home/user`` is mapped: it is a per-sandbox temporary directory that commands
  get as ``HOME`` and default cwd; the literal text ``/home/user`` in a command, its args, cwd and
  env values is rewritten to that directory, and the directory is rewritten back to
  ``/home/user`` in the output (so ``pwd`` prints ``/home/user``). Every other absolute path a
  command uses is the host's (``/tmp`` is shared by all sandboxes). The file and filesystem APIs
  refuse paths outside ``/home/user`` and links that resolve outside it.
- The command's deadline comes from the request's ``connect-timeout-ms``, as in envd: when it
  passes, the whole process group is killed. A client going away does not kill a command (envd
  keeps it running), its deadline still does. Background children outliving the command are
  killed with the sandbox.
- No PTY, stdin, ``Connect`` to a running process, watchers, pause/resume, snapshots, metrics,
  volumes or templates API. Every sandbox reports ``cpu_count=2``, ``memory_mb=512``.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import queue
import re
import secrets
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof
from protobuf.wkt import Timestamp

FAKE_API_KEY = "e2b_fake_0123456789abcdef"
ENVD_VERSION = "0.6.4"  # at least every feature gate of the pinned SDK (e2b/envd/versions.py)
ENVD_PORT = "49983"
SANDBOX_HOME = "/home/user"
DEFAULT_TIMEOUT_S = 300  # E2B's default for create, and for connect without a timeout
MAX_TIMEOUT_S = 24 * 3600
MAX_PAGE_SIZE = 100
CPU_COUNT = 2
MEMORY_MB = 512
DISK_SIZE_MB = 1024

_MAX_JSON_BODY = 1024 * 1024
_FILE_CHUNK = 64 * 1024
# After a command exits, output still in flight from the pipes is forwarded for this long; a
# background child that keeps the pipe open does not hold the stream (envd ends it on exit).
_EXIT_DRAIN_S = 0.2
# "/home/user" as a whole path component: not "/home/username", not "/x/home/user".
_HOME_IN_TEXT = re.compile(r"(?<![\w./-])/home/user(?![\w.-])")

Role = Literal["api", "envd"]


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


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


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path.fullmatch(path) is not None
        )


class _PathUnmapper:
    """Rewrites the host home back to ``/home/user`` in a byte stream cut at arbitrary points."""

    def __init__(self, host_home: str) -> None:
        self._host = host_home.encode()
        self._sandbox = SANDBOX_HOME.encode()
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffer = (self._pending + data).replace(self._host, self._sandbox)
        # Hold back a tail that may be the start of the host path completed by the next chunk.
        keep = 0
        for size in range(min(len(self._host) - 1, len(buffer)), 0, -1):
            if self._host.startswith(buffer[-size:]):
                keep = size
                break
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending


OutputEvent = tuple[Literal["stdout", "stderr"], bytes] | tuple[Literal["end"], int]


class FakeProcess:
    """A command running in a sandbox: its own process group, output pumped into a queue."""

    def __init__(
        self,
        sandbox: FakeSandbox,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        timeout_s: float | None,
    ) -> None:
        self.sandbox = sandbox
        self.argv = argv
        self.events: queue.Queue[OutputEvent] = queue.Queue()
        self.exit_code: int | None = None
        self.timed_out = False
        self.finished = threading.Event()
        self._popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own process group, so a timeout or a sandbox kill reaches every child.
            start_new_session=True,
        )
        self.pid = self._popen.pid
        self._deadline: threading.Timer | None = None
        if timeout_s is not None:
            self._deadline = threading.Timer(max(timeout_s, 0.0), self._on_deadline)
            self._deadline.daemon = True
            self._deadline.start()
        self._pump_thread = threading.Thread(
            target=self._pump, name=f"fake-e2b-proc-{self.pid}", daemon=True
        )
        self._pump_thread.start()

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (children that outlived the command included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _on_deadline(self) -> None:
        if self.running:
            self.timed_out = True
            self.kill()

    def _pump(self) -> None:
        assert self._popen.stdout is not None
        assert self._popen.stderr is not None
        unmappers: dict[Literal["stdout", "stderr"], _PathUnmapper] = {
            "stdout": _PathUnmapper(str(self.sandbox.home)),
            "stderr": _PathUnmapper(str(self.sandbox.home)),
        }
        selector = selectors.DefaultSelector()
        for name, pipe in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, name)
        exited_at: float | None = None
        try:
            while selector.get_map():
                if exited_at is None and self._popen.poll() is not None:
                    exited_at = time.monotonic()
                if exited_at is not None and time.monotonic() - exited_at > _EXIT_DRAIN_S:
                    break
                ready = selector.select(timeout=0.05 if exited_at is None else 0.01)
                if not ready and exited_at is not None:
                    break
                for key, _mask in ready:
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    if text := unmappers[key.data].feed(data):
                        self.events.put((key.data, text))
        finally:
            selector.close()
            for name, unmapper in unmappers.items():
                if tail := unmapper.flush():
                    self.events.put((name, tail))
            self._popen.stdout.close()
            self._popen.stderr.close()
            self.exit_code = self._popen.wait()
            if self._deadline is not None:
                self._deadline.cancel()
            self.finished.set()
            self.events.put(("end", self.exit_code))


@dataclass
class FakeSandbox:
    """One sandbox as the double sees it. ``home`` is the host directory behind ``/home/user``."""

    sandbox_id: str
    template_id: str
    metadata: dict[str, str]
    envs: dict[str, str]
    home: Path
    started_at: datetime
    end_at: datetime
    envd_access_token: str = field(default_factory=lambda: secrets.token_hex(16))
    killed_at: datetime | None = None
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    reaped: bool = False  # its process groups were killed after it died

    @property
    def alive(self) -> bool:
        return self.killed_at is None and _now() < self.end_at

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

    def kill_processes(self) -> None:
        """Kill every command's process group, background children of finished ones too."""
        for process in list(self.processes.values()):
            process.kill()

    def running_processes(self) -> list[FakeProcess]:
        return [p for p in self.processes.values() if p.running]

    def to_json(self, *, detail: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "templateID": self.template_id,
            "alias": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": "fake-client",
            "startedAt": _rfc3339(self.started_at),
            "endAt": _rfc3339(self.end_at),
            "cpuCount": CPU_COUNT,
            "memoryMB": MEMORY_MB,
            "diskSizeMB": DISK_SIZE_MB,
            "state": "running",
            "envdVersion": ENVD_VERSION,
            "metadata": dict(self.metadata),
        }
        if detail:
            payload["envdAccessToken"] = self.envd_access_token
        return payload


class FakeE2BState:
    """Everything the double knows, shared by its two servers and open to tests.

    Tests read ``sandboxes`` and ``requests``, and change ``api_key`` or ``known_templates``
    directly; faults go through :meth:`fail_next`. All access to the mutable parts goes
    through ``lock``.
    """

    def __init__(self, root: Path) -> None:
        self.lock = threading.RLock()
        self.root = root
        self.api_key = FAKE_API_KEY
        self.known_templates: set[str] | None = None  # None: every template exists
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []

    # -- for tests ---------------------------------------------------------------------------

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
            self._faults.append(_Fault(status, times, retry_after, method, pattern))

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
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> FakeSandbox:
        """Start a sandbox without a request: to seed state (e.g. many sandboxes to page)."""
        now = _now()
        sandbox_id = "i" + secrets.token_hex(10)
        home = self.root / sandbox_id / "home"
        home.mkdir(parents=True)
        sandbox = FakeSandbox(
            sandbox_id=sandbox_id,
            template_id=template_id,
            metadata=dict(metadata or {}),
            envs=dict(envs or {}),
            home=home,
            started_at=now,
            end_at=now + timedelta(seconds=timeout_s),
        )
        with self.lock:
            self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def live_sandboxes(self) -> list[FakeSandbox]:
        with self.lock:
            return [s for s in self.sandboxes.values() if s.alive]

    def expire(self, sandbox_id: str) -> None:
        """Move the sandbox's provider deadline into the past: it is gone from now on."""
        with self.lock:
            sandbox = self.sandboxes[sandbox_id]
            sandbox.end_at = _now() - timedelta(microseconds=1)
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
        for sandbox in sandboxes:
            sandbox.kill_processes()
        for sandbox in sandboxes:
            for process in sandbox.processes.values():
                process.finished.wait(timeout=5)
            shutil.rmtree(sandbox.home.parent, ignore_errors=True)

    # -- for the servers -----------------------------------------------------------------------

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self.lock:
            self._faults = [f for f in self._faults if f.remaining > 0]
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
            return None

    def reap_expired(self) -> None:
        """Kill the processes of sandboxes past their deadline, as E2B does with the VM."""
        with self.lock:
            dead = [s for s in self.sandboxes.values() if not s.reaped and not s.alive]
            for sandbox in dead:
                sandbox.reaped = True
        for sandbox in dead:
            sandbox.kill_processes()


# --------------------------------------------------------------------------------------------
# HTTP plumbing (stdlib only)
# --------------------------------------------------------------------------------------------


class _RequestBody:
    """A request body that ends where the request ends.

    De-chunks ``Transfer-Encoding: chunked`` (how the SDK sends streaming RPCs and file uploads;
    ``wsgiref`` cannot) and otherwise stops at ``Content-Length`` — never reading into the next
    request on a kept-alive connection, which is what makes connectrpc's read-until-EOF error
    path safe here.
    """

    def __init__(self, rfile: BufferedIOBase, headers: Message) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._remaining = int(headers.get("Content-Length") or 0)  # chunked: left in chunk
        self._eof = not self._chunked and self._remaining == 0

    def _next_chunk(self) -> None:
        size_line = self._rfile.readline(1024)
        if not size_line:
            raise ConnectionError("client closed the connection mid-body")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._eof = True
        self._remaining = size

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        while not self._eof and (wanted is None or wanted > 0):
            if self._remaining == 0:
                if not self._chunked:
                    self._eof = True
                    break
                self._next_chunk()
                continue
            step = self._remaining if wanted is None else min(self._remaining, wanted)
            data = self._rfile.read(step)
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            parts.append(data)
            self._remaining -= len(data)
            if wanted is not None:
                wanted -= len(data)
            if self._chunked and self._remaining == 0:
                self._rfile.readline(1024)  # the CRLF after each chunk
            if wanted is None:
                continue
            # Hand back what we have once the current chunk is used up: streaming RPCs must
            # not wait for the next chunk (the client sends it only after our answer).
            if self._chunked and self._remaining == 0:
                break
        return b"".join(parts)

    def drain(self) -> None:
        while self.read(_FILE_CHUNK):
            pass


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()
    length: int | None = 0  # None: send chunked


def _json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> _Response:
    data = json.dumps(payload).encode()
    return _Response(
        status, [("Content-Type", "application/json"), *(headers or [])], [data], len(data)
    )


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> _Response:
    return _json_response(status, {"code": status, "message": message}, headers)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: _RequestBody
    client: str
    record: RecordedRequest

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> dict[str, Any]:
        data = self.body.read(_MAX_JSON_BODY + 1)
        if len(data) > _MAX_JSON_BODY:
            raise _HTTPError(_error(413, "body too large"))
        try:
            payload = json.loads(data) if data else {}
        except ValueError as e:
            raise _HTTPError(_error(400, f"invalid JSON body: {e}")) from e
        if not isinstance(payload, dict):
            raise _HTTPError(_error(400, "the body must be a JSON object"))
        self.record.body = payload
        return payload


class _HTTPError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked responses for streams
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the double is quiet; tests read FakeE2BState.requests instead

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body = _RequestBody(self.rfile, self.headers)
        record = RecordedRequest(
            role=self.server.role,
            method=self.command,
            path=unquote(url.path),
            query=parse_qs(url.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        request = _Request(
            method=self.command,
            path=record.path,
            query=record.query,
            headers=self.headers,
            body=body,
            client=f"{self.client_address[0]}:{self.client_address[1]}",
            record=record,
        )
        with self.server.state.lock:
            self.server.state.requests.append(record)
        try:
            response = self.server.app(request)
        except _HTTPError as e:
            response = e.response
        except Exception as e:  # a bug in the double: answer 500 rather than hang the client
            response = _error(500, f"test double failed: {e!r}")
        record.status = response.status
        try:
            body.drain()  # keep-alive: the next request starts right after this body
        except (OSError, ValueError):
            self.close_connection = True
        self._send(response)

    def _send(self, response: _Response) -> None:
        chunked = response.length is None
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif response.status != HTTPStatus.NO_CONTENT:
                self.send_header("Content-Length", str(response.length))
            self.end_headers()
            for chunk in response.body:
                if not chunk:
                    continue  # an empty chunk would end a chunked body early
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the client went away mid-answer
        finally:
            close = getattr(response.body, "close", None)
            if close is not None:
                close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, role: Role, state: FakeE2BState, app: Callable[[_Request], _Response]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.role: Role = role
        self.state = state
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop kept-alive connections, so handler threads end with the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def _call_wsgi(app: Callable[..., Iterable[bytes]], request: _Request) -> _Response:
    """Serve a request with a WSGI app (connectrpc's), streaming its body iterator as is."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": urlencode(request.query, doseq=True),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": request.client.rsplit(":", 1)[0],
        "REMOTE_PORT": request.client.rsplit(":", 1)[1],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": request.body,
        "wsgi.errors": _NullErrors(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            environ[f"HTTP_{key}"] = value
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started["status"] = int(status.split(" ", 1)[0])
        started["headers"] = headers

    body = app(environ, start_response)
    headers = [(k, v) for k, v in started["headers"] if k.lower() != "content-length"]
    if isinstance(body, list | tuple):
        return _Response(started["status"], headers, body, sum(len(b) for b in body))
    return _Response(started["status"], headers, body, None)


class _NullErrors:
    def write(self, text: str) -> None:
        pass

    def writelines(self, lines: Iterable[str]) -> None:
        pass

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Control plane
# --------------------------------------------------------------------------------------------

_SANDBOXES = r"/(?:v2/)?sandboxes"
_ONE_SANDBOX = _SANDBOXES + r"/(?P<sandbox_id>[^/]+)"


class _ControlPlane:
    def __init__(self, state: FakeE2BState) -> None:
        self.state = state
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., _Response]]] = [
            ("POST", re.compile(_SANDBOXES), self.create),
            ("GET", re.compile(_SANDBOXES), self.list),
            ("GET", re.compile(_ONE_SANDBOX), self.get),
            ("DELETE", re.compile(_ONE_SANDBOX), self.kill),
            ("POST", re.compile(_ONE_SANDBOX + "/connect"), self.connect),
            ("POST", re.compile(_ONE_SANDBOX + "/timeout"), self.set_timeout),
        ]

    def __call__(self, request: _Request) -> _Response:
        if fault := self.state.take_fault(request.method, request.path):
            retry = [("Retry-After", str(fault.retry_after))] if fault.retry_after else []
            return _error(fault.status, f"injected fault {fault.status}", retry)
        if request.headers.get("X-API-KEY") != self.state.api_key:
            return _error(401, "Invalid API key, it must start with 'e2b_' prefix")
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                return handler(request, **match.groupdict())
        return _error(404, f"{request.method} {request.path} is not served by the double")

    def _live(self, sandbox_id: str) -> FakeSandbox:
        with self.state.lock:
            sandbox = self.state.sandboxes.get(sandbox_id)
        if sandbox is None or not sandbox.alive:
            raise _HTTPError(
                _error(
                    404, f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it"
                )
            )
        return sandbox

    @staticmethod
    def _timeout(body: dict[str, Any], default: int | None) -> int | None:
        timeout = body.get("timeout", default)
        if timeout is None:
            return None
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise _HTTPError(_error(400, "timeout must be a non-negative integer"))
        if timeout > MAX_TIMEOUT_S:
            raise _HTTPError(_error(400, f"timeout cannot be greater than {MAX_TIMEOUT_S} s"))
        return timeout

    @staticmethod
    def _str_map(body: dict[str, Any], key: str) -> dict[str, str]:
        value = body.get(key) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _HTTPError(_error(400, f"{key} must map strings to strings"))
        return value

    def _created(self, sandbox: FakeSandbox, status: int) -> _Response:
        return _json_response(
            status,
            {
                "templateID": sandbox.template_id,
                "sandboxID": sandbox.sandbox_id,
                "clientID": "fake-client",
                "envdVersion": ENVD_VERSION,
                "envdAccessToken": sandbox.envd_access_token,
                "domain": None,
            },
        )

    def create(self, request: _Request) -> _Response:
        body = request.json()
        template = body.get("templateID")
        if not isinstance(template, str) or not template:
            return _error(400, "templateID is required")
        known = self.state.known_templates
        if known is not None and template not in known:
            return _error(404, f"template '{template}' not found")
        timeout = self._timeout(body, DEFAULT_TIMEOUT_S)
        assert timeout is not None
        sandbox = self.state.add_sandbox(
            template_id=template,
            metadata=self._str_map(body, "metadata"),
            envs=self._str_map(body, "envVars"),
            timeout_s=timeout,
        )
        return self._created(sandbox, 201)

    def connect(self, request: _Request, sandbox_id: str) -> _Response:
        body = request.json()
        sandbox = self._live(sandbox_id)
        # E2B: the timeout (default 300 s) only ever extends a running sandbox's deadline.
        timeout = self._timeout(body, DEFAULT_TIMEOUT_S)
        assert timeout is not None
        with self.state.lock:
            sandbox.end_at = max(sandbox.end_at, _now() + timedelta(seconds=timeout))
        return self._created(sandbox, 200)

    def kill(self, request: _Request, sandbox_id: str) -> _Response:
        sandbox = self._live(sandbox_id)
        with self.state.lock:
            sandbox.killed_at = _now()
        sandbox.kill_processes()
        return _Response(204)

    def set_timeout(self, request: _Request, sandbox_id: str) -> _Response:
        body = request.json()
        sandbox = self._live(sandbox_id)
        timeout = self._timeout(body, None)
        if timeout is None:
            return _error(400, "timeout is required")
        with self.state.lock:
            sandbox.end_at = _now() + timedelta(seconds=timeout)  # counts from now, both ways
        return _Response(204)

    def get(self, request: _Request, sandbox_id: str) -> _Response:
        return _json_response(200, self._live(sandbox_id).to_json(detail=True))

    def list(self, request: _Request) -> _Response:
        wanted = self._metadata_filter(request.param("metadata"))
        states = request.query.get("state")
        try:
            limit = int(request.param("limit") or MAX_PAGE_SIZE)
        except ValueError:
            return _error(400, "limit must be an integer")
        if not 1 <= limit <= MAX_PAGE_SIZE:
            return _error(400, f"limit must be between 1 and {MAX_PAGE_SIZE}")
        matching = sorted(
            (
                s
                for s in self.state.live_sandboxes()
                if wanted.items() <= s.metadata.items()
                and (not states or "running" in ",".join(states).split(","))
            ),
            key=lambda s: (s.started_at, s.sandbox_id),
        )
        if cursor := request.param("nextToken"):
            matching = [s for s in matching if _cursor(s) > cursor]
        page = matching[:limit]
        headers = [("x-next-token", _cursor(page[-1]))] if len(matching) > limit else []
        return _json_response(200, [s.to_json() for s in page], headers)

    @staticmethod
    def _metadata_filter(raw: str | None) -> dict[str, str]:
        # The SDK percent-encodes each key and value, then url-encodes the pairs into one
        # query parameter: undo both layers.
        pairs = parse_qs(raw or "", keep_blank_values=True)
        return {unquote(key): unquote(values[0]) for key, values in pairs.items()}


def _cursor(sandbox: FakeSandbox) -> str:
    return f"{sandbox.started_at.timestamp():020.6f}:{sandbox.sandbox_id}"


# --------------------------------------------------------------------------------------------
# envd
# --------------------------------------------------------------------------------------------


_Event = process_pb.ProcessEvent


def _start_event(pid: int) -> process_pb.StartResponse:
    start: Oneof[Literal["start"], _Event.StartEvent] = Oneof("start", _Event.StartEvent(pid=pid))
    return process_pb.StartResponse(event=_Event(event=start))


def _data_event(stream: Literal["stdout", "stderr"], data: bytes) -> process_pb.StartResponse:
    output: Oneof[Literal["stdout"], bytes] | Oneof[Literal["stderr"], bytes]
    if stream == "stdout":
        output = Oneof[Literal["stdout"], bytes]("stdout", data)
    else:
        output = Oneof[Literal["stderr"], bytes]("stderr", data)
    event: Oneof[Literal["data"], _Event.DataEvent] = Oneof("data", _Event.DataEvent(output=output))
    return process_pb.StartResponse(event=_Event(event=event))


def _end_event(returncode: int) -> process_pb.StartResponse:
    end = _Event.EndEvent(
        exit_code=returncode if returncode >= 0 else -1,  # Go's ExitCode() after a signal
        exited=returncode >= 0,
        status=f"exit status {returncode}" if returncode >= 0 else "signal: killed",
    )
    event: Oneof[Literal["end"], _Event.EndEvent] = Oneof("end", end)
    return process_pb.StartResponse(event=_Event(event=event))


def _keepalive_event() -> process_pb.StartResponse:
    event: Oneof[Literal["keepalive"], _Event.KeepAlive] = Oneof("keepalive", _Event.KeepAlive())
    return process_pb.StartResponse(event=_Event(event=event))


class _ProcessService(process_connect.ProcessSync):
    def __init__(self, envd: _Envd) -> None:
        self.envd = envd

    def start(
        self,
        request: process_pb.StartRequest,
        ctx: RequestContext[process_pb.StartRequest, process_pb.StartResponse],
    ) -> Iterator[process_pb.StartResponse]:
        sandbox = self.envd.sandbox_of(ctx)
        config = request.process or process_pb.ProcessConfig()
        if request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, "the E2B test double has no PTY")
        timeout_ms = ctx.timeout_ms
        process = self.envd.spawn(
            sandbox,
            config,
            timeout_s=None if timeout_ms is None else timeout_ms / 1000,
        )
        keepalive_s = _keepalive_interval(ctx)
        return self._events(sandbox, process, keepalive_s)

    def _events(
        self, sandbox: FakeSandbox, process: FakeProcess, keepalive_s: float | None
    ) -> Iterator[process_pb.StartResponse]:
        yield _start_event(process.pid)
        while True:
            try:
                event = process.events.get(timeout=keepalive_s)
            except queue.Empty:
                yield _keepalive_event()
                continue
            if event[0] == "end":
                if not sandbox.alive:
                    # The VM went away under the command: envd's stream is cut, not ended.
                    raise ConnectError(
                        Code.UNAVAILABLE,
                        f"the connection to sandbox {sandbox.sandbox_id} ended before the "
                        "stream completed",
                    )
                yield _end_event(event[1])
                return
            yield _data_event(event[0], event[1])

    def send_signal(
        self,
        request: process_pb.SendSignalRequest,
        ctx: RequestContext[process_pb.SendSignalRequest, process_pb.SendSignalResponse],
    ) -> process_pb.SendSignalResponse:
        sandbox = self.envd.sandbox_of(ctx)
        process = self._select(sandbox, request.process)
        sig = signal.SIGTERM if request.signal == process_pb.Signal.SIGTERM else signal.SIGKILL
        process.kill(sig)
        return process_pb.SendSignalResponse()

    def list(
        self,
        request: process_pb.ListRequest,
        ctx: RequestContext[process_pb.ListRequest, process_pb.ListResponse],
    ) -> process_pb.ListResponse:
        sandbox = self.envd.sandbox_of(ctx)
        return process_pb.ListResponse(
            processes=[
                process_pb.ProcessInfo(
                    pid=p.pid,
                    config=process_pb.ProcessConfig(cmd=p.argv[0], args=p.argv[1:]),
                )
                for p in sandbox.running_processes()
            ]
        )

    @staticmethod
    def _select(sandbox: FakeSandbox, selector: process_pb.ProcessSelector | None) -> FakeProcess:
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=int() as pid) if pid in sandbox.processes:
                process = sandbox.processes[pid]
                if process.running:
                    return process
        raise ConnectError(Code.NOT_FOUND, "process not found")


def _keepalive_interval(ctx: RequestContext[Any, Any]) -> float | None:
    try:
        return float(ctx.request_headers.get("keepalive-ping-interval", ""))
    except ValueError:
        return None


_FILE_TYPES = {
    stat.S_IFREG: filesystem_pb.FileType.FILE,
    stat.S_IFDIR: filesystem_pb.FileType.DIRECTORY,
}


class _FilesystemService(filesystem_connect.FilesystemSync):
    def __init__(self, envd: _Envd) -> None:
        self.envd = envd

    def _resolve(self, ctx: RequestContext[Any, Any], path: str) -> tuple[FakeSandbox, Path]:
        sandbox = self.envd.sandbox_of(ctx)
        try:
            return sandbox, sandbox.host_path(path)
        except ValueError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from e

    @staticmethod
    def _entry(sandbox: FakeSandbox, host: Path) -> filesystem_pb.EntryInfo:
        link = host.lstat()
        is_symlink = stat.S_ISLNK(link.st_mode)
        target: str | None = None
        info = link
        if is_symlink:
            target = os.readlink(host)
            if target.startswith(str(sandbox.home)):
                target = SANDBOX_HOME + target.removeprefix(str(sandbox.home))
            # Report the target's type like envd, but never stat a host file through a link.
            with contextlib.suppress(OSError, ValueError):
                info = sandbox.host_path(sandbox.sandbox_path(host)).stat()
        file_type = _FILE_TYPES.get(
            stat.S_IFMT(info.st_mode),
            filesystem_pb.FileType.SYMLINK if is_symlink else filesystem_pb.FileType.UNSPECIFIED,
        )
        return filesystem_pb.EntryInfo(
            name=host.name,
            type=file_type,
            path=sandbox.sandbox_path(host),
            size=info.st_size,
            mode=stat.S_IMODE(info.st_mode),
            permissions=stat.filemode(info.st_mode),
            owner="user",
            group="user",
            modified_time=Timestamp.from_datetime(datetime.fromtimestamp(info.st_mtime, UTC)),
            symlink_target=target,
            is_symlink=is_symlink,
        )

    def stat(
        self,
        request: filesystem_pb.StatRequest,
        ctx: RequestContext[filesystem_pb.StatRequest, filesystem_pb.StatResponse],
    ) -> filesystem_pb.StatResponse:
        sandbox, host = self._resolve(ctx, request.path)
        if not host.exists() and not host.is_symlink():
            raise ConnectError(Code.NOT_FOUND, f"file not found: {request.path}")
        return filesystem_pb.StatResponse(entry=self._entry(sandbox, host))

    def list_dir(
        self,
        request: filesystem_pb.ListDirRequest,
        ctx: RequestContext[filesystem_pb.ListDirRequest, filesystem_pb.ListDirResponse],
    ) -> filesystem_pb.ListDirResponse:
        sandbox, host = self._resolve(ctx, request.path)
        if not host.exists():
            raise ConnectError(Code.NOT_FOUND, f"directory not found: {request.path}")
        if not host.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path is not a directory: {request.path}")
        entries: list[filesystem_pb.EntryInfo] = []

        def walk(directory: Path, depth: int) -> None:
            for child in sorted(directory.iterdir()):
                entries.append(self._entry(sandbox, child))
                if depth > 1 and child.is_dir() and not child.is_symlink():
                    walk(child, depth - 1)

        walk(host, max(request.depth, 1))
        return filesystem_pb.ListDirResponse(entries=entries)

    def make_dir(
        self,
        request: filesystem_pb.MakeDirRequest,
        ctx: RequestContext[filesystem_pb.MakeDirRequest, filesystem_pb.MakeDirResponse],
    ) -> filesystem_pb.MakeDirResponse:
        sandbox, host = self._resolve(ctx, request.path)
        if host.exists():
            raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {request.path}")
        host.mkdir(parents=True)
        return filesystem_pb.MakeDirResponse(entry=self._entry(sandbox, host))

    def remove(
        self,
        request: filesystem_pb.RemoveRequest,
        ctx: RequestContext[filesystem_pb.RemoveRequest, filesystem_pb.RemoveResponse],
    ) -> filesystem_pb.RemoveResponse:
        _sandbox, host = self._resolve(ctx, request.path)
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)
        elif host.exists() or host.is_symlink():
            host.unlink()
        else:
            raise ConnectError(Code.NOT_FOUND, f"file not found: {request.path}")
        return filesystem_pb.RemoveResponse()

    def move(
        self,
        request: filesystem_pb.MoveRequest,
        ctx: RequestContext[filesystem_pb.MoveRequest, filesystem_pb.MoveResponse],
    ) -> filesystem_pb.MoveResponse:
        sandbox, source = self._resolve(ctx, request.source)
        _sandbox, destination = self._resolve(ctx, request.destination)
        if not source.exists():
            raise ConnectError(Code.NOT_FOUND, f"file not found: {request.source}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        source.rename(destination)
        return filesystem_pb.MoveResponse(entry=self._entry(sandbox, destination))


class _Envd:
    def __init__(self, state: FakeE2BState) -> None:
        self.state = state
        self.process_app = process_connect.ProcessWSGIApplication(_ProcessService(self))
        self.filesystem_app = filesystem_connect.FilesystemWSGIApplication(_FilesystemService(self))

    def __call__(self, request: _Request) -> _Response:
        sandbox_id = request.headers.get("E2b-Sandbox-Id", "")
        with self.state.lock:
            sandbox = self.state.sandboxes.get(sandbox_id)
        if sandbox is None or not sandbox.alive:
            # What E2B's edge proxy answers; the SDK reads "was not found" as a dead sandbox.
            return _json_response(
                502,
                {
                    "code": 502,
                    "message": f"The sandbox {sandbox_id} was not found",
                    "sandboxId": sandbox_id,
                },
            )
        if request.headers.get("E2b-Sandbox-Port") != ENVD_PORT:
            return _error(502, f"port {request.headers.get('E2b-Sandbox-Port')} is not open")
        if request.headers.get("X-Access-Token") != sandbox.envd_access_token:
            return _error(401, "unauthorized access, please provide a valid access token")
        if request.path.startswith("/process.Process/"):
            return _call_wsgi(self.process_app, request)
        if request.path.startswith("/filesystem.Filesystem/"):
            return _call_wsgi(self.filesystem_app, request)
        if request.path == "/health" and request.method == "GET":
            return _Response(204)
        if request.path == "/files" and request.method == "GET":
            return self.download(sandbox, request)
        if request.path == "/files" and request.method == "POST":
            return self.upload(sandbox, request)
        return _error(404, f"{request.method} {request.path} is not served by the double")

    def sandbox_of(self, ctx: RequestContext[Any, Any]) -> FakeSandbox:
        sandbox_id = ctx.request_headers.get("e2b-sandbox-id", "")
        with self.state.lock:
            sandbox = self.state.sandboxes.get(sandbox_id)
        if sandbox is None or not sandbox.alive:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
        return sandbox

    def spawn(
        self, sandbox: FakeSandbox, config: process_pb.ProcessConfig, *, timeout_s: float | None
    ) -> FakeProcess:
        home = str(sandbox.home)

        def to_host(text: str) -> str:
            return _HOME_IN_TEXT.sub(lambda _m: home, text)

        try:
            cwd = sandbox.host_path(config.cwd or SANDBOX_HOME)
        except ValueError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from e
        if not cwd.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{config.cwd}' does not exist")
        # A clean environment, as in a fresh VM: nothing of the test process leaks in.
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": home,
            "USER": "user",
            "LOGNAME": "user",
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": sandbox.sandbox_id,
        }
        env.update({k: to_host(v) for k, v in sandbox.envs.items()})
        env.update({k: to_host(v) for k, v in config.envs.items()})
        argv = [config.cmd, *(to_host(a) for a in config.args)]
        try:
            process = FakeProcess(sandbox, argv, cwd=cwd, env=env, timeout_s=timeout_s)
        except OSError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, f"cannot start {config.cmd}: {e}") from e
        with self.state.lock:
            sandbox.processes[process.pid] = process
        return process

    def download(self, sandbox: FakeSandbox, request: _Request) -> _Response:
        path = request.param("path") or ""
        try:
            host = sandbox.host_path(path)
        except ValueError as e:
            return _error(400, str(e))
        if host.is_dir():
            return _error(400, f"path '{path}' is a directory")
        try:
            handle = host.open("rb")
        except FileNotFoundError:
            return _error(404, f"path '{path}' does not exist")
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(_FILE_CHUNK):
                    yield chunk

        return _Response(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Disposition", f'attachment; filename="{host.name}"'),
            ],
            chunks(),
            size,
        )

    def upload(self, sandbox: FakeSandbox, request: _Request) -> _Response:
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            files = _parse_multipart(content_type, request.body.read())
            default_path = request.param("path")
            targets: list[tuple[str, bytes | None]] = [
                (filename or default_path or "", data) for filename, data in files
            ]
        else:
            targets = [(request.param("path") or "", None)]  # streamed below
        written: list[dict[str, str]] = []
        for path, data in targets:
            try:
                host = sandbox.host_path(path)
            except ValueError as e:
                return _error(400, str(e))
            if host.is_dir():
                return _error(400, f"path '{path}' is a directory")
            host.parent.mkdir(parents=True, exist_ok=True)
            with host.open("wb") as out:
                if data is not None:
                    out.write(data)
                else:
                    while chunk := request.body.read(_FILE_CHUNK):
                        out.write(chunk)
            written.append({"name": host.name, "type": "file", "path": sandbox.sandbox_path(host)})
        return _json_response(200, written)


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str | None, bytes]]:
    """The file parts of a multipart/form-data body as (filename, bytes)."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise _HTTPError(_error(400, "multipart body without a boundary"))
    files: list[tuple[str | None, bytes]] = []
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        disposition = Message()
        disposition["Content-Disposition"] = headers.get("Content-Disposition", "")
        filename = disposition.get_param("filename", header="Content-Disposition")
        files.append((filename if isinstance(filename, str) else None, data.removesuffix(b"\r\n")))
    return files


# --------------------------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------------------------


class FakeE2BServer:
    """The double: start it, point the SDK at ``api_url`` / ``sandbox_url``, read ``state``."""

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="fake-e2b-"))
        self.state = FakeE2BState(self._root)
        self._api = _Server("api", self.state, _ControlPlane(self.state))
        self._envd = _Server("envd", self.state, _Envd(self.state))
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def api_url(self) -> str:
        return self._api.url

    @property
    def sandbox_url(self) -> str:
        return self._envd.url

    def start(self) -> FakeE2BServer:
        for server in (self._api, self._envd):
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-e2b-{server.role}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        reaper = threading.Thread(target=self._reap, name="fake-e2b-reaper", daemon=True)
        reaper.start()
        self._threads.append(reaper)
        return self

    def _reap(self) -> None:
        while not self._stopping.wait(0.05):
            self.state.reap_expired()

    def stop(self) -> None:
        self._stopping.set()
        self.state.reset()
        for server in (self._api, self._envd):
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FakeE2BServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

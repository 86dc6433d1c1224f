"""envd's process service: commands run on the host with envd's semantics.

Read from infra ``packages/envd/internal/services/process`` (``start.go``, ``signal.go``,
``list.go``, ``handler/handler.go``, ``handler/multiplex.go``; commit in docs/e2b.md):

- A command's stream ends when its stdout and stderr both reach EOF, then envd waits for the
  main process and sends the end event. A background child that keeps a pipe open keeps the
  stream open, after the main process has exited (handler.go ``Wait``: ``<-p.outCtx.Done()``).
- The request's ``Connect-Timeout-Ms`` is the command's deadline (start.go
  ``determineTimeoutFromHeader``): the process context kills the main process, and only it
  (``exec.CommandContext`` sends SIGKILL to one pid; envd sets no process group), and the
  stream, whose context has the same deadline, ends with DEADLINE_EXCEEDED.
- ``SendSignal`` (SIGKILL/SIGTERM only) signals the main process only, and stops waiting for
  the pipes (``outCancel``): the stream then ends once the main process is gone.
- A client going away does not stop the command (start.go: "We do not want the command to be
  killed if the request context is cancelled"); its deadline still does. Output nobody
  listens to is dropped (``HasSubscribers``).
- Every command runs as ``/bin/sh -c 'echo 100 > /proc/$$/oom_score_adj && exec ...'`` with
  the request's ``cmd`` and ``args``: the main process is the requested program itself. The
  double runs that program directly.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof

from .state import DEADLINE_LEAD_S, SANDBOX_HOME, FakeSandbox

if TYPE_CHECKING:
    from .envd import Envd

Stream = Literal["stdout", "stderr"]

# "/home/user" as a whole path component: not "/home/username", not "/x/home/user".
HOME_IN_TEXT = re.compile(r"(?<![\w./-])/home/user(?![\w.-])")
_READ_CHUNK = 32 * 1024  # handler.go stdChunkSize
# Go's names for signals (syscall's table, the same strings as strsignal), for the end event.
_SIGNAL_NAMES = {s.value: (signal.strsignal(s) or s.name).lower() for s in signal.Signals}


@dataclass(frozen=True)
class EndInfo:
    """What envd's end event says: Go's ``ProcessState`` of the main process."""

    exit_code: int
    exited: bool
    status: str
    error: str | None

    @classmethod
    def of(cls, returncode: int) -> EndInfo:
        if returncode >= 0:
            status = f"exit status {returncode}"
            return cls(returncode, True, status, None if returncode == 0 else status)
        # Killed by a signal: Go's ExitCode() is -1, and the error reads "signal: killed".
        status = f"signal: {_SIGNAL_NAMES.get(-returncode, str(-returncode))}"
        return cls(-1, False, status, status)


Event = (
    tuple[Literal["data"], Stream, bytes]
    | tuple[Literal["end"], EndInfo]
    | tuple[Literal["dropped"], str]
)


class PathUnmapper:
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


class FakeProcess:
    """One command: its main process on the host, its output fanned out to subscribers."""

    def __init__(
        self,
        sandbox: FakeSandbox,
        config: process_pb.ProcessConfig,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdin: bool,
        tag: str | None,
        timeout_s: float | None,
        subscriber: queue.Queue[Event],
    ) -> None:
        self.sandbox = sandbox
        self.config = config
        self.tag = tag
        self.exit: EndInfo | None = None
        self.finished = threading.Event()
        self._subscribers = [subscriber]
        self._lock = threading.Lock()
        self._stop_waiting_for_pipes = threading.Event()  # envd's outCancel
        self._popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # In the sandbox's group (never a group leader), as envd's children are in envd's.
            process_group=sandbox.process_group(),
        )
        self.pid = self._popen.pid
        self._deadline: threading.Timer | None = None
        if timeout_s is not None:
            self._deadline = threading.Timer(max(timeout_s, 0.0), self._on_deadline)
            self._deadline.daemon = True
            self._deadline.start()
        threading.Thread(target=self._pump, name=f"fake-envd-{self.pid}", daemon=True).start()

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def subscribe(self) -> queue.Queue[Event]:
        events: queue.Queue[Event] = queue.Queue()
        with self._lock:
            if self.exit is not None:
                events.put(("end", self.exit))
            else:
                self._subscribers.append(events)
        return events

    def unsubscribe(self, events: queue.Queue[Event]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(events)

    def drop_subscribers(self, reason: str = "the sandbox was paused") -> None:
        """Cut every stream (a pause takes the connections down); the process goes on."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for events in subscribers:
            events.put(("dropped", reason))

    def signal(self, sig: int) -> None:
        """envd's SendSignal: the main process only. SIGKILL and SIGTERM also stop waiting for
        the pipes (handler.go ``SendSignal`` calls ``outCancel``)."""
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._stop_waiting_for_pipes.set()
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(sig)

    def write_stdin(self, data: bytes) -> None:
        if self._popen.stdin is None or self._popen.stdin.closed:
            raise ConnectError(Code.FAILED_PRECONDITION, "stdin not enabled or closed")
        self._popen.stdin.write(data)
        self._popen.stdin.flush()

    def close_stdin(self) -> None:
        if self._popen.stdin is not None:
            self._popen.stdin.close()

    def _on_deadline(self) -> None:
        # The process context's deadline: exec.CommandContext kills the main process.
        if self.running:
            self._stop_waiting_for_pipes.set()
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()

    def _publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for events in subscribers:
            events.put(event)

    def _pump(self) -> None:
        """Read both pipes until EOF of both, or, once told to stop waiting for them, until
        the main process is gone; then the end event (handler.go ``New`` and ``Wait``)."""
        assert self._popen.stdout is not None
        assert self._popen.stderr is not None
        unmappers: dict[Stream, PathUnmapper] = {
            "stdout": PathUnmapper(str(self.sandbox.home)),
            "stderr": PathUnmapper(str(self.sandbox.home)),
        }
        selector = selectors.DefaultSelector()
        for name, pipe in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, name)
        try:
            while selector.get_map():
                if self._stop_waiting_for_pipes.is_set() and self._popen.poll() is not None:
                    break
                for key, _mask in selector.select(timeout=0.05):
                    try:
                        data = os.read(key.fd, _READ_CHUNK)
                    except BlockingIOError:
                        continue
                    if not data:
                        selector.unregister(key.fileobj)
                    elif text := unmappers[key.data].feed(data):
                        self._publish(("data", key.data, text))
        finally:
            selector.close()
            for name, unmapper in unmappers.items():
                if tail := unmapper.flush():
                    self._publish(("data", name, tail))
            returncode = self._popen.wait()
            self._popen.stdout.close()
            self._popen.stderr.close()
            if self._popen.stdin is not None:
                with contextlib.suppress(OSError):
                    self._popen.stdin.close()
            if self._deadline is not None:
                self._deadline.cancel()
            with self._lock:
                self.exit = EndInfo.of(returncode)
            self._publish(("end", self.exit))
            self.sandbox.processes.pop(self.pid, None)  # envd forgets ended processes
            self.finished.set()


# -- the Connect service ----------------------------------------------------------------------

_Event = process_pb.ProcessEvent


def _start_event(pid: int) -> _Event:
    start: Oneof[Literal["start"], _Event.StartEvent] = Oneof("start", _Event.StartEvent(pid=pid))
    return _Event(event=start)


def _data_event(stream: Stream, data: bytes) -> _Event:
    output: Oneof[Literal["stdout"], bytes] | Oneof[Literal["stderr"], bytes]
    if stream == "stdout":
        output = Oneof[Literal["stdout"], bytes]("stdout", data)
    else:
        output = Oneof[Literal["stderr"], bytes]("stderr", data)
    event: Oneof[Literal["data"], _Event.DataEvent] = Oneof("data", _Event.DataEvent(output=output))
    return _Event(event=event)


def _end_event(end: EndInfo) -> _Event:
    info = _Event.EndEvent(
        exit_code=end.exit_code, exited=end.exited, status=end.status, error=end.error
    )
    event: Oneof[Literal["end"], _Event.EndEvent] = Oneof("end", info)
    return _Event(event=event)


def _keepalive_event() -> _Event:
    event: Oneof[Literal["keepalive"], _Event.KeepAlive] = Oneof("keepalive", _Event.KeepAlive())
    return _Event(event=event)


def _keepalive_interval(ctx: RequestContext[Any, Any]) -> float | None:
    # permissions.GetKeepAliveTicker: the client's Keepalive-Ping-Interval header, in seconds.
    try:
        return float(ctx.request_headers.get("keepalive-ping-interval", ""))
    except ValueError:
        return None


# The signals SendSignal knows (signal.go): anything else is UNIMPLEMENTED.
_SIGNALS = {process_pb.Signal.SIGKILL: signal.SIGKILL, process_pb.Signal.SIGTERM: signal.SIGTERM}


class ProcessService(process_connect.ProcessSync):
    def __init__(self, envd: Envd) -> None:
        self.envd = envd

    def start(
        self,
        request: process_pb.StartRequest,
        ctx: RequestContext[process_pb.StartRequest, process_pb.StartResponse],
    ) -> Iterator[process_pb.StartResponse]:
        sandbox = self.envd.sandbox_of(ctx)
        if request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, "the E2B test double has no PTY")
        self.envd.state.latencies.wait("exec")
        deadline = self._deadline(ctx)
        if deadline is not None and self.envd.state.deadline_sends_end_event:
            deadline -= DEADLINE_LEAD_S
        events: queue.Queue[Event] = queue.Queue()
        process = self.envd.spawn(
            sandbox,
            request.process or process_pb.ProcessConfig(),
            # envd defaults stdin to open for old clients; the SDK sends stdin=false.
            stdin=request.stdin is None or request.stdin,
            tag=request.tag,
            timeout_s=None if deadline is None else max(deadline - time.monotonic(), 0.0),
            subscriber=events,
        )
        stream = self._stream(sandbox, process, events, deadline, _keepalive_interval(ctx))
        return (process_pb.StartResponse(event=event) for event in stream)

    def connect(
        self,
        request: process_pb.ConnectRequest,
        ctx: RequestContext[process_pb.ConnectRequest, process_pb.ConnectResponse],
    ) -> Iterator[process_pb.ConnectResponse]:
        sandbox = self.envd.sandbox_of(ctx)
        process = self._select(sandbox, request.process)
        events = process.subscribe()
        stream = self._stream(
            sandbox, process, events, self._deadline(ctx), _keepalive_interval(ctx)
        )
        return (process_pb.ConnectResponse(event=event) for event in stream)

    @staticmethod
    def _deadline(ctx: RequestContext[Any, Any]) -> float | None:
        timeout_ms = ctx.timeout_ms  # from Connect-Timeout-Ms; absent or 0: no deadline
        return None if not timeout_ms else time.monotonic() + timeout_ms / 1000

    def _stream(
        self,
        sandbox: FakeSandbox,
        process: FakeProcess,
        events: queue.Queue[Event],
        deadline: float | None,
        keepalive_s: float | None,
    ) -> Iterator[_Event]:
        """start, data…, end; DEADLINE_EXCEEDED at the request's deadline; UNAVAILABLE when
        the sandbox dies under the command; CANCELED when a pause cuts the connection."""
        try:
            yield _start_event(process.pid)
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    yield from self._at_deadline(process, events)
                    return
                waits = [t for t in (remaining, keepalive_s) if t is not None]
                try:
                    event = events.get(timeout=min(waits) if waits else None)
                except queue.Empty:
                    if deadline is None or time.monotonic() < deadline:
                        yield _keepalive_event()
                    continue
                if event[0] == "data":
                    yield _data_event(event[1], event[2])
                elif event[0] == "dropped":
                    # Not confirmed from envd's source: a pause snapshots the VM and the
                    # client's connection is cut; the SDK documents CANCELED for "the sandbox
                    # is paused or shut down" (e2b/envd/rpc.py).
                    raise ConnectError(Code.CANCELED, event[1])
                elif not sandbox.alive:
                    # The VM went away under the command: envd's stream is cut, not ended.
                    raise ConnectError(
                        Code.UNAVAILABLE,
                        f"the connection to sandbox {sandbox.sandbox_id} ended before the "
                        "stream completed",
                    )
                else:
                    yield _end_event(event[1])
                    return
        finally:
            process.unsubscribe(events)

    def _at_deadline(self, process: FakeProcess, events: queue.Queue[Event]) -> Iterator[_Event]:
        if self.envd.state.deadline_sends_end_event:
            # The other side of envd's race: the process context killed the main process
            # and its end event (exit -1, "signal: killed") reaches the client first.
            process.finished.wait(timeout=5)
            while True:
                event = events.get(timeout=5)
                if event[0] == "end":
                    yield _end_event(event[1])
                    return
        raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")

    def send_signal(
        self,
        request: process_pb.SendSignalRequest,
        ctx: RequestContext[process_pb.SendSignalRequest, process_pb.SendSignalResponse],
    ) -> process_pb.SendSignalResponse:
        sandbox = self.envd.sandbox_of(ctx)
        self.envd.state.latencies.wait("signal")
        process = self._select(sandbox, request.process)
        sig = _SIGNALS.get(request.signal)
        if sig is None:
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {request.signal}")
        process.signal(sig)
        return process_pb.SendSignalResponse()

    def send_input(
        self,
        request: process_pb.SendInputRequest,
        ctx: RequestContext[process_pb.SendInputRequest, process_pb.SendInputResponse],
    ) -> process_pb.SendInputResponse:
        process = self._select(self.envd.sandbox_of(ctx), request.process)
        match request.input.input if request.input is not None else None:
            case Oneof(field="stdin", value=bytes() as data):
                try:
                    process.write_stdin(data)
                except OSError as e:
                    raise ConnectError(Code.INTERNAL, f"error writing to stdin: {e}") from e
            case _:
                raise ConnectError(Code.INVALID_ARGUMENT, "the E2B test double has no PTY")
        return process_pb.SendInputResponse()

    def close_stdin(
        self,
        request: process_pb.CloseStdinRequest,
        ctx: RequestContext[process_pb.CloseStdinRequest, process_pb.CloseStdinResponse],
    ) -> process_pb.CloseStdinResponse:
        self._select(self.envd.sandbox_of(ctx), request.process).close_stdin()
        return process_pb.CloseStdinResponse()

    def list(
        self,
        request: process_pb.ListRequest,
        ctx: RequestContext[process_pb.ListRequest, process_pb.ListResponse],
    ) -> process_pb.ListResponse:
        sandbox = self.envd.sandbox_of(ctx)
        return process_pb.ListResponse(
            processes=[
                process_pb.ProcessInfo(pid=p.pid, config=p.config, tag=p.tag)
                for p in sandbox.running_processes()
            ]
        )

    @staticmethod
    def _select(sandbox: FakeSandbox, selector: process_pb.ProcessSelector | None) -> FakeProcess:
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=int() as pid):
                found = sandbox.processes.get(pid)
            case Oneof(field="tag", value=str() as tag):
                found = next((p for p in sandbox.running_processes() if p.tag == tag), None)
            case _:
                found = None
        if found is None or not found.running:
            raise ConnectError(Code.NOT_FOUND, "process not found")
        return found

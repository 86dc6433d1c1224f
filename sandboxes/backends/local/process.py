"""Running commands in a live sandbox: the worker's side of the init's control socket.

Each call connects to ``init.sock``, sends one request and reads frames (see ``init.py`` for
the protocol). The init starts the command from a standby already in the command's own
cgroup and says which; output is pumped until the command's own process exits, whatever it
left in the background.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxes.backends.base import (
    BackendError,
    CommandNotFound,
    CommandOutput,
    OutputCallback,
    OutputStream,
)
from sandboxes.backends.local.init import MAX_FRAME, request_frame, split_frames

_READ_SIZE = 64 * 1024
_CONNECT_TIMEOUT_S = 10.0
_KILL_GRACE_S = 5.0
_CANCEL_POLL_S = 0.05


class InitGone(Exception):
    """The sandbox's init does not answer: the sandbox is dead (killed, expired, crashed)."""


class CommandRefused(BackendError):
    """The init could not start the command (a missing cwd, the process limit reached)."""


@dataclass(frozen=True)
class CommandSpec:
    command: str
    env: dict[str, str]
    cwd: str
    background: bool = False
    max_output: int = 0

    def request(self) -> bytes:
        return request_frame(
            b"R",
            {
                "op": "run",
                "command": self.command,
                "env": self.env,
                "cwd": self.cwd,
                "background": self.background,
                "max_output": self.max_output,
            },
        )


@dataclass(frozen=True)
class Started:
    cid: str  # the command's id: its handle, and the name of its cgroup
    tracked: bool  # it has a cgroup of its own


class Capture:
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


class Outcome(enum.Enum):
    EXITED = "exited"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    SANDBOX_EXPIRED = "sandbox_expired"


@dataclass
class Ended:
    outcome: Outcome
    exit_code: int | None = None
    signal: int | None = None


@dataclass
class Watch:
    """What a foreground command is run against: its own deadline, the sandbox's (which
    another worker may move: ``sandbox_deadline`` is asked again when it passes), a cancel
    event, and how to kill it (with everything it started)."""

    command_deadline: float | None
    sandbox_deadline: Callable[[], float | None]  # monotonic; None: the sandbox is gone
    kill: Callable[[], None]
    cancel: threading.Event | None = None
    _killed_for: Outcome | None = field(default=None, init=False)


class Channel:
    """One connection to the init."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(_CONNECT_TIMEOUT_S)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise InitGone(str(exc)) from None
        except OSError:
            self.sock.close()
            raise
        self.inbox = bytearray()
        self.pending: list[tuple[bytes, bytes]] = []  # frames read but not yet handed out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise InitGone(str(exc)) from None

    def frames(self, timeout_s: float | None) -> list[tuple[bytes, bytes]]:
        """Frames that arrive within ``timeout_s`` (none on timeout). InitGone on EOF."""
        frames, self.pending = self.pending + self._split(), []
        if frames:
            return frames
        self.sock.settimeout(timeout_s)
        try:
            chunk = self.sock.recv(_READ_SIZE)
        except TimeoutError:
            return []
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            raise InitGone("the init closed the connection")
        self.inbox += chunk
        return self._split()

    def next_frame(self, timeout_s: float) -> tuple[bytes, bytes]:
        frames = self.frames(timeout_s)
        if not frames:
            raise BackendError("the sandbox's init did not answer in time")
        self.pending = frames[1:]
        return frames[0]

    def _split(self) -> list[tuple[bytes, bytes]]:
        try:
            return split_frames(self.inbox)
        except ValueError as exc:
            raise BackendError(f"the sandbox's init sent a malformed frame: {exc}") from None

    def answer(self) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
        """The A frame answering a request (with the frames after it), or the F failure."""
        collected: list[tuple[bytes, bytes]] = []
        while True:
            arrived = self.frames(_CONNECT_TIMEOUT_S)
            if not arrived:
                raise BackendError("the sandbox's init did not answer in time")
            collected += arrived
            if collected:
                kind, payload = collected[0]
                if kind == b"F":
                    raise _failure(payload)
                if kind == b"A":
                    body = json.loads(payload)
                    wanted = 2 if body.get("has_data") else 0
                    if len(collected) - 1 >= wanted:
                        return body, collected[1:]
                    continue
                raise BackendError(f"the sandbox's init answered {kind!r}")


def _failure(payload: bytes) -> BackendError:
    body = json.loads(payload)
    if body.get("code") == "command_not_found":
        return CommandNotFound(body.get("message", ""))
    return CommandRefused(body.get("message", "the sandbox could not start the command"))


def start(channel: Channel, spec: CommandSpec) -> Started:
    """Send the request; the init answers once the command runs (S, or A for a background
    one), or with the failure that kept it from starting."""
    channel.send(spec.request())
    if spec.background:
        body, _ = channel.answer()
        return Started(str(body["id"]), bool(body["tracked"]))
    kind, payload = channel.next_frame(_CONNECT_TIMEOUT_S)
    if kind == b"S":
        body = json.loads(payload)
        return Started(str(body["id"]), bool(body["tracked"]))
    if kind == b"F":
        raise _failure(payload)
    raise BackendError(f"the sandbox's init answered {kind!r}")


def pump(channel: Channel, stdout: Capture, stderr: Capture, watch: Watch) -> Ended:
    """Read a foreground command's output until its own process exits; kill it (and what
    it started) at its deadline, at the sandbox's, or when canceled."""
    grace_until: float | None = None
    while True:
        now = time.monotonic()
        if grace_until is not None and now > grace_until:
            # Killed, yet no exit came: report what it was killed for all the same.
            return Ended(watch._killed_for or Outcome.TIMEOUT)
        due = _due(watch, now)
        if due is not None and grace_until is None:
            if due is Outcome.SANDBOX_EXPIRED:
                return Ended(due)  # the sandbox is destroyed, with everything in it
            watch._killed_for = due
            watch.kill()
            grace_until = now + _KILL_GRACE_S
        wait = _CANCEL_POLL_S if watch.cancel is not None else 1.0
        deadline = watch.command_deadline
        if deadline is not None and grace_until is None:
            wait = min(wait, max(0.0, deadline - now))
        for kind, payload in channel.frames(max(wait, 0.001)):
            if kind == b"O":
                stdout.feed(payload)
            elif kind == b"E":
                stderr.feed(payload)
            elif kind == b"X":
                body = json.loads(payload)
                outcome = watch._killed_for or Outcome.EXITED
                return Ended(outcome, body.get("exit_code"), body.get("signal"))
            elif kind == b"F":
                raise _failure(payload)


def _due(watch: Watch, now: float) -> Outcome | None:
    if watch.cancel is not None and watch.cancel.is_set():
        return Outcome.CANCELED
    if watch.command_deadline is not None and now >= watch.command_deadline:
        return Outcome.TIMEOUT
    sandbox_deadline = watch.sandbox_deadline()
    if sandbox_deadline is None or now >= sandbox_deadline:
        return Outcome.SANDBOX_EXPIRED
    return None


def output(
    channel: Channel, cid: str, stdout_offset: int, stderr_offset: int, max_bytes: int
) -> CommandOutput:
    channel.send(
        request_frame(
            b"R",
            {
                "op": "output",
                "id": cid,
                "stdout_offset": stdout_offset,
                "stderr_offset": stderr_offset,
                "max_bytes": min(max_bytes, MAX_FRAME // 2),
            },
        )
    )
    body, data = channel.answer()
    streams = dict(data)
    return CommandOutput(
        stdout=streams.get(b"O", b""),
        stderr=streams.get(b"E", b""),
        stdout_end=int(body["stdout_end"]),
        stderr_end=int(body["stderr_end"]),
        exit_code=body.get("exit_code"),
        running=bool(body["running"]),
        truncated=bool(body.get("truncated")),
    )


def kill(channel: Channel, cid: str) -> bool:
    """Ask the init to kill a command; whether it was still running."""
    channel.send(request_frame(b"R", {"op": "kill", "id": cid}))
    body, _ = channel.answer()
    return bool(body["was_running"])


def ping(channel: Channel) -> dict[str, Any]:
    channel.send(request_frame(b"R", {"op": "ping"}))
    return channel.answer()[0]


def ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(OSError, InitGone, BackendError):
        call()

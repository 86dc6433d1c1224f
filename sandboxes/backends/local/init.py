"""The init of a live local sandbox: one per sandbox, started by bubblewrap at create.

It runs inside the sandbox (its namespaces, cgroups and seccomp filter, as the sandbox user,
with the host's ``/usr/bin/python3``), so it uses the standard library only and never imports
the project: the worker hands bubblewrap this file's source. Every command of the sandbox is a
child of this process and so inherits all of the sandbox's containment.

Workers talk to it over a Unix socket whose listening end the worker created at a host path
the sandbox cannot see, so only workers connect. One connection per call, carrying frames
(a type byte, a 4-byte big-endian length, a payload):

    worker -> init   R request (JSON)     K kill the connection's command
    init -> worker   S started (JSON: the command's id, whether it has a cgroup of its own)
                     O stdout bytes   E stderr bytes   X exit (JSON)   A answer (JSON)
                     F failure (JSON: code, message)

Commands start from a standby: a shell spawned ahead of time (vfork: no copy of this
process), its rlimits set and, where the worker delegated the sandbox's tracking cgroup, already
moved into a cgroup of its own, named by the command id it will carry. Moving a process into a
cgroup costs an RCU grace period (milliseconds) when the host's cgroup lock is cold, so it is
done here, in a thread, before the command arrives; a command never waits for it unless
commands come faster than standbys are placed. The standby reads its cwd, command and
environment from a socket, exports the environment and execs ``/bin/bash -c <command>``.

A foreground ``run`` streams O/E until the command's own process exits, then X. What the
command left in the background keeps its pipes; from then on this process reads and drops
their output, so it can neither block nor die of SIGPIPE. A background ``start`` keeps the
latest ``max_output`` bytes of each stream for ``output`` requests. A foreground command whose
worker went away is killed with everything it started.
"""

from __future__ import annotations

# Only modules that cost nothing to import: the sandbox waits for this process to start
# (json, selectors, threading, contextlib and typing would add some 12 ms to every create).
# It runs on the host's python3, 3.9 or newer (os.pidfd_open).
import _thread
import errno
import marshal
import os
import resource
import select
import signal
import socket
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct("!cI")
MAX_FRAME = 16 * 1024 * 1024
READ_SIZE = 64 * 1024
# Past this many unsent bytes to a slow worker, the command's pipes are not read (it blocks).
SEND_BUFFER_LIMIT = 4 * 1024 * 1024
KEEP_FINISHED = 64  # finished background commands whose output stays readable
# Commands are preferred over the init when the sandbox runs out of memory.
COMMAND_OOM_SCORE_ADJ = "500"
# What a standby runs: say it is up, read cwd, command and environment (NUL-separated, an
# empty entry ends the environment), then become the command with that environment: it
# started with none, and exports each variable itself (never through an argv, which every
# host user can read). Once read, everything rides in the positional parameters, which no
# variable can overwrite; a variable bash keeps read-only (UID, EUID, PPID, SHELLOPTS,
# BASHOPTS) cannot be passed.
STANDBY = "; ".join(
    [
        "printf r >&3",
        "IFS= read -r -d '' cwd <&3 || exit 125",
        "IFS= read -r -d '' cmd <&3 || exit 125",
        "vars=()",
        'while IFS= read -r -d \'\' kv <&3 && [ -n "$kv" ]; do vars+=("$kv"); done',
        "exec 3<&-",
        'cd -- "$cwd" || exit 126',
        'set -- "$cmd" "${vars[@]}"',
        "unset cwd cmd vars kv OLDPWD",  # from here on, only the command's own variables
        'while [ "$#" -gt 1 ]; do export -- "$2" 2>/dev/null; set -- "$1" "${@:3}"; done',
        'exec /bin/bash -c "$1"',
    ]
)


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, value: Any) -> bytes:
    """A frame to the worker, which reads JSON (never anything it would have to trust)."""
    return frame(kind, dump_json(value).encode())


def request_frame(kind: bytes, value: Any) -> bytes:
    """A frame to the init (from the worker, so trusted): marshal, which costs no import."""
    return frame(kind, marshal.dumps(value))


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def dump_json(value: Any) -> str:
    """JSON for the few shapes this process sends (dicts of str, int, bool, None)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.translate(_JSON_ESCAPES) + '"'
    if isinstance(value, dict):
        items = (f"{dump_json(str(key))}:{dump_json(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump_json(item) for item in value) + "]"
    raise TypeError(f"cannot send {type(value).__name__}")


class suppress:
    def __init__(self, *exceptions: type[BaseException]) -> None:
        self.exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, self.exceptions)


class SelectorKey:
    def __init__(self, fd: int, data: Any) -> None:
        self.fd = fd
        self.data = data


class Selector:
    """The part of ``selectors`` this process uses, over epoll (selectors costs an import)."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.keys: dict[int, SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self.epoll.register(fd, events)
        self.keys[fd] = SelectorKey(fd, data)

    def modify(self, fileobj: Any, events: int, data: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self.epoll.modify(fd, events)
        self.keys[fd] = SelectorKey(fd, data)

    def unregister(self, fileobj: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if self.keys.pop(fd, None) is None:
            raise KeyError(fd)
        self.epoll.unregister(fd)

    def get_key(self, fd: int) -> SelectorKey:
        return self.keys[fd]

    def select(self) -> list[tuple[SelectorKey, int]]:
        ready = []
        for fd, mask in self.epoll.poll():
            key = self.keys.get(fd)
            if key is not None:  # a hang-up or an error reads as readable: the read says which
                events = EVENT_READ if mask & ~select.EPOLLOUT else 0
                ready.append((key, events | (EVENT_WRITE if mask & select.EPOLLOUT else 0)))
        return ready


EVENT_READ = select.EPOLLIN
EVENT_WRITE = select.EPOLLOUT


def split_frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """Take every complete frame off the front of ``buffer``."""
    frames = []
    while len(buffer) >= HEADER.size:
        kind, length = HEADER.unpack_from(buffer)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes")
        if len(buffer) < HEADER.size + length:
            break
        frames.append((kind, bytes(buffer[HEADER.size : HEADER.size + length])))
        del buffer[: HEADER.size + length]
    return frames


class Ring:
    """One background stream: the latest ``limit`` bytes, with offsets counted from the start."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        self.total += len(chunk)
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def read(self, offset: int, max_bytes: int) -> tuple[bytes, int, bool]:
        start = self.total - len(self.data)
        dropped = offset < start
        offset = min(max(offset, start), self.total)
        chunk = bytes(self.data[offset - start : offset - start + max_bytes])
        return chunk, offset + len(chunk), dropped or start > 0


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.command: Command | None = None  # the foreground command it is attached to
        self.closing = False  # close once the outbox is sent


class Command:
    """A spawned shell: a standby until a request is given to it, then that command."""

    def __init__(self, cid: str, pid: int, pidfd: int, gate: socket.socket) -> None:
        self.cid = cid
        self.pid = pid
        self.pidfd = pidfd
        self.gate: socket.socket | None = gate  # where it waits for its request
        self.pipes: dict[int, bytes] = {}  # read end -> b"O" / b"E"
        self.state = "starting"  # -> "placing" -> "ready" -> "running"
        self.tracked = False  # in a cgroup of its own, named by cid
        self.background = False
        self.rings = {b"O": Ring(0), b"E": Ring(0)}
        self.exit: dict[str, Any] | None = None
        self.conn: Connection | None = None


class Init:
    def __init__(self, listener: socket.socket, rlimits: list[Any], track_fd: int | None):
        self.listener = listener
        self.rlimits = [(str(name), int(value)) for name, value in rlimits]
        self.track_fd = track_fd  # the sandbox's tracking cgroup, delegated to this process
        self.selector = Selector()
        self.commands: dict[str, Command] = {}
        self.standby: Command | None = None
        self.waiting: list[tuple[Connection, dict[str, Any]]] = []
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.placed_r, self.placed_w = os.pipe()  # placement threads report here

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> None:
        self.listener.setblocking(False)
        self.selector.register(self.listener, EVENT_READ, ("accept", None))
        self.selector.register(self.placed_r, EVENT_READ, ("placed", None))
        self.spawn_standby()
        while True:
            for key, events in self.selector.select():
                kind, item = key.data
                try:
                    self.dispatch(kind, item, key.fd, events)
                except Exception as exc:  # one broken connection or request never stops it
                    print(f"init: {kind}: {exc!r}", file=sys.stderr)

    def dispatch(self, kind: str, item: Any, fd: int, events: int) -> None:
        if kind == "accept":
            self.accept()
        elif kind == "conn":
            if events & EVENT_WRITE:
                self.flush(item)
            if events & EVENT_READ:
                self.receive(item)
        elif kind == "pipe":
            self.pump(item, fd)
        elif kind == "gate":
            self.standby_up(item)
        elif kind == "placed":
            self.standby_placed()
        elif kind == "exit":
            self.exited(item)

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Connection(sock)
        self.selector.register(sock, EVENT_READ, ("conn", conn))

    def receive(self, conn: Connection) -> None:
        try:
            chunk = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.drop(conn)
            return
        conn.inbox += chunk
        try:
            frames = split_frames(conn.inbox)
        except ValueError:
            self.drop(conn)
            return
        for kind, payload in frames:
            if kind == b"R":
                self.request(conn, marshal.loads(payload))  # noqa: S302 - only workers connect
            elif kind == b"K" and conn.command is not None:
                self.kill(conn.command)

    def send(self, conn: Connection, data: bytes) -> None:
        if conn.sock.fileno() < 0:
            return
        conn.outbox += data
        self.flush(conn)

    def flush(self, conn: Connection) -> None:
        try:
            while conn.outbox:
                sent = conn.sock.send(conn.outbox)
                del conn.outbox[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(conn)
            return
        events = EVENT_READ | (EVENT_WRITE if conn.outbox else 0)
        self.selector.modify(conn.sock, events, ("conn", conn))
        if conn.closing and not conn.outbox:
            self.drop(conn)
            return
        # Back-pressure: a worker that reads slowly slows its command down, never the init.
        if conn.command is not None and conn.command.exit is None:
            for fd in conn.command.pipes:
                self.watch_pipe(conn.command, fd, len(conn.outbox) < SEND_BUFFER_LIMIT)

    def drop(self, conn: Connection) -> None:
        if conn.sock.fileno() >= 0:
            self.selector.unregister(conn.sock)
            conn.sock.close()
        self.waiting = [(c, body) for c, body in self.waiting if c is not conn]
        command, conn.command = conn.command, None
        if command is not None:
            command.conn = None
            if command.exit is None and not command.background:
                self.kill(command)  # its worker is gone: nothing can time it out any more

    # -- requests ----------------------------------------------------------------------------

    def request(self, conn: Connection, body: dict[str, Any]) -> None:
        op = body.get("op")
        if op == "run":
            cwd = str(body["cwd"])
            if not os.path.isdir(cwd):
                self.fail(conn, "cannot_start", f"cwd {cwd}: No such file or directory")
                return
            self.waiting.append((conn, body))
            self.serve_waiting()
        elif op == "output":
            self.output(conn, body)
        elif op == "kill":
            command = self.commands.get(body["id"])
            if command is None:
                self.fail(conn, "command_not_found", f"no command {body['id']}")
                return
            running = command.exit is None
            self.kill(command)
            self.answer(conn, {"was_running": running})
        elif op == "ping":
            self.answer(conn, {"pid": os.getpid(), "commands": len(self.commands)})
        else:
            self.fail(conn, "bad_request", f"unknown op {op!r}")

    def answer(self, conn: Connection, value: dict[str, Any], *extra: bytes) -> None:
        conn.closing = True
        self.send(conn, json_frame(b"A", value) + b"".join(extra))

    def fail(self, conn: Connection, code: str, message: str) -> None:
        conn.closing = True
        self.send(conn, json_frame(b"F", {"code": code, "message": message}))

    def output(self, conn: Connection, body: dict[str, Any]) -> None:
        command = self.commands.get(body["id"])
        if command is None:
            self.fail(conn, "command_not_found", f"no command {body['id']}")
            return
        max_bytes = int(body["max_bytes"])
        out, out_end, out_cut = command.rings[b"O"].read(int(body["stdout_offset"]), max_bytes)
        err, err_end, err_cut = command.rings[b"E"].read(int(body["stderr_offset"]), max_bytes)
        exit_info = command.exit or {}
        value = {
            "stdout_end": out_end,
            "stderr_end": err_end,
            "running": command.exit is None,
            "exit_code": exit_info.get("exit_code"),
            "truncated": out_cut or err_cut,
            "has_data": True,
        }
        self.answer(conn, value, frame(b"O", out), frame(b"E", err))

    # -- standbys ----------------------------------------------------------------------------

    def spawn_standby(self) -> None:
        """The shell the next command will start from, spawned now."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        gate, gate_child = socket.socketpair()
        try:
            pid = os.posix_spawn(
                "/bin/bash",
                ["bash", "-c", STANDBY, "standby"],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self.devnull, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                    (os.POSIX_SPAWN_DUP2, gate_child.fileno(), 3),
                ],
                setsid=True,  # its own session and process group: what a kill reaches
                # Python ignores these; an ignored signal would stay ignored across exec.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            gate.close()
            limit = " (the sandbox's process limit)" if exc.errno == errno.EAGAIN else ""
            for conn, _ in self.waiting:
                self.fail(conn, "cannot_start", f"cannot start the command: {exc.strerror}{limit}")
            self.waiting = []
            return
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
            gate_child.close()
        command = Command(f"c{os.urandom(8).hex()}", pid, pidfd, gate)
        command.pipes = {out_r: b"O", err_r: b"E"}
        for fd in command.pipes:
            os.set_blocking(fd, False)
        self.standby = command
        self.selector.register(pidfd, EVENT_READ, ("exit", command))
        self.selector.register(gate, EVENT_READ, ("gate", command))

    def standby_up(self, command: Command) -> None:
        """Its shell runs (its exec is complete, so its /proc entries are its own): set its
        limits, then move it into its own cgroup, in a thread."""
        assert command.gate is not None
        self.selector.unregister(command.gate)
        try:
            if command.gate.recv(1) != b"r":
                return  # it died: its exit is handled when its pidfd says so
            # Soft equals hard, so the kernel's SIGKILL comes at the limit and nothing can
            # raise them again (no CAP_SYS_RESOURCE in the sandbox).
            for name, value in self.rlimits:
                resource.prlimit(command.pid, getattr(resource, name), (value, value))
            # When the sandbox runs out of memory, its commands go before this init.
            with open(f"/proc/{command.pid}/oom_score_adj", "w") as file:
                file.write(COMMAND_OOM_SCORE_ADJ)
        except OSError as exc:
            # Never run a command without its limits: end this standby, and say why.
            with suppress(ProcessLookupError):
                os.kill(command.pid, signal.SIGKILL)
            for conn, _ in self.waiting:
                self.fail(conn, "cannot_start", f"cannot limit the command: {exc.strerror}")
            self.waiting = []
            return
        if self.track_fd is None:
            command.state = "ready"
            self.serve_waiting()
            return
        command.state = "placing"
        try:
            _thread.start_new_thread(self.place, (command.cid, command.pid))
        except RuntimeError:  # no thread to be had (the sandbox's process limit): do it here
            self.place(command.cid, command.pid)

    def place(self, cid: str, pid: int) -> None:
        """In a thread: make the command's cgroup and move the standby into it."""
        assert self.track_fd is not None
        placed = "+"
        try:
            os.mkdir(cid, 0o755, dir_fd=self.track_fd)
            fd = os.open(f"{cid}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.track_fd)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
        except OSError:
            placed = "-"  # it runs untracked: its process group is what a kill reaches
        os.write(self.placed_w, f"{placed}{cid}\n".encode())

    def standby_placed(self) -> None:
        for line in os.read(self.placed_r, 4096).decode().split():
            command = self.standby
            if command is not None and command.cid == line[1:] and command.state == "placing":
                command.tracked = line[0] == "+"
                command.state = "ready"
        self.serve_waiting()

    def serve_waiting(self) -> None:
        """Hand the ready standby to the first request waiting for one."""
        if not self.waiting:
            return
        if self.standby is None:
            self.spawn_standby()
            return
        if self.standby.state != "ready":
            return
        command, self.standby = self.standby, None
        conn, body = self.waiting.pop(0)
        self.launch(command, conn, body)
        self.spawn_standby()
        if self.waiting:
            self.serve_waiting()

    def launch(self, command: Command, conn: Connection, body: dict[str, Any]) -> None:
        command.state = "running"
        command.background = bool(body.get("background"))
        limit = int(body.get("max_output", 0))
        command.rings = {b"O": Ring(limit), b"E": Ring(limit)}
        self.commands[command.cid] = command
        env = [f"{name}={value}" for name, value in dict(body["env"]).items()]
        request = b"\0".join(part.encode() for part in [body["cwd"], body["command"], *env])
        assert command.gate is not None
        with suppress(OSError):  # it died meanwhile: reported as the command's exit
            command.gate.sendall(request + b"\0\0")
        command.gate.close()
        command.gate = None
        for fd in command.pipes:
            self.selector.register(fd, EVENT_READ, ("pipe", command))
        started = {"id": command.cid, "tracked": command.tracked}
        if command.background:
            self.answer(conn, {"started": True, **started})
        else:
            command.conn = conn
            conn.command = command
            self.send(conn, json_frame(b"S", started))
        self.forget_finished()

    # -- command events ----------------------------------------------------------------------

    def pump(self, command: Command, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(fd)
            os.close(fd)
            del command.pipes[fd]
            return
        self.deliver(command, command.pipes[fd], chunk)

    def deliver(self, command: Command, kind: bytes, chunk: bytes) -> None:
        if command.background:
            command.rings[kind].append(chunk)
        elif command.exit is None and command.conn is not None:
            self.send(command.conn, frame(kind, chunk))
        # else: a finished foreground command's leftovers, read and dropped

    def exited(self, command: Command) -> None:
        _, status = os.waitpid(command.pid, 0)
        self.selector.unregister(command.pidfd)
        os.close(command.pidfd)
        command.pidfd = -1
        if os.WIFSIGNALED(status):
            command.exit = {"exit_code": 128 + os.WTERMSIG(status), "signal": os.WTERMSIG(status)}
        else:
            command.exit = {"exit_code": os.WEXITSTATUS(status)}
        if command.state != "running":  # a standby that died (killed from inside, OOM)
            self.discard(command)
            if self.standby is command:
                self.standby = None
                if self.waiting:
                    self.spawn_standby()
            return
        self.report_exit(command)
        self.remove_cgroup(command)

    def discard(self, command: Command) -> None:
        if command.gate is not None:
            with suppress(KeyError, ValueError):
                self.selector.unregister(command.gate)
            command.gate.close()
            command.gate = None
        for fd in command.pipes:
            os.close(fd)
        command.pipes = {}
        self.remove_cgroup(command)

    def report_exit(self, command: Command) -> None:
        # What the process wrote before it exited is in its pipes now: send it first.
        for fd, kind in list(command.pipes.items()):
            while True:
                try:
                    chunk = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                if command.background:
                    command.rings[kind].append(chunk)
                elif command.conn is not None:
                    self.send(command.conn, frame(kind, chunk))
            if command.conn is not None and not command.background:
                self.watch_pipe(command, fd, True)
        conn = command.conn
        if conn is not None and not command.background:
            conn.command = None
            command.conn = None
            self.send(conn, json_frame(b"X", command.exit))
        if not command.background:
            self.commands.pop(command.cid, None)

    def watch_pipe(self, command: Command, fd: int, reading: bool) -> None:
        try:
            registered = self.selector.get_key(fd) is not None
        except KeyError:
            registered = False
        if reading and not registered:
            self.selector.register(fd, EVENT_READ, ("pipe", command))
        elif not reading and registered:
            self.selector.unregister(fd)

    def kill(self, command: Command) -> None:
        """SIGKILL the command's process group and everything in its cgroup: a forking
        command cannot outrun either."""
        # The group outlives its leader while members remain; its id is not reused
        # meanwhile, and one signal reaches every member, even one forking right then.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(command.pid, signal.SIGKILL)
        if not command.tracked or self.track_fd is None:
            return
        try:  # cgroup v2: the kernel kills the whole cgroup at once
            fd = os.open(f"{command.cid}/cgroup.kill", os.O_WRONLY, dir_fd=self.track_fd)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                os.write(fd, b"1")
                return
            finally:
                os.close(fd)
        for _ in range(100):  # cgroup v1: until none is left
            victims = in_cgroup(command.cid)
            if not victims:
                return
            for pid in victims:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove_cgroup(self, command: Command) -> None:
        """Remove the command's cgroup unless something it started still runs there (the
        worker removes what is left when the sandbox ends)."""
        if command.tracked and self.track_fd is not None:
            with suppress(OSError):
                os.rmdir(command.cid, dir_fd=self.track_fd)

    def forget_finished(self) -> None:
        finished = [cid for cid, c in self.commands.items() if c.exit is not None]
        for cid in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            self.remove_cgroup(self.commands.pop(cid))


def in_cgroup(cid: str) -> list[int]:
    """Live processes of this sandbox in the cgroup named ``cid`` (each command's cgroup is
    named by its id; a process cannot leave its cgroup from inside)."""
    found = []
    suffix = "/" + cid
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                if file.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
            with open(f"/proc/{name}/cgroup") as file:
                if any(line.rstrip("\n").endswith(suffix) for line in file):
                    found.append(int(name))
        except (OSError, IndexError):
            continue
    return found


def set_undumpable() -> None:
    """No process of the sandbox (same uid) may ptrace this one or open its descriptors."""
    import ctypes

    pr_set_dumpable = 4
    ctypes.CDLL(None).prctl(pr_set_dumpable, 0, 0, 0, 0)


def handshake(ready: socket.socket) -> tuple[dict[str, Any], int | None]:
    """Tell the worker this process's pid (the kernel translates it to the host's); it moves
    this process into the sandbox's cgroups and answers G with the sandbox's settings (and the
    delegated tracking cgroup). If the worker dies first, so does the sandbox."""
    credentials = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
    ready.sendmsg([frame(b"P")], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
    inbox = bytearray()
    fds: list[int] = []
    while True:
        chunk, ancillary, _, _ = ready.recvmsg(READ_SIZE, socket.CMSG_SPACE(4))
        if not chunk:
            sys.exit(1)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += [struct.unpack_from("i", data, at)[0] for at in range(0, len(data), 4)]
        inbox += chunk
        frames = split_frames(inbox)
        if frames:
            return marshal.loads(frames[0][1]), (fds[0] if fds else None)  # noqa: S302 - the worker


def main(argv: list[str]) -> None:
    listen_fd, ready_fd = int(argv[1]), int(argv[2])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps reach the host's handler
    keep = {listen_fd, ready_fd}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with suppress(OSError):
                os.close(fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    listener = socket.socket(fileno=listen_fd)
    ready = socket.socket(fileno=ready_fd)
    os.set_inheritable(listen_fd, False)
    os.set_inheritable(ready_fd, False)
    settings, track_fd = handshake(ready)
    ready.close()
    set_undumpable()  # after the handshake (ctypes is slow to import): before any command
    Init(listener, settings.get("rlimits", []), track_fd).serve()


if __name__ == "__main__":
    main(sys.argv)

"""`make run`: the whole stack in one terminal — web (uvicorn serving config.asgi), one Celery
worker, beat, and `ready` (bootstrap_demo once the web server answers).

A small process manager rather than honcho or supervisord: when one process dies, honcho stops
all the others; supervisord is a daemon with its own configuration and log files, which gives up
on a process after a few quick failures. Here a process that exits is said so, loudly, and
started again after a back-off (1 s, doubling to 30 s; back to 1 s once it has stayed up a
minute) while the others keep serving. Output is prefixed with the process's name, except
`ready`'s: its banner (the demo credentials and a copy-pasteable call) is printed once, whole
and unprefixed, when it is done — and is also in var/demo.txt. One Ctrl-C stops everything.

    HOST=0.0.0.0 PORT=9000 python -m config.stack
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# A process that stayed up this long is healthy again: its next restart waits BACKOFF_FIRST_S.
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 10.0


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    # A one-shot process is not restarted once it exits with 0; its output is printed whole,
    # unprefixed, when it ends.
    once: bool = False


@dataclass
class _Running:
    spec: ProcessSpec
    process: subprocess.Popen[str]
    started: float
    restarts: int = 0
    backoff: float = BACKOFF_FIRST_S  # before its next restart
    done: bool = False
    restart_at: float | None = None  # when an exited process starts again
    output: list[str] = field(default_factory=list)


def address() -> tuple[str, int]:
    """HOST and PORT of the web process (127.0.0.1:8000 unless told)."""
    host = os.environ.get("HOST", "127.0.0.1") or "127.0.0.1"
    raw = os.environ.get("PORT", "8000") or "8000"
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"PORT must be a port number (1-65535), not {raw!r}")
    return host, int(raw)


def default_specs() -> list[ProcessSpec]:
    host, port = address()
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    base_url = f"http://{shown_host}:{port}"
    os.environ.setdefault("SITE_URL", base_url)  # links in review emails follow the port
    python = str(BIN / "python")
    celery = [python, "-m", "celery", "-A", "config"]
    web_options = ["--host", host, "--port", str(port), "--no-access-log"]
    worker_options = ["--loglevel", "INFO", "--concurrency", "2", "--without-gossip",
                      "--without-mingle"]  # fmt: skip
    return [
        ProcessSpec("web", [python, "-m", "uvicorn", "config.asgi:application", *web_options]),
        ProcessSpec("worker", [*celery, "worker", *worker_options]),
        ProcessSpec("beat", [*celery, "beat", "--loglevel", "INFO"]),
        ProcessSpec(
            "ready",
            [python, "manage.py", "bootstrap_demo", "--when-ready", "--base-url", base_url],
            once=True,
        ),
    ]


class Stack:
    """Start every process, restart the ones that die, stop them all on stop()."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        write: Callable[[str], None] | None = None,
        backoff_first_s: float = BACKOFF_FIRST_S,
    ) -> None:
        self.specs = list(specs)
        self.backoff_first_s = backoff_first_s
        self._write = write or self._print
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.running: dict[str, _Running] = {}
        self.width = max(len(spec.name) for spec in self.specs)

    @staticmethod
    def _print(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self._write(f"{name.ljust(self.width)} | {line.rstrip(chr(10))}\n")

    def start(self) -> None:
        for spec in self.specs:
            self._spawn(spec)

    def _spawn(self, spec: ProcessSpec, previous: _Running | None = None) -> None:
        process = subprocess.Popen(
            spec.argv,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: a stop reaches its children
        )
        running = _Running(spec, process, time.monotonic(), backoff=self.backoff_first_s)
        if previous is not None:
            running.restarts, running.backoff = previous.restarts + 1, previous.backoff
        self.running[spec.name] = running
        self.say("stack", f"{spec.name} started (pid {process.pid})")
        threading.Thread(target=self._pump, args=(running,), daemon=True).start()

    def _pump(self, running: _Running) -> None:
        assert running.process.stdout is not None
        for line in running.process.stdout:
            if running.spec.once:
                running.output.append(line)
            else:
                self.say(running.spec.name, line)

    def supervise(self, poll_s: float = 0.2) -> None:
        """Until stop(): notice exits, restart what must run when its back-off is over."""
        while not self._stopping.wait(poll_s):
            now = time.monotonic()
            for running in list(self.running.values()):
                if running.restart_at is not None:
                    if now >= running.restart_at:
                        self._spawn(running.spec, previous=running)
                elif not running.done and running.process.poll() is not None:
                    self._exited(running)

    def _exited(self, running: _Running) -> None:
        code = running.process.returncode
        spec = running.spec
        if spec.once:
            time.sleep(0.2)  # let the pump read the last lines
            with self._lock:
                self._write("".join(running.output))
            if code == 0:
                running.done = True
                return
        uptime = time.monotonic() - running.started
        if uptime >= HEALTHY_AFTER_S:
            running.backoff = self.backoff_first_s
        delay = running.backoff
        self.say(
            "stack",
            f"!!! {spec.name} (pid {running.process.pid}) exited with code {code} after "
            f"{uptime:.0f} s; restarting it in {delay:g} s (restart {running.restarts + 1})",
        )
        running.backoff = min(BACKOFF_MAX_S, delay * 2)
        running.restart_at = time.monotonic() + delay

    def stop(self) -> None:
        self._stopping.set()
        for running in self.running.values():
            if running.process.poll() is None:
                _signal_group(running.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for running in self.running.values():
            try:
                running.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(running.process, signal.SIGKILL)
                running.process.wait()


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(process.pid, signum)


def main() -> None:
    stack = Stack(default_specs())

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started with SIGINT ignored (a background job)
    stack.start()
    try:
        stack.supervise()
    except KeyboardInterrupt:
        stack.say("stack", "stopping")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()

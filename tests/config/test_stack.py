"""`make run`'s process manager (config/stack.py), with real processes: one that dies is
restarted while the others go on; a one-shot process's output comes out once, whole."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from config.stack import ProcessSpec, Stack, address, default_specs

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def supervised() -> Iterator[Callable[..., tuple[Stack, list[str]]]]:
    stacks: list[Stack] = []

    def start(specs: list[ProcessSpec], **options: float) -> tuple[Stack, list[str]]:
        lines: list[str] = []
        stack = Stack(specs, write=lines.append, **options)
        stack.start()
        threading.Thread(target=stack.supervise, kwargs={"poll_s": 0.05}, daemon=True).start()
        stacks.append(stack)
        return stack, lines

    yield start
    for stack in stacks:
        stack.stop()


def test_a_process_that_dies_is_restarted_and_the_others_keep_running(
    supervised: Callable[..., tuple[Stack, list[str]]],
) -> None:
    stack, lines = supervised([ProcessSpec("worker", SLEEPER), ProcessSpec("web", SLEEPER)])
    _wait(lambda: "".join(lines).count("| up") == 2, "both up")
    worker, web = stack.running["worker"].process, stack.running["web"].process

    os.kill(worker.pid, signal.SIGKILL)

    _wait(lambda: stack.running["worker"].process.pid != worker.pid, "the restart")
    _wait(lambda: "".join(lines).count("| up") == 3, "the new worker up")
    assert stack.running["worker"].restarts == 1
    assert stack.running["web"].process is web and web.poll() is None  # untouched
    said = "".join(lines)
    assert f"!!! worker (pid {worker.pid}) exited with code -9" in said  # loudly
    assert "restarting it in 1 s (restart 1)" in said


def test_a_process_failing_again_and_again_waits_longer_each_time(
    supervised: Callable[..., tuple[Stack, list[str]]],
) -> None:
    failing = ProcessSpec("beat", [sys.executable, "-c", "raise SystemExit(3)"])
    stack, lines = supervised([failing], backoff_first_s=0.1)

    _wait(lambda: stack.running["beat"].restarts >= 3, "three restarts")
    said = "".join(lines)
    assert "exited with code 3" in said
    assert "restarting it in 0.1 s" in said and "restarting it in 0.2 s" in said
    assert "restarting it in 0.4 s" in said


def test_a_one_shot_process_prints_its_output_once_whole_and_unprefixed(
    supervised: Callable[..., tuple[Stack, list[str]]],
) -> None:
    banner = "import time\nfor line in ('Airlock is running.', '', '  curl -s x'):\n"
    banner += "    print(line, flush=True); time.sleep(0.05)\n"
    stack, lines = supervised(
        [ProcessSpec("ready", [sys.executable, "-c", banner], once=True),
         ProcessSpec("web", SLEEPER)]
    )  # fmt: skip
    _wait(lambda: stack.running["ready"].done, "ready to finish")
    time.sleep(0.3)

    assert "Airlock is running.\n\n  curl -s x\n" in lines  # one write, as it was printed
    assert stack.running["ready"].restarts == 0
    assert "exited" not in "".join(lines)


def test_stop_ends_every_process_and_what_it_started(
    supervised: Callable[..., tuple[Stack, list[str]]],
) -> None:
    parent = "import subprocess, sys, time\n"
    parent += "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    parent += "print('up', flush=True); time.sleep(600)\n"
    stack, lines = supervised([ProcessSpec("web", [sys.executable, "-c", parent])])
    _wait(lambda: "| up" in "".join(lines), "up")
    group = stack.running["web"].process.pid

    stack.stop()

    assert stack.running["web"].process.poll() is not None
    _wait(lambda: not _group_alive(group), "the child to end too")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_host_and_port_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOST", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert address() == ("127.0.0.1", 8000)

    monkeypatch.setenv("HOST", "0.0.0.0")  # noqa: S104 (what it is told, not a bind)
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.delenv("SITE_URL", raising=False)
    web, _worker, _beat, ready = default_specs()
    assert web.argv[web.argv.index("--host") + 1 :][:3] == ["0.0.0.0", "--port", "9123"]  # noqa: S104
    assert "config.asgi:application" in web.argv  # uvicorn serving the ASGI app
    assert ready.argv[-2:] == ["--base-url", "http://127.0.0.1:9123"] and ready.once
    assert os.environ["SITE_URL"] == "http://127.0.0.1:9123"

    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(SystemExit, match="PORT must be a port number"):
        address()

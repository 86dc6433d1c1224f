"""What the local backend's tests share: a sandbox fixture, and ways to look at the host."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sandboxes.backends.local as local_package
from sandboxes.backends.base import CommandResult
from sandboxes.backends.local import LocalBackend

HOME = "/home/user"
PROJECT_DIR = Path(local_package.__file__).resolve().parents[3]
WORKER_IS_ROOT = os.geteuid() == 0


def run(backend: LocalBackend, sandbox_id: str, command: str, **kwargs: Any) -> CommandResult:
    kwargs.setdefault("timeout_s", 20)
    return backend.run(sandbox_id, command, **kwargs)


def processes_with(marker: str, *, exactly: bool = False) -> list[int]:
    """Live host processes whose command line (arguments joined by spaces) contains
    ``marker``, or with ``exactly`` is it. Zombies have no command line."""
    found = []
    needle = marker.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        joined = cmdline.rstrip(b"\0").replace(b"\0", b" ")
        if (joined == needle) if exactly else (needle in joined):
            found.append(int(entry.name))
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def status_field(pid: int, name: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1:]
    raise AssertionError(f"no {name} line for {pid}")


def in_background(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``target`` in a thread; the list receives its result or exception."""
    outcome: list[object] = []

    def main() -> None:
        try:
            outcome.append(target())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, outcome


def in_another_worker(root: Path, code: str, *args: str) -> str:
    """Run ``code`` in a fresh Python process (another worker) with ``backend`` bound to a
    LocalBackend on the same root; returns what it printed."""
    import subprocess
    import sys

    from tests.sandboxes.backends.fixtures_local import TEST_LIMITS

    prelude = (
        "import sys; from pathlib import Path; "
        "from sandboxes.backends.local import LocalBackend; "
        f"backend = LocalBackend(root=Path(sys.argv[1]), **{TEST_LIMITS!r}); "
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + code, str(root), *args],
        capture_output=True, text=True, cwd=PROJECT_DIR, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout

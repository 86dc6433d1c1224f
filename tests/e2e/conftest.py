"""Real Celery processes for end-to-end tests: a worker (and beat) started as subprocesses
on the same broker and the same test database as the test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class OutputProcess:
    """A subprocess of the project (its own session) whose output is kept for assertions and
    failure reports."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_marker: str = ""):
        self.output: list[str] = []
        self._ready = threading.Event()
        self._marker = ready_marker
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if self._marker and self._marker in line:
                self._ready.set()

    def wait_ready(self) -> None:
        if not self._ready.wait(READY_TIMEOUT_S):
            raise AssertionError(f"{self.process.args!r} did not start:\n" + self.log()[-5000:])

    def _stop(self, send: Callable[[], None], grace_s: float) -> None:
        if self.process.poll() is None:
            send()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def log(self) -> str:
        return "".join(self.output)


class CeleryProcess(OutputProcess):
    """One `celery` subprocess."""

    def __init__(self, args: list[str], env: dict[str, str], ready_marker: str):
        super().__init__(["-m", "celery", "-A", "config", *args], env, ready_marker)

    def stop(self) -> None:
        # Cold shutdown: a warm one waits on the filesystem broker for seconds, and a task
        # still running at the end of a test has nothing left to finish.
        self._stop(lambda: os.killpg(self.process.pid, signal.SIGQUIT), 15)


@pytest.fixture
def celery_env(celery_broker_env: dict[str, str], settings: Any, tmp_path: Path) -> dict[str, str]:
    """What a worker process needs to see the test's database, broker and sandboxes."""
    from config.celery import app

    with app.connection_for_write() as conn:  # drop messages earlier tests left behind
        app.control.purge(connection=conn)
    env = {
        **os.environ,
        **celery_broker_env,
        "DATABASE_URL": _database_url(),
        "SANDBOX_BACKEND": settings.SANDBOX_BACKEND,
        "SANDBOX_LOCAL_ROOT": str(settings.SANDBOX_LOCAL_ROOT),
        "E2B_API_KEY": settings.E2B_API_KEY,
        "E2B_API_URL": settings.E2B_API_URL or "",
        "E2B_SANDBOX_URL": settings.E2B_SANDBOX_URL or "",
        "DEPLOY_ENV": django_settings.DEPLOY_ENV,
        "SECRET_KEY": django_settings.SECRET_KEY,  # webhook secrets are sealed under it
        # The worker's var/ is the test's tmp_path: its media folder is the `media` fixture's.
        "AIRLOCK_VAR_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture
def start_celery(
    celery_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., CeleryProcess]]:
    """start_celery("worker") / start_celery("beat", SANDBOX_SWEEP_INTERVAL_S="1")."""
    started: list[CeleryProcess] = []

    def start(kind: str, **extra_env: str) -> CeleryProcess:
        env = {**celery_env, **extra_env}
        if kind == "worker":
            args = ["worker", "--loglevel", "INFO", "--concurrency", "2", "--without-gossip",
                    "--without-mingle", "--without-heartbeat"]  # fmt: skip
            proc = CeleryProcess(args, env, ready_marker="ready.")
        else:
            schedule = tmp_path / f"beat-schedule-{len(started)}"
            args = ["beat", "--loglevel", "INFO", "--schedule", str(schedule)]
            proc = CeleryProcess(args, env, ready_marker="beat: Starting")
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    what: str,
    logs: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")

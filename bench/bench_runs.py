"""Runs: POST → `running` through a warm worker, and `exec` of `true` against raw bwrap.

Targets (issue #3): POST /runs → running median ≤ 150 ms with the local backend and a warm
worker on Redis; `exec true` through the API median ≤ 2× a direct bwrap invocation of `true`.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BOOTS = 30
EXECS = 50


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _start_worker() -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
         "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    return worker


def _wait(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.001)


def setup() -> None:
    """A benchmark database of its own (SQLite under var/bench unless DATABASE_URL is set)
    and the local Redis unless CELERY_BROKER_URL is set; worker subprocesses inherit both."""
    var = ROOT / "var" / "bench"
    var.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRLOCK_VAR_DIR", str(var))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{var / 'bench.sqlite3'}")
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def main() -> None:
    from django.conf import settings
    from django.db import connection
    from rest_framework.test import APIClient

    from config.celery import app
    from sandboxes import services
    from sandboxes.backends import get_backend
    from sandboxes.models import RunStatus, SandboxRun
    from tests.factories import UserFactory, make_api_key, make_workspace
    from workspaces.access import Actor

    settings.WORKSPACE_MAX_ACTIVE_RUNS = 1000
    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)
    user: Any = UserFactory(username=f"bench-{time.time_ns()}")
    workspace = make_workspace(owner=user, name="bench")
    _, key = make_api_key(workspace=workspace)
    client = APIClient(SERVER_NAME="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    url = f"/api/v1/workspaces/{workspace.pk}/runs/"
    worker = _start_worker()
    boots: list[float] = []
    try:
        for attempt in range(BOOTS + 3):  # the first three warm the worker's pool up
            started = time.perf_counter()
            run_id = client.post(url, {"thread_id": "bench", "prompt": "p"}, format="json").json()[
                "id"
            ]
            running = SandboxRun.objects.filter(pk=run_id, status=RunStatus.RUNNING)
            _wait(running.exists)
            if attempt >= 3:
                boots.append(time.perf_counter() - started)
            run = SandboxRun.objects.get(pk=run_id)
            if attempt < BOOTS + 2:
                services.run_cancel(run=run, actor=Actor.for_user(user))

        api_exec: list[float] = []
        for _ in range(EXECS):
            started = time.perf_counter()
            response = client.post(
                f"/api/v1/runs/{run.pk}/exec/", {"command": "true"}, format="json"
            )
            api_exec.append(time.perf_counter() - started)
            assert response.json()["exit_code"] == 0

        backend = get_backend()
        direct: list[float] = []
        for _ in range(EXECS):
            with backend.bwrap_command(run.sandbox_id, "true") as prepared:  # type: ignore[attr-defined]
                started = time.perf_counter()
                subprocess.run(prepared.argv, check=True, **prepared.popen_kwargs())
                direct.append(time.perf_counter() - started)
        services.run_cancel(run=run, actor=Actor.for_user(user))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)

    boot_median = statistics.median(boots)
    exec_median, direct_median = statistics.median(api_exec), statistics.median(direct)
    ratio = exec_median / direct_median
    print("## Runs\n")
    broker = settings.CELERY_BROKER_URL.split("://")[0]
    print(f"Backend `{settings.SANDBOX_BACKEND}`, broker `{broker}`, database "
          f"`{connection.vendor}`, a warm worker.\n")  # fmt: skip
    print("| measure | median | p90 | target | met |")
    print("|---|---|---|---|---|")
    p90 = statistics.quantiles(boots, n=10)[-1]
    print(f"| POST /runs → running ({BOOTS} runs) | {_ms(boot_median)} | {_ms(p90)} | ≤ 150 ms | "
          f"{'yes' if boot_median <= 0.150 else 'no'} |")  # fmt: skip
    print(f"| `exec` of `true` through the API ({EXECS}) | {_ms(exec_median)} | "
          f"{_ms(statistics.quantiles(api_exec, n=10)[-1])} | ≤ 2× direct | "
          f"{'yes' if ratio <= 2 else 'no'} ({ratio:.2f}×) |")  # fmt: skip
    print(f"| direct `bwrap … true`, same argv ({EXECS}) | {_ms(direct_median)} | "
          f"{_ms(statistics.quantiles(direct, n=10)[-1])} | — | — |")  # fmt: skip


if __name__ == "__main__":
    setup()
    main()

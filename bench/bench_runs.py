"""Runs through a real server (uvicorn, one process) and warm Celery workers, the local
backend, every ratio as interleaved pairs:

- `exec true` through the API against a fresh minimal `bwrap --unshare-all … true`
  (target ≤ 2×), and against the backend's own `run` in the same live sandbox (the API's
  overhead, target ≤ 5 ms median);
- a job `true`: POST → succeeded, waiting with `wait_s` (not polling), against the minimal
  bwrap (target ≤ 5×);
- throughput: 20 clients each starting `echo hi` jobs and waiting for them, a worker with
  concurrency 8 (target ≥ 30 runs/s, ≤ ~35 ms of CPU per run across web and worker).

    python -m bench runs
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 50
JOB_PAIRS = 30
CLIENTS = 20
THROUGHPUT_S = 20.0
WORKER_CONCURRENCY = 8


def setup() -> None:
    common.environment(SANDBOX_BACKEND="local", WORKSPACE_MAX_ACTIVE_RUNS="1000")
    common.django_setup()


class Api:
    """One keep-alive HTTP connection to the server, JSON in and out."""

    def __init__(self, port: int, key: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        self.connection.request(method, path, body=data, headers=self.headers)
        response = self.connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None

    def job(self, workspace_id: str, command: str) -> dict[str, Any]:
        """POST a run with `command`, then wait (wait_s) until it has ended."""
        status, run = self.call(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/runs/",
            {"thread_id": "bench", "prompt": "p", "command": command},
        )
        assert status == 201, run
        while run["status"] in ("booting", "running"):
            status, run = self.call("GET", f"/api/v1/runs/{run['id']}/?wait_s=30")
            assert status == 200, run
        return dict(run)


def _sessions() -> int:
    """Connections ever opened to this database (PostgreSQL ≥ 14); -1 elsewhere."""
    from django.db import connection

    if connection.vendor != "postgresql" or connection.pg_version < 140000:  # type: ignore[attr-defined]
        return -1
    with connection.cursor() as cursor:
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def main() -> None:
    from django.conf import settings
    from django.db import connection

    from config.celery import app
    from sandboxes.backends import get_backend
    from tests.factories import UserFactory, make_api_key, make_workspace

    print("## Runs\n")
    print(common.stamp() + "\n")
    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)
    user: Any = UserFactory(username=common.unique("bench-runs"))
    workspace = make_workspace(owner=user, name=common.unique("bench-runs"))
    _, key = make_api_key(workspace=workspace)
    ws = str(workspace.pk)
    backend: Any = get_backend()
    bwrap = shutil.which(backend.bwrap_path) or "bwrap"
    fresh_argv = common.minimal_bwrap(bwrap)
    as_user: dict[str, Any] = {}
    if backend.host_uid is not None:
        as_user = {"user": backend.host_uid, "group": backend.host_gid}

    port = common.free_port()
    server = common.start_server(port)
    worker = common.start_worker(concurrency=2)
    try:
        api = Api(port, key)
        status, run = api.call(
            "POST", f"/api/v1/workspaces/{ws}/runs/", {"thread_id": "b", "prompt": "p"}
        )
        assert status == 201, run
        while run["status"] == "booting":
            _, run = api.call("GET", f"/api/v1/runs/{run['id']}/?wait_s=30&while_status=booting")
        assert run["status"] == "running", run
        exec_path = f"/api/v1/runs/{run['id']}/exec/"

        def api_exec() -> float:
            started = time.perf_counter()
            status, body = api.call("POST", exec_path, {"command": "true"})
            elapsed = time.perf_counter() - started
            assert status == 200 and body["exit_code"] == 0, body
            return elapsed

        def direct() -> float:
            started = time.perf_counter()
            result = backend.run(run["sandbox_id"], "true", timeout_s=30)
            elapsed = time.perf_counter() - started
            assert result.exit_code == 0
            return elapsed

        def fresh() -> float:
            return common.timed(lambda: subprocess.run(fresh_argv, check=True, **as_user))

        vs_fresh = common.interleaved(api_exec, fresh, PAIRS)
        vs_direct = common.interleaved(api_exec, direct, PAIRS)
        api.call("POST", f"/api/v1/runs/{run['id']}/cancel/", {})

        def job() -> float:
            started = time.perf_counter()
            ended = api.job(ws, "true")
            elapsed = time.perf_counter() - started
            assert ended["status"] == "succeeded", ended
            return elapsed

        jobs = common.interleaved(job, fresh, JOB_PAIRS)
    finally:
        common.stop(worker)

    # Throughput: a worker of concurrency 8, 20 clients, each its own connection.
    worker = common.start_worker(concurrency=WORKER_CONCURRENCY)
    try:
        Api(port, key).job(ws, "echo hi")  # the worker is up and warm
        for _ in range(WORKER_CONCURRENCY):
            Api(port, key).job(ws, "echo hi")
        done: list[float] = []
        errors: list[str] = []
        stop_at = threading.Event()

        def client() -> None:
            session = Api(port, key)
            while not stop_at.is_set():
                try:
                    started = time.perf_counter()
                    ended = session.job(ws, "echo hi")
                    if ended["status"] != "succeeded":
                        errors.append(ended["status"])
                    done.append(time.perf_counter() - started)
                except Exception as exc:  # counted, and the client goes on
                    errors.append(repr(exc))
                    session = Api(port, key)

        web_cpu, worker_cpu = (
            common.tree_cpu_seconds(server.pid),
            common.tree_cpu_seconds(worker.pid),
        )
        sessions = _sessions()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(THROUGHPUT_S)
        stop_at.set()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        web_cpu = common.tree_cpu_seconds(server.pid) - web_cpu
        worker_cpu = common.tree_cpu_seconds(worker.pid) - worker_cpu
        sessions = _sessions() - sessions
    finally:
        common.stop(worker)
        common.stop(server)

    fresh_s = common.pair_summary(vs_fresh)
    direct_s = common.pair_summary(vs_direct)
    job_s = common.pair_summary(jobs)
    broker = settings.CELERY_BROKER_URL.split("://")[0]
    rate = len(done) / wall
    runs = max(1, len(done))
    cpu_per_run = (web_cpu + worker_cpu) / runs
    print(
        f"Backend `local`, broker `{broker}`, database `{connection.vendor}`, uvicorn (one "
        f"process) and a warm worker (prefork, concurrency 2; 8 for throughput). Load average "
        f"at the end: {common.load()}.\n"
    )
    print("| measure | median (first / second) | ratio per pair: median (p10–p90) | target | met |")
    print("|---|---|---|---|---|")
    print(
        f"| exec `true` through the API / fresh minimal bwrap ({PAIRS} pairs) | "
        f"{common.ms(fresh_s['first'])} / {common.ms(fresh_s['second'])} | "
        f"{fresh_s['ratio']:.2f}× ({fresh_s['ratio_p10']:.2f}–{fresh_s['ratio_p90']:.2f}) | ≤ 2× | "
        f"{common.verdict(fresh_s['ratio'] <= 2)} |"
    )
    print(
        f"| exec `true` through the API / the backend's `run` in the same sandbox ({PAIRS} pairs) "
        f"| {common.ms(direct_s['first'])} / {common.ms(direct_s['second'])} | "
        f"{direct_s['ratio']:.2f}×; API overhead {common.ms(direct_s['difference'])} | ≤ 5 ms | "
        f"{common.verdict(direct_s['difference'] <= 0.005)} |"
    )
    print(
        f"| job `true` POST → succeeded (`wait_s`) / fresh minimal bwrap ({JOB_PAIRS} pairs) | "
        f"{common.ms(job_s['first'])} / {common.ms(job_s['second'])} | "
        f"{job_s['ratio']:.2f}× ({job_s['ratio_p10']:.2f}–{job_s['ratio_p90']:.2f}) | ≤ 5× | "
        f"{common.verdict(job_s['ratio'] <= 5)} |"
    )
    print()
    print(
        f"Throughput: {CLIENTS} clients for {wall:.1f} s, each POSTing an `echo hi` job and "
        f"waiting for it (`wait_s`); worker concurrency {WORKER_CONCURRENCY}.\n"
    )
    print("| measure | value | target | met |")
    print("|---|---|---|---|")
    print(f"| runs completed per second | {rate:.1f} | ≥ 30 | {common.verdict(rate >= 30)} |")
    print(
        f"| CPU per run, web + worker | {common.ms(cpu_per_run)} (web "
        f"{common.ms(web_cpu / runs)}, worker {common.ms(worker_cpu / runs)}) "
        f"| ≤ ~35 ms | {common.verdict(cpu_per_run <= 0.035)} |"
    )
    print(
        f"| client's POST → succeeded, median / p90 | {common.ms(statistics.median(done))} / "
        f"{common.ms(common.quantile(done, 90))} | — | — |"
    )
    if sessions >= 0:
        print(f"| PostgreSQL connections opened meanwhile (all clients of the database) | "
              f"{sessions} for {len(done)} runs | workers reuse theirs | — |")  # fmt: skip
    print(f"| errors | {len(errors)} {errors[:3]} | 0 | {common.verdict(not errors)} |")
    print()
    for title, pairs in (
        ("exec API / fresh bwrap", vs_fresh),
        ("exec API / backend run", vs_direct),
        ("job / fresh bwrap", jobs),
    ):
        print("\n".join(common.pairs_block(title, pairs)))
        print()


if __name__ == "__main__":
    setup()
    main()

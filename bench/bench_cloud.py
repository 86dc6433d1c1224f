"""Cloud scale: many runs alive at once through the E2B backend, against the E2B double
(tests/fakes/e2b, its own process) answering with realistic latencies — create 150–450 ms,
exec 20–50 ms, kill 50 ms — several Celery worker processes, uvicorn, and a bounded load
generator on loopback.

Reports: the boot latency Airlock adds (run created → running, p50/p95, over the double's own
create measured alongside through the same SDK), exec through the API against the backend's
own call (interleaved pairs), sweep and reconcile times with every sandbox alive, errors, and
runs left non-terminal at the end (both must be 0).

    python -m bench cloud                       # 1,000 runs
    CLOUD_RUNS=300 python -m bench cloud        # a smaller machine
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("CLOUD_RUNS", "1000"))
WORKERS = int(os.environ.get("CLOUD_WORKERS", "4"))
CONCURRENCY = int(os.environ.get("CLOUD_WORKER_CONCURRENCY", "8"))
CLIENTS = int(os.environ.get("CLOUD_CLIENTS", "16"))
LATENCIES = ("create=0.15-0.45", "exec=0.02-0.05", "kill=0.05")
EXEC_PAIRS = 30
DIRECT_CREATES = 40
BOOT_DEADLINE_S = 600.0

_double: Any = None


def setup() -> None:
    global _double
    common.environment()
    _double, variables = common.start_e2b_double(common.free_port(), LATENCIES)
    common.environment(**variables, SANDBOX_BACKEND="e2b", WORKSPACE_MAX_ACTIVE_RUNS=str(RUNS * 2))
    common.django_setup()


class Api:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        data = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closed an idle keep-alive connection before this request
                # reached it: once more on a new connection.
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _per_thread(port: int, key: str) -> Any:
    local = threading.local()

    def api() -> Api:
        if not hasattr(local, "api"):
            local.api = Api(port, key)
        return local.api

    return api


def main() -> None:
    from django.db.models import Count

    from config.celery import app
    from sandboxes.backends import get_backend
    from sandboxes.models import ACTIVE_STATUSES, SandboxRun
    from sandboxes.reconcile import sandboxes_reconcile
    from sandboxes.sweep import sandboxes_sweep
    from tests.factories import UserFactory, make_api_key, make_workspace

    print("## Cloud scale: the E2B backend against the E2B double\n")
    print(common.stamp() + "\n")
    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)
    user: Any = UserFactory(username=common.unique("bench-cloud"))
    workspace = make_workspace(owner=user, name=common.unique("bench-cloud"))
    _, key = make_api_key(workspace=workspace, role="admin")
    port = common.free_port()
    server = common.start_server(port)
    workers = [
        common.start_worker(concurrency=CONCURRENCY, name=f"cloud{n}") for n in range(WORKERS)
    ]
    errors: list[str] = []
    api = _per_thread(port, key)
    backend: Any = get_backend()
    cpu_before: dict[str, float] = {}
    try:
        # Warm-up: every worker process imported and connected, before the CPU is counted.
        warm = []
        for _ in range(WORKERS * CONCURRENCY):
            status, body = api().call(
                "POST",
                f"/api/v1/workspaces/{workspace.pk}/runs/",
                {"thread_id": "w", "prompt": "w"},
            )
            assert status == 201, body
            warm.append(body["id"])
        warm_runs = SandboxRun.objects.filter(pk__in=warm)
        while warm_runs.filter(status="booting").exists():
            time.sleep(0.2)
        for run_id in warm:
            api().call("POST", f"/api/v1/runs/{run_id}/cancel/", {})
        cpu_before = {
            "web": common.tree_cpu_seconds(server.pid),
            "workers": sum(common.tree_cpu_seconds(w.pid) for w in workers),
            "double": common.tree_cpu_seconds(_double.pid),
        }

        # 1. Start RUNS runs from CLIENTS clients at once; each POST answers `booting`.
        def start(n: int) -> str | None:
            try:
                status, body = api().call(
                    "POST",
                    f"/api/v1/workspaces/{workspace.pk}/runs/",
                    {"thread_id": f"cloud-{n % 50}", "prompt": f"run {n}"},
                )
            except Exception as exc:
                errors.append(f"POST: {exc!r}")
                return None
            if status != 201:
                errors.append(f"POST {status}: {body}")
                return None
            return str(body["id"])

        # The double's own create, through the same SDK, while the load runs.
        direct_creates: list[float] = []

        def direct() -> None:
            for _ in range(DIRECT_CREATES):
                started = time.perf_counter()
                info = backend.create(
                    template="", metadata={"bench": "direct"}, envs={}, timeout_s=600
                )
                direct_creates.append(time.perf_counter() - started)
                backend.kill(info.sandbox_id)

        started = time.perf_counter()
        side = threading.Thread(target=direct)
        side.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            run_ids = [r for r in pool.map(start, range(RUNS)) if r is not None]
        posted_s = time.perf_counter() - started
        runs = SandboxRun.objects.filter(workspace=workspace).exclude(pk__in=warm)
        while runs.filter(status="booting").exists():
            if time.perf_counter() - started > BOOT_DEADLINE_S:
                errors.append("boots did not finish in time")
                break
            time.sleep(0.25)
        all_running_s = time.perf_counter() - started
        side.join()
        states = dict(runs.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        alive = runs.filter(status="running").count()
        worker_rss = [common.tree_rss_bytes(w.pid) for w in workers]
        web_rss = common.tree_rss_bytes(server.pid)
        boots = [
            (running_at - created_at).total_seconds()  # type: ignore[operator]
            for created_at, running_at in runs.filter(running_at__isnull=False).values_list(
                "created_at", "running_at"
            )
        ]

        # 2. With every sandbox alive: exec through the API against the backend's own call.
        sample = list(runs.filter(status="running").values_list("pk", "sandbox_id")[:EXEC_PAIRS])
        pair_index = iter(range(10**9))

        def api_exec() -> float:
            run_id, _ = sample[next(pair_index) % len(sample)]
            began = time.perf_counter()
            status, body = api().call("POST", f"/api/v1/runs/{run_id}/exec/", {"command": "true"})
            elapsed = time.perf_counter() - began
            if status != 200 or body.get("exit_code") != 0:
                errors.append(f"exec {status}: {body}")
            return elapsed

        def backend_exec() -> float:
            _, sandbox_id = sample[0]
            return common.timed(lambda: backend.run(sandbox_id, "true", timeout_s=30))

        execs = common.interleaved(api_exec, backend_exec, EXEC_PAIRS)

        # 3. Sweep and reconcile with every sandbox alive (nothing due, nothing orphaned).
        sweeps = [common.timed(sandboxes_sweep) for _ in range(3)]
        reconcile_reports = []
        reconciles = []
        for _ in range(3):
            began = time.perf_counter()
            reconcile_reports.append(sandboxes_reconcile())
            reconciles.append(time.perf_counter() - began)
        listed = len(backend.list_sandboxes({}))
        lost_here = runs.filter(status="failed").count()  # of this test's runs

        # 4. Cancel everything, from the same bounded clients.
        def cancel(run_id: str) -> None:
            try:
                status, body = api().call("POST", f"/api/v1/runs/{run_id}/cancel/", {})
            except Exception as exc:
                errors.append(f"cancel: {exc!r}")
                return
            if status != 200:
                errors.append(f"cancel {status}: {body}")

        began = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(cancel, run_ids))
        cancel_s = time.perf_counter() - began
        left = runs.filter(status__in=ACTIVE_STATUSES).count()
        ended = dict(runs.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        sandboxes_left = len(backend.list_sandboxes({}))
    finally:
        cpu = {
            "web": common.tree_cpu_seconds(server.pid) - cpu_before.get("web", 0),
            "workers": sum(common.tree_cpu_seconds(w.pid) for w in workers)
            - cpu_before.get("workers", 0),
            "double": common.tree_cpu_seconds(_double.pid) - cpu_before.get("double", 0),
        }
        for worker in workers:
            common.stop(worker)
        common.stop(server)
        common.stop(_double)

    boot_p50, boot_p95 = common.quantile(boots, 50), common.quantile(boots, 95)
    own_p50, own_p95 = common.quantile(direct_creates, 50), common.quantile(direct_creates, 95)
    summary = common.pair_summary(execs)
    print(
        f"{RUNS:,} runs started by {CLIENTS} clients (keep-alive, loopback) through one uvicorn "
        f"process; {WORKERS} Celery worker processes of concurrency {CONCURRENCY} (prefork: "
        f"{WORKERS * CONCURRENCY} boots at once); the double in its own process with latencies "
        f"{', '.join(LATENCIES)}. Load average at the end: {common.load()}.\n"
    )
    print("| measure | value | target | met |")
    print("|---|---|---|---|")
    print(f"| runs alive at once | {alive:,} of {RUNS:,} ({states}) | {RUNS:,} | "
          f"{common.verdict(alive == RUNS)} |")  # fmt: skip
    print(f"| POSTs answered (all {RUNS:,}) | {posted_s:.1f} s | — | — |")
    print(f"| first POST → every run running | {all_running_s:.1f} s | — | — |")
    print(f"| boot, created → running (server clock), p50 / p95 | {common.ms(boot_p50)} / "
          f"{common.ms(boot_p95)} | — | — |")  # fmt: skip
    print(f"| the double's own create through the SDK, alongside ({DIRECT_CREATES}), p50 / p95 | "
          f"{common.ms(own_p50)} / {common.ms(own_p95)} | — | — |")  # fmt: skip
    print(f"| boot latency added by Airlock, p50 / p95 | {common.ms(boot_p50 - own_p50)} / "
          f"{common.ms(boot_p95 - own_p95)} | — | — |")  # fmt: skip
    print(f"| exec `true` through the API / the backend's own call ({EXEC_PAIRS} pairs), median "
          f"| {common.ms(summary['first'])} / {common.ms(summary['second'])}; overhead "
          f"{common.ms(summary['difference'])} | — | — |")  # fmt: skip
    print(f"| sweep with {alive:,} live sandboxes (3 passes) | "
          f"{', '.join(common.ms(s) for s in sweeps)} | — | — |")  # fmt: skip
    print(f"| reconcile with {listed:,} listed sandboxes (3 passes) | "
          f"{', '.join(common.ms(s) for s in reconciles)}; killed "
          f"{sum(r.killed for r in reconcile_reports)}, lost {lost_here} of this test's runs "
          f"({sum(r.lost for r in reconcile_reports)} in the whole database) | 0 lost | "
          f"{common.verdict(lost_here == 0)} |")  # fmt: skip
    print(f"| cancel every run ({CLIENTS} clients) | {cancel_s:.1f} s | — | — |")
    print(f"| errors | {len(errors)} {errors[:3]} | 0 | {common.verdict(not errors)} |")
    print(f"| runs left non-terminal | {left} ({ended}) | 0 | {common.verdict(left == 0)} |")
    print(f"| sandboxes left in the double | {sandboxes_left} | 0 | "
          f"{common.verdict(sandboxes_left == 0)} |")  # fmt: skip
    mib = 1024 * 1024
    print(f"| RSS with every run alive: web / each worker process with its {CONCURRENCY} children "
          f"| {web_rss / mib:,.0f} MiB / {', '.join(f'{r / mib:,.0f}' for r in worker_rss)} MiB "
          f"| — | — |")  # fmt: skip
    total = sum(cpu.values())
    print(
        f"| CPU over the whole test: web / workers / the double | {cpu['web']:.1f} s / "
        f"{cpu['workers']:.1f} s / {cpu['double']:.1f} s ({total:.1f} s; "
        f"{common.ms(cpu['web'] / max(1, RUNS))} web and {common.ms(cpu['workers'] / max(1, RUNS))}"
        f" worker per run) | — | — |"
    )
    print()
    print("\n".join(common.pairs_block("exec API / backend", execs)))


if __name__ == "__main__":
    setup()
    main()

"""Reading runs at scale: `GET runs/{id}/` and `GET workspaces/{ws}/runs/` against `/healthz`
on the same server (interleaved rounds), for a workspace of 100 runs and one of 1,000,000; and
the admin's run and artifact lists with 1,000,000 runs stored.

Targets (issue 15): detail ≥ 25 % and list ≥ 10 % of /healthz's throughput, unchanged from 100
to 1,000,000 runs; admin run and artifact lists ≤ 100 ms with 1,000,000 runs.

The million runs (and 100,000 pending artifacts) are written once by SQL into a workspace of
their own (`bench-scale`) and kept: a rerun reuses them. PostgreSQL only.

    python -m bench scale
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

ROOT = Path(__file__).resolve().parents[1]
BIG = 1_000_000
ARTIFACTS = 100_000
SMALL = 100
CLIENTS = 4
ROUND_S = 3.0
ROUNDS = 3
ADMIN_REQUESTS = 20
SCALE_WORKSPACE = "bench-scale"


def setup() -> None:
    common.environment()
    common.django_setup()


def _insert_select(model: Any, count: int, overrides: dict[str, str], source: str = "") -> None:
    """INSERT … SELECT over `source` (default generate_series(1, count) AS g): every column
    from `overrides` (SQL over g) or a plain default for its type."""
    from django.db import connection, models

    columns, values = [], []
    for field in model._meta.concrete_fields:
        column = field.column
        columns.append(connection.ops.quote_name(column))
        if column in overrides:
            values.append(overrides[column])
        elif field.primary_key and isinstance(field, models.UUIDField):
            values.append("gen_random_uuid()")
        elif field.null:
            values.append("NULL")
        elif isinstance(field, models.JSONField):
            values.append("'{}'::jsonb")
        elif isinstance(field, (models.CharField, models.TextField)):
            values.append("''")
        elif isinstance(field, models.DateTimeField):
            values.append("now()")
        elif isinstance(field, models.BooleanField):
            values.append("false")
        else:
            values.append("0")
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {source or f'generate_series(1, {count}) AS g'}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)


def _runs(workspace: Any, count: int) -> None:
    from sandboxes.models import SandboxRun

    ended = "(ARRAY['succeeded','failed','canceled'])[1 + g % 3]"
    _insert_select(
        SandboxRun,
        count,
        {
            "workspace_id": f"'{workspace.pk}'",
            "created_by_id": str(workspace.owner_id),
            "thread_id": "'thread-' || (g % 1000)",
            "prompt": "'benchmark run ' || g",
            "status": ended,
            "end_reason": "'completed'",
            "created_at": "now() - g * interval '1 second'",
            "running_at": "now() - g * interval '1 second' + interval '300 milliseconds'",
            "finished_at": "now() - g * interval '1 second' + interval '900 milliseconds'",
            "last_activity_at": "now() - g * interval '1 second'",
            "max_duration_ms": "3600000",
            "idle_timeout_ms": "900000",
            "sandbox_id": "'sbx-' || g",
            "exit_code": "0",
            "cost_usd": "0.000123",
            "cpu_count": "2",
            "memory_mb": "512",
        },
    )


def _artifacts(workspace: Any, count: int) -> None:
    from artifacts.models import Artifact

    _insert_select(
        Artifact,
        count,
        {
            "run_id": "r.id",
            "thread_id": "r.thread_id",
            "workspace_id": f"'{workspace.pk}'",
            "type": "'file'",
            "title": "'report-' || g || '.txt'",
            "file": "'artifacts/bench/report-' || g || '.txt'",
            "content_type": "'text/plain'",
            "size": "1000 + g",
            "sha256": "repeat('0', 64)",
            "sandbox_path": "'/home/user/artifacts/report-' || g || '.txt'",
            "preview_text": "repeat('x', 200)",
            "review_state": "'pending'",
            "risk": "'none'",
            "created_at": "now() - g * interval '10 seconds'",
            "signals": "'[]'::jsonb",
        },
        source=(
            "(SELECT id, thread_id, row_number() OVER () AS g FROM sandboxes_sandboxrun "
            f"WHERE workspace_id = '{workspace.pk}' LIMIT {count}) AS r"
        ),
    )


def _scale_fixture() -> tuple[Any, Any, float]:
    """The workspace of a million runs (written on first use, then reused) and its owner,
    and the seconds the writing took (0 when reused)."""
    from django.db import connection

    from artifacts.models import Artifact
    from sandboxes.models import SandboxRun
    from tests.factories import UserFactory, make_workspace
    from workspaces.models import Workspace

    started = time.perf_counter()
    workspace = Workspace.objects.filter(name=SCALE_WORKSPACE).first()
    if workspace is None:
        owner: Any = UserFactory(username=common.unique("bench-scale"))
        workspace = make_workspace(owner=owner, name=SCALE_WORKSPACE)
    runs = SandboxRun.objects.filter(workspace=workspace).count()
    artifacts = Artifact.objects.filter(workspace=workspace).count()
    if runs >= BIG and artifacts >= ARTIFACTS:
        return workspace, workspace.owner, 0.0
    if runs < BIG:
        _runs(workspace, BIG - runs)
    if artifacts < ARTIFACTS:
        _artifacts(workspace, ARTIFACTS - artifacts)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE sandboxes_sandboxrun")
        cursor.execute("ANALYZE artifacts_artifact")
    return workspace, workspace.owner, time.perf_counter() - started


def _small_fixture() -> tuple[Any, Any]:
    from tests.factories import UserFactory, make_workspace

    owner: Any = UserFactory(username=common.unique("bench-small"))
    workspace = make_workspace(owner=owner, name=common.unique("bench-small"))
    _runs(workspace, SMALL)
    return workspace, owner


def _rate(port: int, path: str, key: str, seconds: float) -> tuple[float, list[float]]:
    """Requests per second from CLIENTS keep-alive connections for `seconds`, and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    errors: list[int] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {key}"}
        mine = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(response.status)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"{path}: {errors[:5]}"
    return len(latencies) / (time.perf_counter() - began), latencies


def _throughput(port: int, key: str, workspace: Any, run_id: Any) -> dict[str, Any]:
    paths = {
        "healthz": "/healthz",
        "detail": f"/api/v1/runs/{run_id}/",
        "list": f"/api/v1/workspaces/{workspace.pk}/runs/",
    }
    for path in paths.values():  # warm
        _rate(port, path, key, 0.5)
    rounds: dict[str, list[float]] = {name: [] for name in paths}
    p99: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, path in paths.items():  # healthz, detail, list, healthz, …
            rate, latencies = _rate(port, path, key, ROUND_S)
            rounds[name].append(rate)
            p99[name].append(common.quantile(latencies, 99))
    return {"rounds": rounds, "p99": p99}


def _admin(owner: Any, urls: list[tuple[str, str]]) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    superuser = get_user_model().objects.create_superuser(
        common.unique("bench-root"), "root@example.com", "pw"
    )
    lines = []
    for who, user in (("superuser", superuser), ("workspace owner (staff)", owner)):
        if not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        client = Client()
        client.force_login(user)
        for name, url in urls:
            assert client.get(url).status_code == 200, url  # warm
            times = []
            for _ in range(ADMIN_REQUESTS):
                started = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200, (url, response.status_code)
            median = statistics.median(times)
            lines.append(
                f"| {name} | {who} | {common.ms(median)} | {common.ms(common.quantile(times, 95))} "
                f"| ≤ 100 ms | {common.verdict(median <= 0.100)} |"
            )
    return lines


def main() -> None:
    from django.db import connection

    from sandboxes.models import SandboxRun
    from tests.factories import make_api_key

    print("## Reading runs at scale\n")
    print(common.stamp() + "\n")
    if connection.vendor != "postgresql":
        print("Skipped: needs PostgreSQL (the fixture is written by SQL).")
        return
    big, big_owner, wrote_s = _scale_fixture()
    small, _ = _small_fixture()
    stored = SandboxRun.objects.count()
    results = {}
    port = common.free_port()
    server = common.start_server(port)
    try:
        for label, workspace in ((f"{SMALL:,}", small), (f"{BIG:,}", big)):
            _, key = make_api_key(workspace=workspace)
            run_id = SandboxRun.objects.filter(workspace=workspace).values_list("pk", flat=True)[0]
            results[label] = _throughput(port, key, workspace, run_id)
    finally:
        common.stop(server)
    admin = _admin(
        big_owner,
        [
            ("run list", "/admin/sandboxes/sandboxrun/"),
            ("run list, page 50", "/admin/sandboxes/sandboxrun/?p=50"),
            ("run list, status failed", "/admin/sandboxes/sandboxrun/?status__exact=failed"),
            ("artifact list (pending queue)", "/admin/artifacts/artifact/"),
            ("artifact list, page 50", "/admin/artifacts/artifact/?p=50"),
        ],
    )

    print(
        f"{stored:,} runs stored in all ({ARTIFACTS:,} pending artifacts in the big workspace"
        f"{f'; written in {wrote_s:.0f} s' if wrote_s else ', reused from an earlier run'}). "
        f"uvicorn (one process), {CLIENTS} keep-alive clients in the benchmark's process, "
        f"{ROUNDS} rounds of {ROUND_S:.0f} s per route, interleaved (healthz, detail, list, "
        f"healthz, …). Load average at the end: {common.load()}.\n"
    )
    print("| runs in the workspace | route | req/s per round | p99 (median round) | "
          "share of /healthz (median of the rounds' ratios) | target | met |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    targets = {"detail": 0.25, "list": 0.10}
    for label, result in results.items():
        rounds, p99 = result["rounds"], result["p99"]
        for name in ("healthz", "detail", "list"):
            rates = ", ".join(f"{r:,.0f}" for r in rounds[name])
            tail = common.ms(statistics.median(p99[name]))
            if name == "healthz":
                print(f"| {label} | `/healthz` | {rates} | {tail} | — | — | — |")
                continue
            share = statistics.median(
                r / h for r, h in zip(rounds[name], rounds["healthz"], strict=True)
            )
            route = "`GET runs/{id}/`" if name == "detail" else "`GET workspaces/{ws}/runs/`"
            met = common.verdict(share >= targets[name])
            print(f"| {label} | {route} | {rates} | {tail} | {share:.0%} | "
                  f"≥ {targets[name]:.0%} | {met} |")  # fmt: skip
    print()
    print(f"Admin lists with {stored:,} runs stored, server time per request (Django test "
          f"client, in process), {ADMIN_REQUESTS} requests each:\n")  # fmt: skip
    print("| page | as | median | p95 | target | met |")
    print("|---|---|---|---|---|---|")
    print("\n".join(admin))


if __name__ == "__main__":
    setup()
    main()

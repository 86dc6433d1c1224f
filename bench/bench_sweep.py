"""The sweep: 1,000 due runs among 10,000 … 1,000,000 stored runs, every kill taking 50 ms.

    .venv/bin/python bench/bench_sweep.py [--sizes 10000,100000,1000000]
    .venv/bin/python -m bench sweep

Targets (issue: cost control): a sweep over 100,000 stored runs of which 1,000 are due takes
≤ 5 s; from 10,000 to 1,000,000 stored runs the sweep's time grows < 20 %; on PostgreSQL the
due-runs query is an index scan. Of the stored runs that are not due, 10 % are running (busy,
their deadlines ahead), 1 % booting within the boot timeout, the rest ended — more running
runs than any real deployment keeps, so that a query that scanned them would show.

The database is emptied first, so it refuses to run unless the database's name contains
"bench" (create one: `psql -h 127.0.0.1 -U postgres -c 'create database airlock_bench'`, then
DATABASE_URL=postgres://postgres@127.0.0.1:5432/airlock_bench). Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DUE = 1_000
REPEATS = 3  # sweeps per size, each over 1,000 fresh due runs: the median is reported
KILL_LATENCY_S = 0.050
TARGET_S = 5.0
GROWTH_TARGET = 0.20
BATCH = 5_000
WORKSPACES = 100


def _setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _database_name() -> str:
    from django.db import connection

    return str(connection.settings_dict["NAME"])


def _reset() -> None:
    from django.core.management import call_command

    name = _database_name()
    if "bench" not in Path(name).name:
        raise SystemExit(f"bench_sweep empties the database: {name!r} is not a bench database")
    call_command("flush", interactive=False, verbosity=0)


class _Fixture:
    """The people and workspaces the stored runs belong to."""

    def __init__(self) -> None:
        from tests.factories import UserFactory
        from workspaces.models import Workspace

        self.user: Any = UserFactory.create(username=f"bench-sweep-{time.time_ns()}")
        Workspace.objects.bulk_create(
            [Workspace(name=f"bench {i}", owner=self.user) for i in range(WORKSPACES)]
        )
        self.workspace_ids = list(Workspace.objects.values_list("pk", flat=True))


def _run(fixture: _Fixture, now: datetime, kind: str, rng: random.Random) -> Any:
    """One stored run: `ended`, `running` (not due), `booting` (not stuck) or `due`."""
    from sandboxes.models import RunStatus, SandboxRun

    # Inserting a million rows takes minutes: runs that must not be due by the time the sweep
    # runs get deadlines hours ahead; the due ones are inserted just before it.
    idle_ms = rng.choice(
        [300_000, 900_000, 3_600_000] if kind == "due" else [3_600_000, 14_400_000]
    )
    fields: dict[str, Any] = {
        "workspace_id": rng.choice(fixture.workspace_ids),
        "created_by": fixture.user,
        "thread_id": f"thread-{rng.randrange(10_000)}",
        "prompt": "benchmark",
        "idle_timeout_ms": idle_ms,
        "max_duration_ms": 24 * 3_600_000,
    }
    if kind == "booting":
        return SandboxRun(created_at=now - timedelta(seconds=rng.randrange(60)), **fields)
    # Ended runs started any time in the last month; live ones within their max duration.
    age_s = rng.randrange(2 * 3600, 30 * 86400) if kind == "ended" else rng.randrange(7200, 43200)
    started = now - timedelta(seconds=age_s)
    fields.update(created_at=started, running_at=started, sandbox_id=f"sbx-{uuid.uuid4().hex}")
    if kind == "ended":
        status = rng.choice([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED])
        finished = started + timedelta(seconds=rng.randrange(10, 3600))
        return SandboxRun(
            status=status, finished_at=finished, last_activity_at=finished,
            # Stale, as left from when it ran: the partial index ignores ended runs anyway.
            expires_at=finished + timedelta(milliseconds=idle_ms),
            cpu_count=2, memory_mb=512, **fields,
        )  # fmt: skip
    if kind == "running":
        active = now - timedelta(seconds=rng.randrange(600))
    else:  # due: idle past its own timeout, or (one in ten) past its max duration
        active = now - timedelta(milliseconds=idle_ms + rng.randrange(1, 3_600_000))
        if rng.random() < 0.1:
            fields["max_duration_ms"] = 3_600_000
            fields["created_at"] = fields["running_at"] = now - timedelta(hours=2)
            active = now - timedelta(seconds=10)
    run = SandboxRun(status=RunStatus.RUNNING, last_activity_at=active, **fields)
    run.expires_at = run.sweep_due()[0]
    return run


def _insert(
    fixture: _Fixture, now: datetime, kinds: Iterator[str], rng: random.Random
) -> list[Any]:
    from sandboxes.models import SandboxRun

    created: list[Any] = []
    chunk: list[Any] = []
    for kind in kinds:
        chunk.append(_run(fixture, now, kind, rng))
        if len(chunk) == BATCH:
            created += SandboxRun.objects.bulk_create(chunk, batch_size=BATCH)
            chunk = []
    created += SandboxRun.objects.bulk_create(chunk, batch_size=BATCH)
    return created


def _background(count: int, rng: random.Random) -> Iterator[str]:
    for _ in range(count):
        roll = rng.random()
        yield "running" if roll < 0.10 else "booting" if roll < 0.11 else "ended"


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if connection.vendor != "sqlite" else "ANALYZE main")


def _explain(now: datetime) -> str:
    from django.db import connection, transaction

    from sandboxes import sweep

    query = sweep._due_running(now).select_for_update(skip_locked=True)[: sweep.BATCH_SIZE]
    with transaction.atomic():  # FOR UPDATE needs one; nothing is changed
        if connection.vendor == "postgresql":
            return str(query.explain(analyze=True, buffers=True))
        return str(query.explain())


def _measure(now: datetime) -> dict[str, float]:
    from sandboxes import sweep

    started = time.perf_counter()
    due = list(sweep._due_running(now).values_list("pk", flat=True)[: sweep.BATCH_SIZE])
    query_s = time.perf_counter() - started
    started = time.perf_counter()
    report = sweep.sandboxes_sweep()
    sweep_s = time.perf_counter() - started
    if (report.killed, report.errors) != (len(due), 0):
        raise SystemExit(f"the sweep did not end every due run: {report.as_dict()}, {len(due)} due")
    return {"query_s": query_s, "sweep_s": sweep_s}


def main(sizes: tuple[int, ...] = DEFAULT_SIZES) -> None:
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from sandboxes.backends import override_backend
    from sandboxes.models import SandboxRun
    from tests.sandboxes.fake_backend import FakeBackend

    _reset()
    # Booting runs are stored as just created; an hour keeps them from timing out while the
    # larger sizes are inserted (only running runs are due here).
    settings.SANDBOX_BOOT_TIMEOUT_S = 3600
    rng = random.Random(42)
    fixture = _Fixture()
    backend = FakeBackend(kill_latency_s=KILL_LATENCY_S)
    rows: list[tuple[int, dict[str, float]]] = []
    plans: dict[int, str] = {}
    with override_backend(backend):
        for size in sorted(sizes):
            stored = SandboxRun.objects.count()
            _insert(fixture, timezone.now(), _background(max(0, size - DUE - stored), rng), rng)
            _analyze()
            sweeps = []
            for repeat in range(REPEATS):
                now = timezone.now()
                for run in _insert(fixture, now, iter(["due"] * DUE), rng):
                    backend.add({"run_id": str(run.pk)}, sandbox_id=run.sandbox_id)
                if repeat == 0 and size in (100_000, max(sizes)):
                    plans[size] = _explain(now)
                sweeps.append(_measure(now))
            rows.append((size, {k: statistics.median(m[k] for m in sweeps) for k in sweeps[0]}))

    print("## Sweep\n")
    print(
        f"{DUE:,} due runs per sweep, each kill taking {KILL_LATENCY_S * 1000:.0f} ms, "
        f"{settings.SANDBOX_SWEEP_CONCURRENCY} kills at a time (SANDBOX_SWEEP_CONCURRENCY); "
        f"database: {connection.vendor}. Of the other stored runs 10 % are running (not due), "
        "1 % booting, the rest ended. Medians of "
        f"{REPEATS} sweeps per size. *Due-runs query*: the sweep's candidate query alone.\n"
    )
    print("| stored runs | due-runs query | sweep (claim, kill, end) | target |")
    print("|---|---|---|---|")
    for stored, m in rows:
        target = f"≤ {TARGET_S:g} s: {'met' if m['sweep_s'] <= TARGET_S else 'MISSED'}"
        print(f"| {stored:,} | {m['query_s'] * 1000:.1f} ms | {m['sweep_s']:.2f} s | {target} |")
    (first, low), (last, high) = rows[0], rows[-1]
    growth = high["sweep_s"] / low["sweep_s"] - 1
    met = "met" if growth < GROWTH_TARGET else "MISSED"
    print(
        f"\nGrowth of the sweep's time from {first:,} to {last:,} stored runs: "
        f"{growth * 100:+.1f} % (target < {GROWTH_TARGET * 100:.0f} %: {met}); "
        f"of the due-runs query: {low['query_s'] * 1000:.1f} → {high['query_s'] * 1000:.1f} ms."
    )
    for size, plan in plans.items():
        print(f"\nThe claim query's plan at {size:,} stored runs:\n\n```\n{plan}\n```")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="stored-run counts, comma-separated",
    )
    args = parser.parse_args()
    _setup_django()
    main(tuple(int(size) for size in args.sizes.split(",")))

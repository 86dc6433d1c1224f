"""Artifact benchmarks: capture of a 1 GiB file from a local sandbox (memory and throughput,
against `cp` of the same file on the same disk), and the review console's pending queue with
10,000 artifacts (server time per request).

    .venv/bin/python bench/bench_artifacts.py [--size-mib 1024] [--artifacts 10000]

Everything runs in a temporary directory (database, storage, sandboxes: one disk), with the
embedded defaults unless DATABASE_URL is set. Prints markdown. Targets: peak RSS growth during
the capture ≤ 64 MB whatever the file size; changelist median ≤ 300 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench import common

BASE_DIR = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
RSS_TARGET_MB = 64
CHANGELIST_TARGET_MS = 300
THROUGHPUT_TARGET = 0.5


def _setup_django(work: Path, max_bytes: int) -> None:
    sys.path.insert(0, str(BASE_DIR))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["AIRLOCK_VAR_DIR"] = str(work / "var")
    os.environ["SANDBOX_BACKEND"] = "local"
    os.environ["SANDBOX_LOCAL_ROOT"] = str(work / "sandboxes")
    os.environ["STORAGE_BACKEND"] = "filesystem"
    os.environ["ARTIFACT_MAX_BYTES"] = str(max_bytes)
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client's host, in-memory e-mail
    call_command("migrate", verbosity=0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def _peak_rss() -> Iterator[dict[str, int]]:
    """Samples resident memory every 5 ms; yields a dict that gets `before` and `peak`."""
    result = {"before": _rss_bytes(), "peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result["peak"] = max(result["peak"], _rss_bytes())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak"] = max(result["peak"], _rss_bytes())


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def _people_and_run(workspace_name: str) -> tuple[Any, Any, Any]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from sandboxes.backends import get_backend
    from sandboxes.models import SandboxRun
    from workspaces.access import Actor
    from workspaces.services import workspace_create

    User = get_user_model()
    owner = User.objects.create_user(common.unique("bench-owner"))
    workspace = workspace_create(name=common.unique(workspace_name), owner=owner)
    info = get_backend().create(template="", metadata={"app": "airlock"}, envs={}, timeout_s=3600)
    run = SandboxRun.objects.create(
        workspace=workspace,
        thread_id=f"bench-{workspace_name}",
        created_by=owner,
        prompt="benchmark",
        max_duration_ms=3_600_000,
        idle_timeout_ms=3_600_000,
    )
    with transaction.atomic():
        run.mark_running(
            sandbox_id=info.sandbox_id, cpu_count=1, memory_mb=512, by=Actor.system("bench")
        )
        run.save()
    _RUNS.append(run)
    return owner, workspace, run


_RUNS: list[Any] = []


def _end_runs() -> None:
    """Cancel the runs this benchmark made: their sandboxes go with its directory, and a run
    left `running` would be judged lost by the next benchmark's reconcile."""
    from sandboxes import services
    from workspaces.access import Actor

    for run in _RUNS:
        try:
            services.run_cancel(run=run, actor=Actor.system("bench"))
        except Exception as exc:  # reported, and the others are still ended
            print(f"could not cancel run {run.pk}: {exc}", file=sys.stderr)


def _sha256_seconds(size: int) -> float:
    """The hash alone, the floor under any capture's time."""
    import hashlib

    block = os.urandom(MIB)
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(size // MIB):
        digest.update(block)
    return time.perf_counter() - started


def bench_capture(work: Path, size_mib: int, repeats: int) -> list[str]:
    from artifacts import capture
    from sandboxes.backends.local import LocalBackend
    from workspaces.access import Actor

    owner, _, run = _people_and_run("capture")
    home = Path(LocalBackend.from_settings().root) / run.sandbox_id / "home"
    source = home / "big.bin"
    block = os.urandom(MIB)
    with source.open("wb") as file:
        for n in range(size_mib):
            file.write(block[n % 7 :] + block[: n % 7])  # no two MiB alike
    size = source.stat().st_size

    def cp() -> float:
        target = work / "cp-copy.bin"
        elapsed = common.timed(
            partial(subprocess.run, ["cp", str(source), str(target)], check=True)
        )
        target.unlink()
        return elapsed

    growths: list[int] = []

    def captured() -> float:
        with _peak_rss() as rss:
            elapsed, artifact = _timed(
                lambda: capture.artifact_capture(
                    run=run, actor=Actor.for_user(owner), path="/home/user/big.bin"
                )
            )
        assert artifact.size == size
        growths.append(rss["peak"] - rss["before"])
        artifact.file.delete(save=False)
        artifact.delete()
        return elapsed

    pairs = common.interleaved(captured, cp, repeats, warmup=1)
    capture_times, cp_times = [a for a, _ in pairs], [b for _, b in pairs]
    capture_s, cp_s = statistics.median(capture_times), statistics.median(cp_times)
    growth_mb = max(growths) / MIB
    verdict = "✅" if growth_mb <= RSS_TARGET_MB else "❌"
    ratio = statistics.median(b / a for a, b in pairs)
    throughput_verdict = "✅" if ratio >= THROUGHPUT_TARGET else "❌"
    sha_s = _sha256_seconds(size)
    return [
        f"### Capture of a {size / MIB:,.0f} MiB file (local sandbox → FileSystemStorage)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| capture, median of {repeats} | {capture_s:.2f} s ({size / MIB / capture_s:,.0f} MiB/s)"
        " |",
        f"| `cp` of the same file, median of {repeats} | {cp_s:.2f} s"
        f" ({size / MIB / cp_s:,.0f} MiB/s) |",
        f"| capture throughput / cp throughput, median of {repeats} pairs' ratios | "
        f"{ratio:.0%} {throughput_verdict} "
        f"(target ≥ {THROUGHPUT_TARGET:.0%}) |",
        f"| SHA-256 alone over the same bytes in memory (hashlib/OpenSSL) | {sha_s:.2f} s"
        f" ({size / MIB / sha_s:,.0f} MiB/s, {cp_s / sha_s:.0%} of cp's rate) |",
        f"| peak RSS growth during capture (max of {repeats}) | {growth_mb:.1f} MiB "
        f"{verdict} (target ≤ {RSS_TARGET_MB} MB) |",
        "",
        "The capture also computes SHA-256 (on a thread of its own, overlapping the copy) and "
        "sniffs the content type on the way; `cp` only copies. Both read a file in the page "
        "cache and write to the same file system. The capture cannot beat the hash: its rate "
        "is bounded by the SHA-256 row.",
        "",
        *common.pairs_block("capture / cp", pairs, unit="s"),
    ]


def bench_changelist(artifacts: int, requests: int) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from artifacts.models import Artifact, ReviewState
    from workspaces.models import Membership, Role

    workspaces = [_people_and_run(f"queue-{n}") for n in range(3)]
    now = timezone.now()
    rows = []
    decided = artifacts // 5
    for n in range(artifacts + decided):
        _, workspace, run = workspaces[n % 3]
        state = ReviewState.PENDING if n < artifacts else ReviewState.APPROVED
        rows.append(
            Artifact(
                run=run,
                workspace=workspace,
                thread_id=run.thread_id,
                type="file",
                title=f"report-{n:05d}.txt",
                file=f"artifacts/{workspace.pk}/bench/report-{n:05d}.txt",
                content_type="text/plain",
                size=1000 + n,
                sha256="0" * 64,
                sandbox_path=f"/home/user/artifacts/report-{n:05d}.txt",
                preview_text="x" * 200,
                review_state=state,
                reviewed_at=None if state == ReviewState.PENDING else now,
                created_at=now - timedelta(seconds=n),
            )
        )
    Artifact.objects.bulk_create(rows, batch_size=2000)

    User = get_user_model()
    # Fresh names every run: the database keeps earlier runs' people.
    superuser = User.objects.create_superuser(common.unique("bench-root"), "root@example.com", "pw")
    staff = User.objects.create_user(
        common.unique("bench-staff"), "staff@example.com", "pw", is_staff=True
    )
    Membership.objects.create(workspace=workspaces[0][1], user=staff, role=Role.ADMIN)

    lines = [
        f"### Review console with {artifacts:,} pending (+{decided:,} decided) artifacts",
        "",
        f"Server time per request (Django test client, in process), {requests} requests each.",
        "",
        "| page | as | median | p95 |",
        "|---|---|---|---|",
    ]
    middle = max(1, artifacts // 3 // 50 // 2)  # inside the scoped staff user's third too
    pages = [
        ("pending queue", "/admin/artifacts/artifact/"),
        (f"pending queue, page {middle}", f"/admin/artifacts/artifact/?p={middle}"),
        ("search by title", "/admin/artifacts/artifact/?q=report-0999"),
        ("all states (pending first)", "/admin/artifacts/artifact/?review_state=all"),
        ("admin index (counts)", "/admin/"),
    ]
    medians = {}
    for who, user in (("superuser", superuser), ("scoped staff", staff)):
        client = Client()
        client.force_login(user)
        for name, url in pages:
            client.get(url)  # warm
            times = []
            for _ in range(requests):
                elapsed, response = _timed(partial(client.get, url))
                assert response.status_code == 200, (url, response.status_code)
                times.append(elapsed * 1000)
            times.sort()
            p95 = times[max(0, int(len(times) * 0.95) - 1)]
            medians[(name, who)] = statistics.median(times)
            lines.append(f"| {name} | {who} | {statistics.median(times):.1f} ms | {p95:.1f} ms |")
    queue_ms = medians[("pending queue", "superuser")]
    verdict = "✅" if queue_ms <= CHANGELIST_TARGET_MS else "❌"
    lines += ["", f"Pending queue median {queue_ms:.1f} ms {verdict} (target ≤ 300 ms)."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--artifacts", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--dir", default=None, help="Where to work (default: system temp).")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="airlock-bench-", dir=args.dir))
    # The sandbox user (nobody, under a root worker) must pass through to the sandboxes.
    work.chmod(0o711)
    try:
        _setup_django(work, max_bytes=(args.size_mib + 1) * MIB)
        from django.db import connection

        out = [
            "## Artifact benchmarks",
            "",
            common.stamp(),
            "",
            f"Database {connection.vendor}, working directory {work}.",
            "",
            *bench_capture(work, args.size_mib, args.repeats),
            "",
            *bench_changelist(args.artifacts, args.requests),
        ]
        print("\n".join(out))
    finally:
        _end_runs()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The loop: a decision reaching a webhook receiver and an SSE client, and the API's throughput
with 100 open streams on one uvicorn process.

Targets (issue #9): decision → webhook received on loopback p50 ≤ 100 ms with a warm worker;
decision → SSE event at the client p50 ≤ 100 ms; with 100 open SSE streams on one uvicorn
process, `GET runs/{id}/` keeps ≥ 50 % of its throughput without streams (interleaved rounds,
a trickle of events in both so the streams have work).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import ms

ROOT = Path(__file__).resolve().parents[1]
DECISIONS = 40
WARMUP = 5
STREAMS = 100
ROUND_S = 4.0
PAIRS = 3
CLIENTS = 4  # concurrent API callers in the throughput rounds
EVENTS_PER_S = 5  # the trickle of writes during the throughput rounds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setup() -> None:
    common.environment(WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_ALLOW_HTTP="true")
    common.django_setup()


class Receiver:
    """Webhook receiver on loopback: when each artifact's decision arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.perf_counter()
                payload = json.loads(body)
                receiver.arrived[payload["data"]["subject"]["id"]] = at
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


class StreamReader(threading.Thread):
    """One SSE client: when each artifact's decision arrived."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "text/event-stream"}
        with httpx.stream("GET", self.url, headers=headers, timeout=None) as response:
            for line in response.iter_lines():
                self.ready.set()
                if line.startswith("data: "):
                    at = time.perf_counter()
                    event = json.loads(line[6:])
                    self.arrived[event["subject"]["id"]] = at


def _process(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _stop(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.0005)


def _decisions(
    run: Any, reviewer: Any, receiver: Receiver, reader: StreamReader
) -> tuple[list[float], list[float]]:
    """Approve artifacts one at a time; per decision, how long until the receiver and the
    stream each had it (from just before the review call)."""
    from artifacts import review
    from tests.artifacts.conftest import make_artifact
    from workspaces.access import Actor

    to_webhook, to_stream = [], []
    for index in range(DECISIONS + WARMUP):
        artifact = make_artifact(run, title=f"a{index}.txt")
        key = str(artifact.pk)
        started = time.perf_counter()
        review.artifact_review(artifact=artifact, actor=Actor(user=reviewer), decision="approve")
        _wait(lambda k=key: k in receiver.arrived and k in reader.arrived)
        time.sleep(random.uniform(0, 0.1))  # no lock-step with the trail watch's polling
        if index >= WARMUP:
            to_webhook.append(receiver.arrived[key] - started)
            to_stream.append(reader.arrived[key] - started)
    return to_webhook, to_stream


async def _hold_streams(url: str, key: str, count: int, opened: threading.Event,
                        stop: threading.Event) -> int:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    events = 0

    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def one() -> None:
            nonlocal events
            async with client.stream("GET", url, headers=headers) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events += 1
                    if stop.is_set():
                        return

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while sum(t.done() for t in tasks) == 0 and not opened.is_set():
            await asyncio.sleep(0.5)
            opened.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return events


def _throughput(base: str, key: str, run_id: str, seconds: float) -> float:
    """GET runs/{id}/ from CLIENTS callers at once for `seconds`: requests per second."""
    done = [0] * CLIENTS
    deadline = time.perf_counter() + seconds

    def caller(slot: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            while time.perf_counter() < deadline:
                response = client.get(f"/api/v1/runs/{run_id}/")
                assert response.status_code == 200, response.text
                done[slot] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def _trickle(workspace: Any, stop: threading.Event) -> None:
    from django.db import connection

    from workspaces import services
    from workspaces.access import Actor

    n = 0
    try:
        while not stop.wait(1 / EVENTS_PER_S):
            n += 1
            services.workspace_rename(
                workspace=workspace, name=f"bench {n}", actor=Actor(user=workspace.owner)
            )
    finally:
        connection.close()


def _threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def _load_rounds(
    base: str, stream_url: str, key: str, run_id: str, workspace: Any, server_pid: int
) -> dict[str, Any]:
    """Interleaved pairs: a round without streams, then one with STREAMS open."""
    without: list[float] = []
    with_streams: list[float] = []
    threads: list[int] = []
    for _ in range(PAIRS):
        for streams in (0, STREAMS):
            stop_trickle = threading.Event()
            trickle = threading.Thread(target=_trickle, args=(workspace, stop_trickle))
            opened, stop = threading.Event(), threading.Event()
            holder = None
            if streams:
                holder = threading.Thread(
                    target=asyncio.run,
                    args=(_hold_streams(stream_url, key, streams, opened, stop),),
                )
                holder.start()
                opened.wait(30)
                time.sleep(1.0)  # every stream open and past its backlog
                threads.append(_threads_of(server_pid))
            trickle.start()
            rate = _throughput(base, key, run_id, ROUND_S)
            stop_trickle.set()
            trickle.join()
            stop.set()
            if holder is not None:
                holder.join(30)
            (with_streams if streams else without).append(rate)
    return {"without": without, "with": with_streams, "threads": threads}


def main() -> None:
    from django.conf import settings
    from django.db import connection

    from config.celery import app
    from tests.factories import make_api_key, make_run, make_user, make_workspace
    from workspaces import webhooks
    from workspaces.access import Actor

    with app.connection_for_write() as conn:
        app.control.purge(connection=conn)
    suffix = time.time_ns()
    owner = make_user(username=f"bench-owner-{suffix}")
    reviewer = make_user(username=f"bench-reviewer-{suffix}")
    workspace = make_workspace(owner=owner, name="bench loop", members={reviewer: "admin"})
    _, key = make_api_key(workspace=workspace)
    run = make_run(workspace=workspace, status="running")
    receiver = Receiver()
    webhooks.webhook_create(
        workspace=workspace,
        actor=Actor(user=owner),
        url=receiver.url,
        event_types=["artifact.approved"],
    )
    env = {**os.environ}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    worker = _process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
         "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env,
    )  # fmt: skip
    server = _process(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
        env,
    )  # fmt: skip
    stream_url = f"{base}/api/v1/workspaces/{workspace.pk}/events/stream/"
    try:
        _wait(lambda: _answers(base), 60)
        reader = StreamReader(f"{stream_url}?type=artifact.approved", key)
        reader.start()
        reader.ready.wait(30)
        to_webhook, to_stream = _decisions(run, reviewer, receiver, reader)
        load = _load_rounds(base, stream_url, key, str(run.pk), workspace, server.pid)
    finally:
        _stop(server)
        _stop(worker)

    _report(settings, connection.vendor, to_webhook, to_stream, load)


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _report(
    settings: Any, vendor: str, to_webhook: list[float], to_stream: list[float], load: Any
) -> None:
    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1]

    hook50, stream50 = statistics.median(to_webhook), statistics.median(to_stream)
    without, with_streams = statistics.median(load["without"]), statistics.median(load["with"])
    kept = with_streams / without
    broker = settings.CELERY_BROKER_URL.split("://")[0]
    print("## The loop: webhooks and the event stream\n")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; database `{vendor}`, broker "
          f"`{broker}`, a warm worker (concurrency 2), one uvicorn process.\n")  # fmt: skip
    print("| measure | p50 | p90 | target | met |")
    print("|---|---|---|---|---|")
    for what, values, median in (
        ("webhook at the receiver", to_webhook, hook50),
        ("SSE event at the client", to_stream, stream50),
    ):
        met = "yes" if median <= 0.1 else "no"
        print(f"| decision → {what} ({DECISIONS}) | {ms(median)} | {ms(p(values, 90))} | "
              f"≤ 100 ms | {met} |")  # fmt: skip
    print()
    print(
        f"`GET runs/{{id}}/` from {CLIENTS} concurrent clients, {ROUND_S:g} s rounds, "
        f"{PAIRS} interleaved pairs, {EVENTS_PER_S} writes/s to the streams' workspace in "
        "every round:\n"
    )
    print("| rounds | requests/s (median) | each round |")
    print("|---|---|---|")
    print(f"| no streams | {without:.0f} | {', '.join(f'{r:.0f}' for r in load['without'])} |")
    print(f"| {STREAMS} open streams | {with_streams:.0f} | "
          f"{', '.join(f'{r:.0f}' for r in load['with'])} |")  # fmt: skip
    print(f"\nWith {STREAMS} streams the API keeps {kept:.0%} of its throughput "
          f"({'meets' if kept >= 0.5 else 'misses'} the ≥ 50 % target). The uvicorn process had "
          f"{', '.join(str(t) for t in load['threads'])} threads with the streams open: "
          "Django's ASGI handler parks one idle thread per open request. The streams share "
          "the trail watch's copy of each new event (one read per event per process) and a "
          "pool of 4 threads for the database.")  # fmt: skip


if __name__ == "__main__":
    setup()
    main()

"""The agent interface (issue 10), through a real uvicorn server in its own process:

- time to the first streamed byte of a command's output: `POST runs/{id}/exec/` with
  `Accept: text/event-stream` against the backend's own `run(..., on_output=)` — target ≤ 1.5×;
- `sandbox_exec` of `true` through the MCP server (the SDK's client, one session) against the
  REST `exec` of `true` (one keep-alive connection) — target ≤ 1.5×.

Each pair runs interleaved (one of each in turn), so both sides see the same machine load.
Rerunnable against the same database: it makes its own user, workspace and key each time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import free_port, ms, start_e2b_double, start_server, timed

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 40
WARMUP = 5
STREAMED = "echo first; sleep 0.05; echo second"


def setup() -> None:
    var = ROOT / "var" / "bench"
    var.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRLOCK_VAR_DIR", str(var))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{var / 'bench.sqlite3'}")
    os.environ.setdefault("CELERY_BROKER_URL", "filesystem://localhost/")
    os.environ.setdefault("SANDBOX_LOCAL_ROOT", str(var / "sandboxes"))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _running_run(workspace: Any, key: Any) -> Any:
    from sandboxes import services
    from sandboxes.models import SandboxRun

    run = SandboxRun.objects.create(
        workspace=workspace, created_by=key.created_by, api_key=key, thread_id="bench",
        prompt="bench", max_duration_ms=3_600_000, idle_timeout_ms=3_600_000,
    )  # fmt: skip
    services.run_boot(run_id=str(run.pk))
    run.refresh_from_db()
    assert run.status == "running", run.error
    return run


def _first_byte_direct(run: Any) -> float:
    """The backend's own streaming: from the call to its first on_output."""
    from sandboxes.backends import get_backend

    first: list[float] = []
    started = time.perf_counter()

    def on_output(stream: str, text: str) -> None:
        if not first:
            first.append(time.perf_counter())

    get_backend().run(run.sandbox_id, STREAMED, timeout_s=30, on_output=on_output)
    return first[0] - started


def _first_byte_api(http: Any, run: Any) -> float:
    """The streamed exec: from sending the request to the first stdout event's bytes."""
    started = time.perf_counter()
    first = None
    with http.stream(
        "POST", f"/api/v1/runs/{run.pk}/exec/", json={"command": STREAMED},
        headers={"Accept": "text/event-stream"},
    ) as response:  # fmt: skip
        for line in response.iter_lines():
            if first is None and line.startswith("event: stdout"):
                first = time.perf_counter()
            if line.startswith("event: exit"):
                break
    assert first is not None
    return first - started


class McpSession:
    """One MCP client session (the SDK's own client) served by a task on a thread with its
    own event loop, so the benchmark can call tools in turn with REST calls."""

    def __init__(self, url: str, key: str):
        import concurrent.futures

        self.url, self.key = url, key
        self.loop = asyncio.new_event_loop()
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._serve(),), daemon=True
        )
        self.thread.start()
        self.opened.result(60)

    async def _serve(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            transport = streamable_http_client(f"{self.url}/mcp/", http_client=http)
            async with Client(transport) as client:
                self.opened.set_result(None)
                while (request := await self.requests.get()) is not None:
                    tool, arguments, answer = request
                    try:
                        answer.set_result(await client.call_tool(tool, arguments))
                    except Exception as exc:
                        answer.set_exception(exc)

    def call(self, tool: str, **arguments: Any) -> Any:
        import concurrent.futures

        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self.requests.put_nowait, (tool, arguments, answer))
        return answer.result(120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.requests.put_nowait, None)
        self.thread.join(30)


def _row(name: str, samples: list[float], target: str, met: str) -> str:
    p90 = statistics.quantiles(samples, n=10)[-1]
    return f"| {name} | {ms(statistics.median(samples))} | {ms(p90)} | {target} | {met} |"


def _use_backend(name: str, variables: dict[str, str]) -> None:
    """This process and the servers it starts use backend `name`."""
    from django.conf import settings

    os.environ.update({"SANDBOX_BACKEND": name, **variables})
    settings.SANDBOX_BACKEND = name
    for key, value in variables.items():
        setattr(settings, key, value)


def _first_bytes(workspace: Any, key: Any, secret: str) -> tuple[list[float], list[float]]:
    """Interleaved pairs: the backend's first byte, then the streamed exec's."""
    import httpx

    from sandboxes import services
    from workspaces.access import Actor

    run = _running_run(workspace, key)
    port = free_port()
    server = start_server(port)
    direct, streamed = [], []
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:
            for i in range(WARMUP + PAIRS):
                pair = (_first_byte_direct(run), _first_byte_api(http, run))
                if i >= WARMUP:
                    direct.append(pair[0])
                    streamed.append(pair[1])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
        services.run_cancel(run=run, actor=Actor.for_user(key.created_by))
    return direct, streamed


def _mcp_and_rest(workspace: Any, key: Any, secret: str) -> tuple[list[float], list[float]]:
    """Interleaved pairs: REST exec of `true`, then MCP sandbox_exec of `true`."""
    import httpx

    from sandboxes import services
    from workspaces.access import Actor

    run = _running_run(workspace, key)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port)
    mcp = None
    rest, tool = [], []
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            mcp = McpSession(url, secret)
            exec_url = f"/api/v1/runs/{run.pk}/exec/"

            def rest_call() -> None:
                assert http.post(exec_url, json={"command": "true"}).json()["exit_code"] == 0

            def tool_call() -> None:
                result = mcp.call("sandbox_exec", run_id=str(run.pk), command="true")
                assert not result.is_error and json.loads(result.content[0].text)["exit_code"] == 0

            for i in range(WARMUP + PAIRS):
                pair = (timed(rest_call), timed(tool_call))
                if i >= WARMUP:
                    rest.append(pair[0])
                    tool.append(pair[1])
    finally:
        if mcp is not None:
            mcp.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
        services.run_cancel(run=run, actor=Actor.for_user(key.created_by))
    return rest, tool


def main() -> None:
    from django.conf import settings
    from django.db import connection

    from tests.factories import UserFactory, make_api_key, make_workspace

    user: Any = UserFactory(username=f"bench-agent-{time.time_ns()}")
    workspace = make_workspace(owner=user, name="bench agent")
    key, secret = make_api_key(workspace=workspace)
    local = settings.SANDBOX_BACKEND
    first = {local: _first_bytes(workspace, key, secret)}
    rest, tool = _mcp_and_rest(workspace, key, secret)
    double, variables = start_e2b_double(free_port())
    try:
        _use_backend("e2b", variables)
        first["e2b (the test double, on this machine)"] = _first_bytes(workspace, key, secret)
    finally:
        os.killpg(double.pid, signal.SIGTERM)
        double.wait(20)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## Agent interface\n")
    print(f"Database `{connection.vendor}`, uvicorn (one process) serving "
          f"`config.asgi:application`, load average {load} at the end; {PAIRS} interleaved "
          f"pairs after {WARMUP} of warm-up each.\n")  # fmt: skip
    print("| measure | median | p90 | target | met |")
    print("|---|---|---|---|---|")
    for backend, (direct, streamed) in first.items():
        ratio = statistics.median(streamed) / statistics.median(direct)
        print(_row(f"{backend}: first streamed byte, `POST exec` with `Accept: "
                   "text/event-stream`", streamed, "≤ 1.5× direct",
                   f"{'yes' if ratio <= 1.5 else 'no'} ({ratio:.2f}×)"))  # fmt: skip
        print(_row(f"{backend}: first byte of the backend's own `run(on_output=)`", direct,
                   "—", "—"))  # fmt: skip
    mcp_ratio = statistics.median(tool) / statistics.median(rest)
    print(_row(f"{local}: MCP `sandbox_exec` of `true` (one session)", tool, "≤ 1.5× REST",
               f"{'yes' if mcp_ratio <= 1.5 else 'no'} ({mcp_ratio:.2f}×)"))  # fmt: skip
    print(_row(f"{local}: REST `exec` of `true` (keep-alive)", rest, "—", "—"))
    print(f"\nThe streamed command is `{STREAMED}`; the direct first byte is measured in the "
          "benchmark's own process, the streamed one from sending the request to receiving "
          "the first `stdout` event.")  # fmt: skip


if __name__ == "__main__":
    setup()
    main()

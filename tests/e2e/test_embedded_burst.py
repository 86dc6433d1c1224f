"""`make run`'s stack (config/stack.py) on the embedded default — SQLite, the filesystem broker,
local bubblewrap sandboxes — under a burst: 200 command runs posted 20 at a time through the
API. Every run reaches a final state and no process of the stack dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_service
from tests.e2e.conftest import PROJECT_ROOT, OutputProcess
from tests.sandboxes.backends.fixtures_local import host_tables

pytestmark = [pytest.mark.e2e, pytest.mark.bwrap]

BURST_CGROUP = "airlock-test-burst"
RUNS = 200
AT_A_TIME = 20
FINAL = {"succeeded", "failed", "canceled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StackProcess(OutputProcess):
    """`python -m config.stack`: the whole embedded stack."""

    def __init__(self, env: dict[str, str]):
        super().__init__(["-m", "config.stack"], env)

    def stop(self) -> None:  # as Ctrl-C would: the stack stops its processes itself
        self._stop(lambda: os.kill(self.process.pid, signal.SIGINT), 30)


@pytest.fixture
def embedded_stack() -> Iterator[tuple[StackProcess, Path, str]]:
    require_service(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    var = Path(tempfile.mkdtemp(prefix="airlock-stack-"))
    var.chmod(0o711)  # sandboxes run as nobody, who must pass through to var/sandboxes
    port = _free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_URL", "CELERY_", "CACHE_URL", "SANDBOX_", "E2B_"))
    }
    env.update(
        AIRLOCK_VAR_DIR=str(var),
        PORT=str(port),
        PYTHONUNBUFFERED="1",
        WORKSPACE_MAX_ACTIVE_RUNS="1000",
        # Its own cgroup parent: 200 sandboxes coming and going under the tests' shared one
        # would show up in the host checks of local-sandbox tests running at the same time.
        SANDBOX_LOCAL_CGROUP=BURST_CGROUP,
        SANDBOX_LOCAL_DISK_MB="64",
        SANDBOX_LOCAL_MEMORY_MB="256",
    )
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    stack = StackProcess(env)
    try:
        deadline = time.monotonic() + 90
        while "Airlock is running." not in stack.log():
            assert time.monotonic() < deadline, "the stack did not start:\n" + stack.log()
            assert stack.process.poll() is None, stack.log()
            time.sleep(0.2)
        yield stack, var, f"http://127.0.0.1:{port}"
    finally:
        stack.stop()
        shutil.rmtree(var, ignore_errors=True)


def test_a_burst_of_runs_all_end_and_no_process_dies(
    embedded_stack: tuple[StackProcess, Path, str],
) -> None:
    stack, var, base_url = embedded_stack
    credentials = json.loads((var / "demo_credentials.json").read_text())
    headers = {"Authorization": f"Bearer {credentials['api_key']}"}
    runs_url = f"{base_url}/api/v1/workspaces/{credentials['workspace_id']}/runs/"
    # The banner is printed once, whole and unprefixed, and kept in var/demo.txt.
    banner = (var / "demo.txt").read_text()
    assert credentials["api_key"] in banner and f"curl -s -X POST {runs_url}" in banner
    assert stack.log().count("Airlock is running.") == 1
    assert "\n  API key:      " + credentials["api_key"] in stack.log()

    with httpx.Client(headers=headers, timeout=60) as client:

        def post(n: int) -> str:
            body = {"thread_id": f"burst-{n}", "prompt": "p", "command": f"echo run {n}"}
            response = client.post(runs_url, json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        with ThreadPoolExecutor(AT_A_TIME) as pool:
            run_ids: list[str] = []
            for start in range(0, RUNS, AT_A_TIME):  # 20 at once, the next 20 when they answer
                run_ids += pool.map(post, range(start, start + AT_A_TIME))

        statuses: dict[str, str] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for run_id in run_ids:
                if statuses.get(run_id) not in FINAL:
                    statuses[run_id] = client.get(f"{base_url}/api/v1/runs/{run_id}/").json()[
                        "status"
                    ]
            if all(status in FINAL for status in statuses.values()):
                break
            time.sleep(1)

    assert len(set(run_ids)) == RUNS
    assert {status for status in statuses.values()} == {"succeeded"}, stack.log()[-5000:]
    assert "exited with code" not in stack.log(), stack.log()[-5000:]  # nothing died
    assert "Unrecoverable error" not in stack.log()
    assert not (var / "celery" / "bad").exists()
    assert stack.process.poll() is None
    tables = host_tables(var / "sandboxes")
    assert (tables.mounts, tables.loops) == (frozenset(), frozenset())  # every sandbox gone

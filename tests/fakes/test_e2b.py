"""The E2B double itself, through the pinned SDK: it must behave as E2B does where Airlock
depends on it (docs/e2b.md names the sources of each behaviour)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from e2b import (
    CommandExitException,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    TemplateException,
    TimeoutException,
)

from tests.fakes.e2b import ENVD_VERSION, FAKE_API_KEY, FakeE2BServer

TAGS = {"app": "airlock", "env": "test"}


def opts(server: FakeE2BServer, **overrides: Any) -> dict[str, Any]:
    return {
        "api_key": FAKE_API_KEY,
        "api_url": server.api_url,
        "sandbox_url": server.sandbox_url,
        "domain": "e2b.app",
        "debug": False,
        "request_timeout": 10,
        **overrides,
    }


@pytest.fixture
def sandbox(e2b_server: FakeE2BServer) -> Sandbox:
    return Sandbox.create(template="base", timeout=120, metadata=TAGS, **opts(e2b_server))


def home(server: FakeE2BServer, sandbox: Sandbox) -> Path:
    return server.state.sandboxes[sandbox.sandbox_id].home


def pid_is_running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def read_pids(path: Path) -> list[int]:
    assert wait_until(lambda: path.exists() and len(path.read_text().split()) == 2)
    return [int(p) for p in path.read_text().split()]


# -- commands: envd's stream, signals and deadline --------------------------------------------


def test_a_command_ends_when_its_pipes_close_not_when_its_process_exits(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    root = home(e2b_server, sandbox)
    handle = sandbox.commands.run(
        "echo $$ > pids; (while [ ! -e go ]; do sleep 0.02; done) & echo $! >> pids; echo out",
        background=True,
        timeout=30,
    )
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(handle.wait()))
    waiter.start()
    main, child = read_pids(root / "pids")

    assert wait_until(lambda: not pid_is_running(main))  # the command's own process is done
    waiter.join(timeout=0.5)
    assert waiter.is_alive()  # …and the child holding stdout keeps the stream open
    (root / "go").touch()
    waiter.join(timeout=5)

    assert [r.stdout for r in results] == ["out\n"]
    assert not pid_is_running(child)


def test_the_deadline_ends_the_stream_as_a_timeout_and_kills_the_main_process_only(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    root = home(e2b_server, sandbox)

    with pytest.raises(TimeoutException):
        sandbox.commands.run("echo $$ > pids; sleep 30 & echo $! >> pids; wait", timeout=1)

    main, child = read_pids(root / "pids")
    assert wait_until(lambda: not pid_is_running(main))
    assert pid_is_running(child)  # envd signals one pid: no process group


def test_the_deadline_can_reach_the_client_as_an_end_event_with_exit_minus_one(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    e2b_server.state.deadline_sends_end_event = True

    with pytest.raises(CommandExitException) as excinfo:
        sandbox.commands.run("sleep 30", timeout=1)

    assert excinfo.value.exit_code == -1
    assert excinfo.value.error == "signal: killed"


def test_send_signal_reaches_the_main_process_only_and_ends_the_stream(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    root = home(e2b_server, sandbox)
    handle = sandbox.commands.run(
        "echo $$ > pids; sleep 30 & echo $! >> pids; wait", background=True, timeout=30
    )
    main, child = read_pids(root / "pids")

    assert handle.kill() is True
    with pytest.raises(CommandExitException) as excinfo:
        handle.wait()  # ends although the child still holds the pipes (envd's outCancel)

    assert excinfo.value.exit_code == -1
    assert not pid_is_running(main)
    assert pid_is_running(child)
    assert sandbox.commands.kill(handle.pid) is False  # envd forgot the ended process


def test_a_client_going_away_leaves_the_command_running(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    root = home(e2b_server, sandbox)
    handle = sandbox.commands.run(
        "echo $$ > pid; while [ ! -e go ]; do sleep 0.02; done; echo done > out",
        background=True,
        timeout=30,
    )
    assert wait_until(lambda: (root / "pid").exists())
    handle.disconnect()

    assert [p.pid for p in sandbox.commands.list()] == [handle.pid]
    (root / "go").touch()
    assert wait_until(lambda: (root / "out").exists())


def test_connect_attaches_to_a_running_command(e2b_server: FakeE2BServer, sandbox: Sandbox) -> None:
    root = home(e2b_server, sandbox)
    started = sandbox.commands.run(
        "while [ ! -e go ]; do sleep 0.02; done; echo late", background=True, timeout=30
    )
    started.disconnect()

    attached = sandbox.commands.connect(started.pid, timeout=30)
    (root / "go").touch()

    assert attached.wait().stdout == "late\n"


def test_stdin_can_be_written_and_closed(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat", background=True, stdin=True, timeout=30)

    handle.send_stdin("hello\n")
    handle.close_stdin()

    assert handle.wait().stdout == "hello\n"


def test_a_sandbox_killed_mid_command_cuts_the_stream(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    handle = sandbox.commands.run("sleep 30", background=True, timeout=30)

    sandbox.kill()

    with pytest.raises(SandboxNotRunningException):
        handle.wait()


# -- the control plane -------------------------------------------------------------------------


def test_create_answers_the_sandbox_with_its_domain_and_envd_version(
    e2b_server: FakeE2BServer,
) -> None:
    answer = httpx.post(
        f"{e2b_server.api_url}/v2/sandboxes",
        headers={"X-API-KEY": FAKE_API_KEY},
        json={"templateID": "base", "timeout": 60},
    )

    assert answer.status_code == 201
    body = answer.json()
    assert body["domain"] == e2b_server.sandbox_domain
    assert body["envdVersion"] == ENVD_VERSION
    assert body["envdAccessToken"]


@pytest.mark.parametrize(("route", "default_s"), [("/sandboxes", 15), ("/v2/sandboxes", 300)])
def test_create_without_a_timeout_takes_the_spec_default(
    e2b_server: FakeE2BServer, route: str, default_s: int
) -> None:
    answer = httpx.post(
        f"{e2b_server.api_url}{route}",
        headers={"X-API-KEY": FAKE_API_KEY},
        json={"templateID": "base"},
    )

    created = e2b_server.state.sandboxes[answer.json()["sandboxID"]]
    assert created.end_at - created.started_at == timedelta(seconds=default_s)


def test_the_api_serves_only_e2b_routes(e2b_server: FakeE2BServer) -> None:
    answer = httpx.get(
        f"{e2b_server.api_url}/v2/sandboxes/i-anything", headers={"X-API-KEY": FAKE_API_KEY}
    )

    assert answer.status_code == 404


def test_listing_is_newest_first_and_honours_order_started_after_and_template(
    e2b_server: FakeE2BServer,
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    state = e2b_server.state
    oldest = state.add_sandbox(metadata=TAGS, started_at=t0).sandbox_id
    middle = state.add_sandbox(metadata=TAGS, started_at=t0 + timedelta(minutes=1)).sandbox_id
    newest = state.add_sandbox(
        metadata=TAGS, started_at=t0 + timedelta(minutes=2), template_id="python"
    ).sandbox_id

    def listed(**query: Any) -> list[str]:
        paginator = Sandbox.list(**query, **opts(e2b_server))
        return [info.sandbox_id for info in paginator.next_items()]

    assert listed() == [newest, middle, oldest]
    assert listed(order="asc") == [oldest, middle, newest]
    after = SandboxQuery(started_after=t0 + timedelta(minutes=1))
    assert listed(query=after) == [newest, middle]  # at or after
    assert listed(query=SandboxQuery(template="python")) == [newest]
    assert listed(query=SandboxQuery(template="base"), order="asc") == [oldest, middle]


def test_listing_pages_with_a_next_token_in_either_order(e2b_server: FakeE2BServer) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    seeded = [
        e2b_server.state.add_sandbox(started_at=t0 + timedelta(seconds=i)).sandbox_id
        for i in range(5)
    ]

    orders: list[tuple[Literal["asc", "desc"], list[str]]] = [
        ("desc", seeded[::-1]),
        ("asc", seeded),
    ]
    for order, expected in orders:
        paginator = Sandbox.list(limit=2, order=order, **opts(e2b_server))
        pages = []
        while paginator.has_next:
            pages.append([info.sandbox_id for info in paginator.next_items()])
        assert pages == [expected[0:2], expected[2:4], expected[4:]]


def test_a_token_for_another_order_is_refused(e2b_server: FakeE2BServer) -> None:
    for i in range(3):
        e2b_server.state.add_sandbox(started_at=datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC))
    first = httpx.get(
        f"{e2b_server.api_url}/v2/sandboxes",
        params={"limit": 1},
        headers={"X-API-KEY": FAKE_API_KEY},
    )

    replay = httpx.get(
        f"{e2b_server.api_url}/v2/sandboxes",
        params={"limit": 1, "order": "asc", "nextToken": first.headers["x-next-token"]},
        headers={"X-API-KEY": FAKE_API_KEY},
    )

    assert replay.status_code == 400


def test_network_options_are_recorded_and_reported_back(e2b_server: FakeE2BServer) -> None:
    created = Sandbox.create(
        template="base",
        timeout=60,
        network={"allow_out": ["example.com", "10.0.0.1"], "deny_out": ["0.0.0.0/0"]},
        **opts(e2b_server),
    )
    offline = Sandbox.create(
        template="base", timeout=60, allow_internet_access=False, **opts(e2b_server)
    )

    info = created.get_info()
    assert info.network == {"allow_out": ["example.com", "10.0.0.1"], "deny_out": ["0.0.0.0/0"]}
    assert info.allow_internet_access is None
    assert offline.get_info().allow_internet_access is False
    (request, _) = e2b_server.state.requests_for("POST", "/v2/sandboxes")
    assert request.body["network"] == {
        "allowOut": ["example.com", "10.0.0.1"],
        "denyOut": ["0.0.0.0/0"],
    }


@pytest.mark.parametrize(
    "network",
    [
        pytest.param({"allow_out": ["example.com"]}, id="a-domain-without-deny-all"),
        pytest.param({"deny_out": ["example.com"]}, id="a-denied-domain"),
        pytest.param({"deny_out": ["0.0.0.0"]}, id="the-unspecified-address"),  # noqa: S104
    ],
)
def test_network_options_e2b_rejects_are_a_400(
    e2b_server: FakeE2BServer, network: dict[str, list[str]]
) -> None:
    with pytest.raises(SandboxException) as excinfo:
        Sandbox.create(template="base", timeout=60, network=network, **opts(e2b_server))  # type: ignore[arg-type]

    assert excinfo.value.status_code == 400


# -- pause and resume ---------------------------------------------------------------------------


def test_pause_freezes_the_sandbox_and_connect_resumes_it_with_its_processes(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    root = home(e2b_server, sandbox)
    sandbox.commands.run("sleep 60 >/dev/null 2>&1 & echo $! > child; echo kept > file")
    child = int((root / "child").read_text())

    assert Sandbox.pause(sandbox.sandbox_id, **opts(e2b_server)) is True
    assert Sandbox.pause(sandbox.sandbox_id, **opts(e2b_server)) is False  # 409: already
    info = Sandbox.get_info(sandbox.sandbox_id, **opts(e2b_server))
    assert info.state == SandboxState.PAUSED
    assert Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    with pytest.raises(SandboxNotRunningException):
        sandbox.commands.run("true")  # the proxy knows no running sandbox by that id
    listed = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED]), **opts(e2b_server))
    assert [s.sandbox_id for s in listed.next_items()] == [sandbox.sandbox_id]

    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=60, **opts(e2b_server))

    result = resumed.commands.run(f"kill -0 {child} && cat file")
    assert result.stdout == "kept\n"
    assert Sandbox.get_info(sandbox.sandbox_id, **opts(e2b_server)).state == SandboxState.RUNNING


def test_a_paused_sandbox_outlives_its_deadline_and_has_no_timeout_to_set(
    e2b_server: FakeE2BServer,
) -> None:
    created = Sandbox.create(template="base", timeout=1, **opts(e2b_server))
    Sandbox.pause(created.sandbox_id, **opts(e2b_server))
    time.sleep(1.2)

    assert e2b_server.state.find(created.sandbox_id) is not None
    with pytest.raises(SandboxException):
        Sandbox.set_timeout(created.sandbox_id, 60, **opts(e2b_server))  # 404 while paused
    assert Sandbox.kill(created.sandbox_id, **opts(e2b_server)) is True


def test_the_resume_route_refuses_a_running_sandbox(
    e2b_server: FakeE2BServer, sandbox: Sandbox
) -> None:
    url = f"{e2b_server.api_url}/sandboxes/{sandbox.sandbox_id}"
    headers = {"X-API-KEY": FAKE_API_KEY}

    assert httpx.post(f"{url}/resume", headers=headers, json={}).status_code == 409
    assert httpx.post(f"{url}/pause", headers=headers).status_code == 204
    assert httpx.post(f"{url}/resume", headers=headers, json={}).status_code == 201


# -- envd's domain, files, latencies ------------------------------------------------------------


def test_the_sdk_reaches_envd_on_the_per_sandbox_domain(e2b_server: FakeE2BServer) -> None:
    created = Sandbox.create(template="base", timeout=60, **opts(e2b_server, sandbox_url=None))

    assert created.commands.run("echo hi").stdout == "hi\n"
    (start,) = e2b_server.state.requests_for("POST", "/process.Process/Start")
    assert start.host == f"49983-{created.sandbox_id}.{e2b_server.sandbox_domain}"


def test_gzip_uploads_of_envd_0_5_7_are_served(e2b_server: FakeE2BServer, sandbox: Sandbox) -> None:
    sandbox.files.write("/home/user/data.txt", b"compressed " * 1000, gzip=True)

    assert sandbox.files.read("/home/user/data.txt", format="bytes") == b"compressed " * 1000
    (upload,) = e2b_server.state.requests_for("POST", "/files")
    assert upload.headers["content-encoding"] == "gzip"


def test_file_metadata_is_not_offered_by_the_envd_version_reported(sandbox: Sandbox) -> None:
    with pytest.raises(TemplateException):
        sandbox.files.write("/home/user/f", b"x", metadata={"k": "v"})


def test_latencies_are_injected_per_operation(e2b_server: FakeE2BServer) -> None:
    e2b_server.state.latencies.create = (0.2, 0.3)
    started = time.monotonic()

    Sandbox.create(template="base", timeout=60, **opts(e2b_server))

    assert time.monotonic() - started >= 0.2


# -- running on its own -------------------------------------------------------------------------


def test_it_runs_on_its_own_and_prints_what_to_point_the_sdk_at() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.e2b", "--port", "0", "--latency", "kill=0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        printed = dict(process.stdout.readline().strip().split("=", 1) for _ in range(3))
        answer = httpx.post(
            f"{printed['E2B_API_URL']}/v2/sandboxes",
            headers={"X-API-KEY": printed["E2B_API_KEY"]},
            json={"templateID": "base", "timeout": 30},
        )
        health = httpx.get(
            f"{printed['E2B_SANDBOX_URL']}/health",
            headers={
                "E2b-Sandbox-Id": answer.json()["sandboxID"],
                "E2b-Sandbox-Port": "49983",
                "X-Access-Token": answer.json()["envdAccessToken"],
            },
        )
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)

    assert answer.status_code == 201
    assert health.status_code == 204
    assert code == 0

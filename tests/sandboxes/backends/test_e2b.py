"""The e2b backend, through the real SDK, against the local E2B double (tests/fakes)."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxes.backends.base import (
    BackendError,
    CommandTimeout,
    FileEntry,
    SandboxFileNotFound,
    SandboxNotFound,
    TransientBackendError,
)
from sandboxes.backends.e2b import E2BBackend
from tests.fakes.e2b import FAKE_API_KEY, FakeE2BServer, FakeSandbox

TAGS = {"app": "airlock", "env": "test", "run_id": "run-1", "workspace_id": "ws-1"}
ONE_SANDBOX = r"/sandboxes/[^/]+"


@pytest.fixture
def sandbox_id(e2b_backend: E2BBackend) -> str:
    return e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=120).sandbox_id


def fake(server: FakeE2BServer, sandbox_id: str) -> FakeSandbox:
    return server.state.sandboxes[sandbox_id]


def backend_for(server: FakeE2BServer, **overrides: Any) -> E2BBackend:
    config: dict[str, Any] = {
        "api_key": FAKE_API_KEY,
        "api_url": server.api_url,
        "sandbox_url": server.sandbox_url,
        "template": "base",
        "request_timeout_s": 10,
    }
    return E2BBackend(**{**config, **overrides})


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def pid_is_running(pid: int) -> bool:
    """A zombie counts as dead: it waits to be reaped by whoever inherited it."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- create ----------------------------------------------------------------------------------


def test_create_tags_the_sandbox_and_reports_its_size_and_deadline(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    before = datetime.now(UTC)
    info = e2b_backend.create(template="base", metadata=TAGS, envs={"A": "1"}, timeout_s=120)

    (create,) = e2b_server.state.requests_for("POST", r"/(v2/)?sandboxes")
    assert create.body["templateID"] == "base"
    assert create.body["metadata"] == TAGS
    assert create.body["envVars"] == {"A": "1"}
    assert create.body["timeout"] == 120
    assert fake(e2b_server, info.sandbox_id).metadata == TAGS
    assert info.metadata == TAGS
    assert (info.cpu_count, info.memory_mb) == (2, 512)
    assert info.started_at is not None
    assert info.end_at is not None
    assert before - timedelta(seconds=1) <= info.started_at <= datetime.now(UTC)
    assert info.end_at - info.started_at == timedelta(seconds=120)


def test_create_uses_its_configuration_and_never_the_process_environment(
    e2b_server: FakeE2BServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b_wrong")
    monkeypatch.setenv("E2B_API_URL", closed_port_url())
    monkeypatch.setenv("E2B_SANDBOX_URL", closed_port_url())
    monkeypatch.setenv("E2B_DOMAIN", "example.invalid")
    monkeypatch.setenv("E2B_DEBUG", "true")  # would make the SDK skip create and kill
    backend = backend_for(e2b_server)

    info = backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60)
    result = backend.run(info.sandbox_id, "echo ok", timeout_s=10)

    assert result.stdout == "ok\n"
    assert backend.kill(info.sandbox_id) is True
    assert not fake(e2b_server, info.sandbox_id).alive


def test_create_with_an_unknown_template_is_a_permanent_error(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    e2b_server.state.known_templates = {"base"}

    with pytest.raises(BackendError, match="nope") as excinfo:
        e2b_backend.create(template="nope", metadata=TAGS, envs={}, timeout_s=60)

    assert type(excinfo.value) is BackendError  # neither transient nor "sandbox not found"


def test_create_kills_the_new_sandbox_when_its_info_cannot_be_read(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    e2b_server.state.fail_next(500, method="GET", path=ONE_SANDBOX)

    with pytest.raises(TransientBackendError):
        e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60)

    (created,) = e2b_server.state.sandboxes.values()
    assert not created.alive
    assert e2b_server.state.requests_for("DELETE", ONE_SANDBOX)


# -- run -------------------------------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_code(e2b_backend: E2BBackend, sandbox_id: str) -> None:
    result = e2b_backend.run(sandbox_id, "echo out; echo err >&2", timeout_s=10)

    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert result.truncated is False


def test_run_reports_a_non_zero_exit_as_a_result(e2b_backend: E2BBackend, sandbox_id: str) -> None:
    result = e2b_backend.run(sandbox_id, "echo partial; exit 3", timeout_s=10)

    assert (result.exit_code, result.stdout) == (3, "partial\n")


def test_run_starts_in_the_home_with_the_sandbox_and_command_envs(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    info = e2b_backend.create(
        template="base", metadata=TAGS, envs={"FROM_SANDBOX": "s"}, timeout_s=60
    )

    result = e2b_backend.run(
        info.sandbox_id,
        'pwd; echo "$FROM_SANDBOX $FROM_COMMAND"',
        timeout_s=10,
        envs={"FROM_COMMAND": "c"},
    )

    assert result.stdout == "/home/user\ns c\n"
    (start,) = e2b_server.state.requests_for("POST", "/process.Process/Start")
    assert start.sandbox_id == info.sandbox_id


def test_run_honours_cwd_inside_the_home(e2b_backend: E2BBackend, sandbox_id: str) -> None:
    e2b_backend.run(
        sandbox_id, "mkdir -p /home/user/work && echo hi > /home/user/work/f", timeout_s=10
    )

    result = e2b_backend.run(sandbox_id, "pwd; cat f", timeout_s=10, cwd="/home/user/work")

    assert result.stdout == "/home/user/work\nhi\n"


def test_run_streams_output_to_the_callback_while_the_command_runs(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    home = fake(e2b_server, sandbox_id).home
    chunks: list[tuple[str, str]] = []

    def on_output(stream: str, text: str) -> None:
        chunks.append((stream, text))
        if "first" in text:
            (home / "go").touch()  # the command waits for this: it must still be running

    result = e2b_backend.run(
        sandbox_id,
        "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second >&2",
        timeout_s=10,
        on_output=on_output,
    )

    assert result.exit_code == 0
    assert chunks == [("stdout", "first\n"), ("stderr", "second\n")]


def test_run_past_its_timeout_raises_command_timeout_and_kills_everything_it_started(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    home = fake(e2b_server, sandbox_id).home
    started = time.monotonic()

    with pytest.raises(CommandTimeout) as excinfo:
        e2b_backend.run(
            sandbox_id,
            "echo $$ > pids; (sleep 30; touch survived) & echo $! >> pids; echo started; wait",
            timeout_s=1,
        )

    assert 1 <= time.monotonic() - started < 5
    assert excinfo.value.stdout == "started\n"
    pids = [int(line) for line in (home / "pids").read_text().split()]
    assert len(pids) == 2
    assert wait_until(lambda: not any(pid_is_running(pid) for pid in pids))
    assert not (home / "survived").exists()


def test_run_bounds_stored_output_but_streams_all_of_it(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    streamed: list[str] = []

    result = e2b_backend.run(
        sandbox_id,
        "head -c 5000 /dev/zero | tr '\\0' a; echo é >&2",
        timeout_s=10,
        max_output_bytes=1000,
        on_output=lambda stream, text: streamed.append(text) if stream == "stdout" else None,
    )

    assert result.stdout == "a" * 1000
    assert result.stderr == "é\n"
    assert result.truncated is True
    assert "".join(streamed) == "a" * 5000


def test_run_cuts_truncated_output_on_a_character_boundary(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    result = e2b_backend.run(sandbox_id, "printf 'ééé'", timeout_s=10, max_output_bytes=5)

    assert (result.stdout, result.truncated) == ("éé", True)


def test_run_measures_the_duration(e2b_backend: E2BBackend, sandbox_id: str) -> None:
    result = e2b_backend.run(sandbox_id, "sleep 0.3", timeout_s=10)

    assert 300 <= result.duration_ms < 3000


def test_run_in_a_sandbox_killed_mid_command_raises_sandbox_not_found(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    def kill_on_ready(stream: str, text: str) -> None:
        if "ready" in text:
            e2b_backend.kill(sandbox_id)

    with pytest.raises(SandboxNotFound):
        e2b_backend.run(sandbox_id, "echo ready; sleep 10", timeout_s=10, on_output=kill_on_ready)


def test_run_does_not_extend_the_sandbox_deadline(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    info = e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=30)

    e2b_backend.run(info.sandbox_id, "true", timeout_s=10)

    # Connecting without a timeout would push a running sandbox to E2B's default 300 s.
    assert fake(e2b_server, info.sandbox_id).end_at == info.end_at


# -- files -----------------------------------------------------------------------------------


def test_write_then_read_bytes_round_trips_every_byte_value(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    data = bytes(range(256)) * 4

    e2b_backend.write_file(sandbox_id, "/home/user/out/data.bin", data)

    assert (fake(e2b_server, sandbox_id).home / "out" / "data.bin").read_bytes() == data
    assert b"".join(e2b_backend.read_file(sandbox_id, "/home/user/out/data.bin")) == data


def test_write_file_streams_a_file_object(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    data = b"x" * 300_000

    e2b_backend.write_file(sandbox_id, "/home/user/big/upload.bin", io.BytesIO(data))

    (upload,) = e2b_server.state.requests_for("POST", "/files")
    assert upload.headers["content-type"] == "application/octet-stream"
    assert (fake(e2b_server, sandbox_id).home / "big" / "upload.bin").read_bytes() == data


def test_read_file_streams_in_chunks_of_at_most_chunk_size(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    data = bytes(range(256)) * 1000
    (fake(e2b_server, sandbox_id).home / "big.bin").write_bytes(data)

    chunks = list(e2b_backend.read_file(sandbox_id, "/home/user/big.bin", chunk_size=10_000))

    assert b"".join(chunks) == data
    assert len(chunks) > 1
    assert max(len(chunk) for chunk in chunks) <= 10_000


def test_read_file_of_a_missing_path_raises_before_the_first_chunk(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    with pytest.raises(SandboxFileNotFound):
        e2b_backend.read_file(sandbox_id, "/home/user/missing.txt")  # not even iterated


def test_list_files_returns_the_direct_children(e2b_backend: E2BBackend, sandbox_id: str) -> None:
    e2b_backend.run(
        sandbox_id,
        "mkdir -p d/inner && printf abc > d/f.txt && ln -s f.txt d/link && touch d/inner/deep",
        timeout_s=10,
    )

    entries = e2b_backend.list_files(sandbox_id, "/home/user/d")

    listed = sorted(entries, key=lambda e: e.name)
    # Permission bits as envd reports them (the review signals ask whether a script is
    # executable); the rest as before.
    assert [replace(entry, mode=None) for entry in listed] == [
        FileEntry(name="f.txt", path="/home/user/d/f.txt", type="file", size=3),
        FileEntry(name="inner", path="/home/user/d/inner", type="dir", size=None),
        FileEntry(name="link", path="/home/user/d/link", type="symlink", size=None),
    ]
    assert listed[0].mode == 0o644


def test_list_files_of_a_missing_directory_raises_file_not_found(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    with pytest.raises(SandboxFileNotFound):
        e2b_backend.list_files(sandbox_id, "/home/user/nowhere")


# -- listing, deadlines, kill ----------------------------------------------------------------


def test_list_sandboxes_returns_only_those_with_every_given_tag(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    mine = e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60)
    e2b_backend.create(template="base", metadata={**TAGS, "env": "prod"}, envs={}, timeout_s=60)
    e2b_server.state.add_sandbox(metadata={"app": "someone-else"})

    listed = e2b_backend.list_sandboxes({"app": "airlock", "env": "test"})

    assert [s.sandbox_id for s in listed] == [mine.sandbox_id]
    assert listed[0].metadata == TAGS
    assert (listed[0].cpu_count, listed[0].memory_mb) == (2, 512)
    assert listed[0].end_at == mine.end_at


def test_list_sandboxes_follows_the_next_token_across_pages(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    seeded = {e2b_server.state.add_sandbox(metadata=TAGS).sandbox_id for _ in range(230)}
    e2b_server.state.add_sandbox(metadata={"app": "other"})

    listed = e2b_backend.list_sandboxes({"app": "airlock"})

    assert [s.sandbox_id for s in listed if s.sandbox_id in seeded] == [
        s.sandbox_id for s in listed
    ]
    assert {s.sandbox_id for s in listed} == seeded
    assert len(listed) == 230
    pages = e2b_server.state.requests_for("GET", r"/(v2/)?sandboxes")
    assert len(pages) == 3
    assert "nextToken" not in pages[0].query
    assert all("nextToken" in page.query for page in pages[1:])


def test_a_sandbox_past_its_provider_deadline_is_gone(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_server.state.expire(sandbox_id)

    assert e2b_backend.list_sandboxes({"app": "airlock"}) == []
    with pytest.raises(SandboxNotFound):
        e2b_backend.get_info(sandbox_id)
    assert e2b_backend.kill(sandbox_id) is False


def test_a_sandbox_dies_with_its_commands_when_its_timeout_passes(
    e2b_backend: E2BBackend,
) -> None:
    info = e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=1)
    printed: list[str] = []
    started = time.monotonic()

    with pytest.raises(SandboxNotFound):
        e2b_backend.run(
            info.sandbox_id,
            "echo $$; sleep 30",
            timeout_s=30,
            on_output=lambda stream, text: printed.append(text),
        )

    assert time.monotonic() - started < 5
    pid = int("".join(printed))
    assert wait_until(lambda: not pid_is_running(pid))
    assert e2b_backend.list_sandboxes({"app": "airlock"}) == []


def test_set_timeout_moves_the_deadline_both_ways(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_backend.set_timeout(sandbox_id, 600)
    extended = e2b_backend.get_info(sandbox_id).end_at
    e2b_backend.set_timeout(sandbox_id, 30)
    shortened = e2b_backend.get_info(sandbox_id).end_at

    assert extended is not None
    assert shortened is not None
    now = datetime.now(UTC)
    assert timedelta(seconds=595) < extended - now <= timedelta(seconds=600)
    assert timedelta(seconds=25) < shortened - now <= timedelta(seconds=30)
    assert fake(e2b_server, sandbox_id).end_at == shortened


def test_kill_stops_the_sandbox_and_returns_true(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    assert e2b_backend.kill(sandbox_id) is True

    assert not fake(e2b_server, sandbox_id).alive
    assert e2b_backend.list_sandboxes({"app": "airlock"}) == []


def test_kill_of_a_gone_sandbox_returns_false(e2b_backend: E2BBackend, sandbox_id: str) -> None:
    e2b_backend.kill(sandbox_id)

    assert e2b_backend.kill(sandbox_id) is False
    assert e2b_backend.kill("i-never-existed") is False


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda b, sid: b.get_info(sid), id="get_info"),
        pytest.param(lambda b, sid: b.set_timeout(sid, 60), id="set_timeout"),
        pytest.param(lambda b, sid: b.run(sid, "true", timeout_s=5), id="run"),
        pytest.param(lambda b, sid: b.write_file(sid, "/home/user/f", b"x"), id="write_file"),
        pytest.param(lambda b, sid: b.read_file(sid, "/home/user/f"), id="read_file"),
        pytest.param(lambda b, sid: b.list_files(sid, "/home/user"), id="list_files"),
    ],
)
def test_every_sandbox_method_raises_sandbox_not_found_for_a_gone_sandbox(
    e2b_backend: E2BBackend, sandbox_id: str, call: Callable[[E2BBackend, str], object]
) -> None:
    e2b_backend.kill(sandbox_id)

    with pytest.raises(SandboxNotFound):
        call(e2b_backend, sandbox_id)
    with pytest.raises(SandboxNotFound):
        call(e2b_backend, "i-never-existed")


# -- failures --------------------------------------------------------------------------------


def test_a_wrong_api_key_is_a_permanent_error_that_names_the_key(
    e2b_server: FakeE2BServer,
) -> None:
    backend = backend_for(e2b_server, api_key="e2b_wrong")

    with pytest.raises(BackendError, match="E2B_API_KEY") as excinfo:
        backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60)

    assert not isinstance(excinfo.value, TransientBackendError)
    assert e2b_server.state.sandboxes == {}


def test_a_missing_api_key_fails_before_any_request(e2b_server: FakeE2BServer) -> None:
    backend = backend_for(e2b_server, api_key="")

    with pytest.raises(BackendError, match="E2B_API_KEY is not set"):
        backend.list_sandboxes({"app": "airlock"})

    assert e2b_server.state.requests == []


def test_rate_limiting_the_sdk_retries_away_is_invisible(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer
) -> None:
    e2b_server.state.fail_next(429, times=2)

    assert e2b_backend.list_sandboxes({"app": "airlock"}) == []
    assert len(e2b_server.state.requests_for("GET", r"/(v2/)?sandboxes")) == 3


@pytest.mark.parametrize(
    ("status", "times"),
    [
        pytest.param(429, 4, id="rate-limited-past-the-sdk-retries"),
        pytest.param(500, 1, id="internal-error"),
        pytest.param(502, 4, id="bad-gateway-past-the-sdk-retries"),
        pytest.param(503, 4, id="busy-past-the-sdk-retries"),
    ],
)
def test_rate_limits_and_server_errors_are_transient(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, status: int, times: int
) -> None:
    e2b_server.state.fail_next(status, times=times)

    with pytest.raises(TransientBackendError):
        e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60)

    assert e2b_server.state.pending_faults == 0
    assert len(e2b_server.state.requests) == times
    assert e2b_server.state.sandboxes == {}


def test_a_server_error_while_killing_is_transient(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_server.state.fail_next(500, method="DELETE", path=ONE_SANDBOX)

    with pytest.raises(TransientBackendError):
        e2b_backend.kill(sandbox_id)

    assert fake(e2b_server, sandbox_id).alive


def test_a_refused_connection_is_transient(e2b_server: FakeE2BServer) -> None:
    backend = backend_for(e2b_server, api_url=closed_port_url())

    with pytest.raises(TransientBackendError, match="could not reach E2B"):
        backend.get_info("i-anything")


def test_an_unreachable_envd_is_transient(e2b_server: FakeE2BServer, sandbox_id: str) -> None:
    backend = backend_for(e2b_server, sandbox_url=closed_port_url())

    with pytest.raises(TransientBackendError):
        backend.run(sandbox_id, "true", timeout_s=5)


# -- check -----------------------------------------------------------------------------------


def test_check_summarises_a_working_configuration(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    summary = e2b_backend.check()

    assert e2b_server.api_url in summary
    assert "live sandboxes: 1;" in summary


def test_check_without_a_key_says_to_set_it(e2b_server: FakeE2BServer) -> None:
    with pytest.raises(BackendError, match="E2B_API_KEY is not set"):
        backend_for(e2b_server, api_key="").check()


def test_check_with_a_wrong_key_says_the_key_is_wrong(e2b_server: FakeE2BServer) -> None:
    with pytest.raises(BackendError, match="E2B_API_KEY is wrong"):
        backend_for(e2b_server, api_key="e2b_wrong").check()


def test_check_of_an_unreachable_api_names_the_url(e2b_server: FakeE2BServer) -> None:
    url = closed_port_url()

    with pytest.raises(TransientBackendError, match="E2B_API_URL") as excinfo:
        backend_for(e2b_server, api_url=url).check()

    assert url in str(excinfo.value)


# -- configuration ---------------------------------------------------------------------------


def test_from_settings_reads_the_e2b_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "django.conf.settings",
        SimpleNamespace(
            E2B_API_KEY="e2b_k",
            E2B_API_URL="http://api.local",
            E2B_SANDBOX_URL="http://envd.local",
            E2B_TEMPLATE="python",
            E2B_REQUEST_TIMEOUT_S=7,
        ),
    )

    backend = E2BBackend.from_settings()

    assert (backend.api_key, backend.api_url, backend.sandbox_url) == (
        "e2b_k",
        "http://api.local",
        "http://envd.local",
    )
    assert (backend.template, backend.request_timeout_s) == ("python", 7.0)


def test_from_settings_defaults_to_e2b_cloud_before_the_settings_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("django.conf.settings", SimpleNamespace())

    backend = E2BBackend.from_settings()

    assert backend.api_key == ""
    # No fixed sandbox URL: each sandbox is reached on the domain E2B answers for it.
    assert (backend.api_url, backend.sandbox_url, backend.domain) == (
        "https://api.e2b.app",
        None,
        "e2b.app",
    )
    assert (backend.template, backend.request_timeout_s) == ("base", 30.0)
    with pytest.raises(BackendError, match="E2B_API_KEY is not set"):
        backend.check()


def test_from_settings_honours_a_settings_override() -> None:
    from django.conf import settings

    if not settings.configured:
        pytest.skip("Django settings are not configured")
    from django.test import override_settings

    with override_settings(E2B_API_KEY="e2b_override", E2B_TEMPLATE="custom"):
        backend = E2BBackend.from_settings()

    assert (backend.api_key, backend.template) == ("e2b_override", "custom")

"""The e2b backend's pause/resume, network policy and listing against the E2B double (SPEC §15):
what goes to E2B through the pinned SDK's own options, and what comes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandboxes.backends.base import (
    NetworkPolicy,
    SandboxNotFound,
    SandboxPaused,
    UnsupportedOption,
)
from sandboxes.backends.e2b import E2BBackend
from tests.fakes.e2b import FakeE2BServer
from tests.sandboxes.backends.test_e2b import TAGS, fake, pid_is_running

CREATE = r"/v2/sandboxes"


@pytest.fixture
def sandbox_id(e2b_backend: E2BBackend) -> str:
    return e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=120).sandbox_id


# -- pause and resume --------------------------------------------------------------------------


def test_pause_then_resume_keeps_the_processes_and_the_files(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_backend.run(sandbox_id, "sleep 60 & echo $! > child; echo kept > file", timeout_s=10)
    child = int((fake(e2b_server, sandbox_id).home / "child").read_text())

    e2b_backend.pause(sandbox_id)
    assert fake(e2b_server, sandbox_id).state == "paused"
    e2b_backend.resume(sandbox_id, timeout_s=90)

    result = e2b_backend.run(sandbox_id, 'kill -0 "$(cat child)" && cat file', timeout_s=10)
    assert result.stdout == "kept\n"
    assert pid_is_running(child)
    end_at = e2b_backend.get_info(sandbox_id).end_at
    assert end_at is not None
    assert timedelta(seconds=85) < end_at - datetime.now(UTC) <= timedelta(seconds=90)
    (resume,) = e2b_server.state.requests_for("POST", r"/v2/sandboxes/[^/]+/connect")
    assert resume.body == {"timeout": 90}


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda b, sid: b.run(sid, "true", timeout_s=5), id="run"),
        pytest.param(lambda b, sid: b.start_command(sid, "true"), id="start_command"),
        pytest.param(lambda b, sid: b.write_file(sid, "/home/user/f", b"x"), id="write_file"),
        pytest.param(lambda b, sid: b.read_file(sid, "/home/user/f"), id="read_file"),
        pytest.param(lambda b, sid: b.list_files(sid, "/home/user"), id="list_files"),
        pytest.param(lambda b, sid: b.set_timeout(sid, 60), id="set_timeout"),
    ],
)
def test_a_paused_sandbox_is_reported_paused_and_never_resumed_behind_the_callers_back(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str, call: object
) -> None:
    e2b_backend.pause(sandbox_id)

    with pytest.raises(SandboxPaused):
        call(e2b_backend, sandbox_id)  # type: ignore[operator]

    assert fake(e2b_server, sandbox_id).state == "paused"
    assert e2b_server.state.requests_for("POST", r"/(v2/)?sandboxes/[^/]+/(connect|resume)") == []


def test_a_sandbox_paused_during_a_command_raises_sandbox_paused(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    def pause_on_ready(stream: str, text: str) -> None:
        if "ready" in text:
            e2b_backend.pause(sandbox_id)

    with pytest.raises(SandboxPaused):
        e2b_backend.run(sandbox_id, "echo ready; sleep 30", timeout_s=30, on_output=pause_on_ready)

    assert fake(e2b_server, sandbox_id).state == "paused"  # kept, with its processes


def test_a_paused_sandbox_is_listed_and_has_no_provider_deadline(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    e2b_backend.pause(sandbox_id)

    (listed,) = e2b_backend.list_sandboxes({"app": "airlock"})
    info = e2b_backend.get_info(sandbox_id)

    assert listed.sandbox_id == sandbox_id
    assert (listed.end_at, info.end_at) == (None, None)  # E2B keeps it until it is killed


def test_pausing_twice_and_resuming_a_running_sandbox_change_nothing(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    end_at = e2b_backend.get_info(sandbox_id).end_at

    e2b_backend.resume(sandbox_id, timeout_s=600)  # running: left alone
    e2b_backend.pause(sandbox_id)
    e2b_backend.pause(sandbox_id)  # E2B's 409: already paused

    assert e2b_server.state.requests_for("POST", r"/v2/sandboxes/[^/]+/connect") == []
    assert fake(e2b_server, sandbox_id).end_at == end_at
    assert fake(e2b_server, sandbox_id).state == "paused"


def test_pause_and_resume_of_a_gone_sandbox_raise_sandbox_not_found(
    e2b_backend: E2BBackend, sandbox_id: str
) -> None:
    e2b_backend.kill(sandbox_id)

    assert e2b_backend.supports_pause is True
    with pytest.raises(SandboxNotFound):
        e2b_backend.pause(sandbox_id)
    with pytest.raises(SandboxNotFound):
        e2b_backend.resume(sandbox_id, timeout_s=60)


def test_a_paused_sandbox_can_be_killed(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, sandbox_id: str
) -> None:
    e2b_backend.pause(sandbox_id)

    assert e2b_backend.kill(sandbox_id) is True
    assert not fake(e2b_server, sandbox_id).alive


# -- network -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "sent"),
    [
        pytest.param(None, {"allow_internet_access": False}, id="default-offline"),
        pytest.param(NetworkPolicy(), {"allow_internet_access": False}, id="offline"),
        pytest.param(NetworkPolicy(internet=True), {"allow_internet_access": True}, id="internet"),
        pytest.param(
            NetworkPolicy(allow_out=("pypi.org", "*.pythonhosted.org", "10.1.0.0/16")),
            {
                "network": {
                    "allowOut": ["pypi.org", "*.pythonhosted.org", "10.1.0.0/16"],
                    "denyOut": ["0.0.0.0/0"],
                }
            },
            id="only-some-destinations",
        ),
        pytest.param(
            NetworkPolicy(internet=True, deny_out=("169.254.169.254/32",), allow_out=("1.1.1.1",)),
            {
                "allow_internet_access": True,
                "network": {"allowOut": ["1.1.1.1"], "denyOut": ["169.254.169.254/32"]},
            },
            id="internet-but-some",
        ),
    ],
)
def test_the_network_policy_reaches_the_create_request_as_the_sdks_own_options(
    e2b_backend: E2BBackend,
    e2b_server: FakeE2BServer,
    policy: NetworkPolicy | None,
    sent: dict[str, object],
) -> None:
    info = e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60, network=policy)

    (create,) = e2b_server.state.requests_for("POST", CREATE)
    network_keys = {"allow_internet_access", "network"}
    assert {k: v for k, v in create.body.items() if k in network_keys} == sent
    created = fake(e2b_server, info.sandbox_id)
    assert created.allow_internet_access == sent.get("allow_internet_access")
    assert created.network == sent.get("network")


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(NetworkPolicy(internet=True, deny_out=("evil.example",)), id="deny-domain"),
        pytest.param(NetworkPolicy(internet=True, allow_out=("pypi.org",)), id="domain-with-net"),
        pytest.param(NetworkPolicy(allow_out=("not a host",)), id="garbage"),
        pytest.param(NetworkPolicy(allow_out=("0.0.0.0",)), id="unspecified"),  # noqa: S104
    ],
)
def test_a_network_policy_e2b_cannot_enforce_is_refused_before_any_request(
    e2b_backend: E2BBackend, e2b_server: FakeE2BServer, policy: NetworkPolicy
) -> None:
    with pytest.raises(UnsupportedOption, match="e2b backend"):
        e2b_backend.check_network(policy)
    with pytest.raises(UnsupportedOption):
        e2b_backend.create(template="base", metadata=TAGS, envs={}, timeout_s=60, network=policy)

    assert e2b_server.state.requests == []


def test_check_network_accepts_what_e2b_enforces(e2b_backend: E2BBackend) -> None:
    for policy in (
        NetworkPolicy(),
        NetworkPolicy(internet=True),
        NetworkPolicy(allow_out=("example.com", "*.example.org", "8.8.8.8", "10.0.0.0/8")),
        NetworkPolicy(internet=True, deny_out=("10.0.0.0/8", "192.168.1.1")),
    ):
        e2b_backend.check_network(policy)


# -- listing -----------------------------------------------------------------------------------


def test_list_sandboxes_is_newest_first(e2b_backend: E2BBackend, e2b_server: FakeE2BServer) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    older = e2b_server.state.add_sandbox(metadata=TAGS, started_at=t0).sandbox_id
    newer = e2b_server.state.add_sandbox(
        metadata=TAGS, started_at=t0 + timedelta(minutes=1)
    ).sandbox_id

    listed = e2b_backend.list_sandboxes({"app": "airlock"})

    assert [info.sandbox_id for info in listed] == [newer, older]

"""sandboxes/api.py: the run and usage routes — the role matrix, real sandboxes behind exec and
files, idempotency and limits as HTTP sees them, bad input. Every response is checked against
the OpenAPI schema by the `api` client."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxes.models import Command, SandboxRun
from tests.conftest import assert_error, client_as, live_backends, table
from tests.factories import make_run, transitions
from tests.sandboxes.fake_backend import start_run
from workspaces.selectors import api_key_find

RUN_BODY = {"thread_id": "t-1", "prompt": "say hi"}


EVERYONE = dict(owner=200, admin=200, member=200, member_key=200, admin_key=200)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**{k: 201 for k in EVERYONE}))
def test_create_run(
    as_caller: Any,
    caller: str,
    status: int,
    workspace: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks() as enqueued:
        response = as_caller(caller).post(
            f"/api/v1/workspaces/{workspace.pk}/runs/", RUN_BODY, format="json"
        )
    assert response.status_code == status
    assert len(enqueued) == (1 if status == 201 else 0)
    if status == 201:
        body = response.json()
        assert body["status"] == "booting"
        assert "env" not in body


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**EVERYONE))
def test_view_run_and_lists(as_caller: Any, caller: str, status: int, workspace: Any) -> None:
    run = make_run(workspace=workspace)
    client = as_caller(caller)
    assert client.get(f"/api/v1/runs/{run.pk}/").status_code == status
    assert client.get(f"/api/v1/workspaces/{workspace.pk}/runs/").status_code == status
    mine = client.get("/api/v1/runs/")
    if caller in ("anonymous", "revoked_key"):
        assert mine.status_code == 401
    else:
        ids = [r["id"] for r in mine.json()["results"]]
        assert ids == ([] if status == 404 else [str(run.pk)])


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**EVERYONE))
def test_exec_in_a_running_sandbox(
    as_caller: Any, caller: str, status: int, sandbox_run: SandboxRun
) -> None:
    response = as_caller(caller).post(
        f"/api/v1/runs/{sandbox_run.pk}/exec/",
        {"command": "echo out; echo err >&2; exit 4", "timeout_s": 10},
        format="json",
    )
    assert response.status_code == status
    if status == 200:
        assert response.json() == {
            "exit_code": 4, "stdout": "out\n", "stderr": "err\n", "truncated": False,
            "timed_out": False, "duration_ms": response.json()["duration_ms"],
            "command_id": str(Command.objects.get(run=sandbox_run).pk),
        }  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["cancel", "complete"])
@pytest.mark.parametrize(
    ("caller", "status"), table(owner=200, admin=200, member=403, member_key=403, admin_key=200)
)
def test_ending_someone_elses_run(
    as_caller: Any, caller: str, status: int, action: str, workspace: Any
) -> None:
    run = make_run(workspace=workspace, status="running")  # started by the owner
    body = {"status": "succeeded"} if action == "complete" else None
    response = as_caller(caller).post(f"/api/v1/runs/{run.pk}/{action}/", body, format="json")
    assert response.status_code == status
    run.refresh_from_db()
    assert (run.status == "running") == (status != 200)


@pytest.mark.django_db
def test_a_member_ends_their_own_run_and_a_key_the_runs_it_started(
    api: Any, workspace: Any, member: Any, keys: dict[str, str]
) -> None:
    own = make_run(workspace=workspace, status="running", created_by=member)
    assert client_as(api, member).post(f"/api/v1/runs/{own.pk}/cancel/").status_code == 200
    key = api_key_find(raw_key=keys["member_key"])
    assert key is not None
    started = make_run(
        workspace=workspace, status="running", created_by=key.created_by, api_key=key
    )
    other_key_api = client_as(api, keys["member_key"])
    response = other_key_api.post(
        f"/api/v1/runs/{started.pk}/complete/",
        {"status": "failed", "error": {"code": "agent", "message": "gave up"}},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["error"] == {"code": "agent", "message": "gave up"}
    assert response.json()["end_reason"] == "command_failed"


@pytest.mark.django_db
def test_cancel_kills_the_sandbox_and_is_idempotent(
    api: Any, owner: Any, sandbox_run: SandboxRun, local_sandboxes: Any
) -> None:
    client = client_as(api, owner)
    first = client.post(f"/api/v1/runs/{sandbox_run.pk}/cancel/")
    assert (first.status_code, first.json()["status"], first.json()["end_reason"]) == (
        200,
        "canceled",
        "canceled_by_user",
    )
    assert local_sandboxes.list_sandboxes({}) == []
    again = client.post(f"/api/v1/runs/{sandbox_run.pk}/cancel/")
    assert (again.status_code, again.json()["status"]) == (200, "canceled")


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_cancels_of_one_run_all_answer_200(
    owner: Any, workspace: Any, fake_backend: Any
) -> None:
    import threading

    from django.db import connections
    from rest_framework.test import APIClient

    run = start_run(workspace=workspace)
    answers: list[tuple[int, str]] = []
    barrier = threading.Barrier(20)

    def cancel() -> None:
        client = APIClient()
        client.force_authenticate(owner)
        try:
            barrier.wait()
            response = client.post(f"/api/v1/runs/{run.pk}/cancel/")
            answers.append((response.status_code, response.json()["status"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=cancel) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [(200, "canceled")] * 20
    assert fake_backend.kills == [run.sandbox_id]  # killed once, by the cancel that won
    [ended] = [e for e in transitions(run.pk) if e.data["to"] == "canceled"]
    assert ended.actor == f"user:{owner.username}"


@pytest.mark.django_db
def test_cancel_works_while_booting(api: Any, owner: Any, workspace: Any) -> None:
    run = make_run(workspace=workspace)
    response = client_as(api, owner).post(f"/api/v1/runs/{run.pk}/cancel/")
    assert (response.status_code, response.json()["status"]) == (200, "canceled")


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancel_of_an_ended_run_is_a_409_naming_its_status(
    api: Any, owner: Any, workspace: Any, status: str
) -> None:
    run = make_run(workspace=workspace, status=status)
    response = client_as(api, owner).post(f"/api/v1/runs/{run.pk}/cancel/")
    assert response.status_code == 409
    assert response.json() == {"detail": f"The run is {status}.", "code": "invalid_state"}


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["booting", "succeeded", "canceled"])
def test_exec_and_files_need_a_running_run(
    api: Any, owner: Any, workspace: Any, status: str
) -> None:
    run = make_run(workspace=workspace, status=status)
    client = client_as(api, owner)
    assert (
        client.post(f"/api/v1/runs/{run.pk}/exec/", {"command": "true"}, format="json").status_code
        == 409
    )
    assert client.get(f"/api/v1/runs/{run.pk}/files/?path=/home/user/x").status_code == 409
    assert client.get(f"/api/v1/runs/{run.pk}/files/list/").status_code == 409


@pytest.mark.django_db
def test_files_round_trip_through_the_sandbox(
    api: Any, member: Any, sandbox_run: SandboxRun
) -> None:
    client = client_as(api, member)
    url = f"/api/v1/runs/{sandbox_run.pk}/files/"
    payload = bytes(range(256)) * 10
    put = client.put(
        f"{url}?path=/home/user/data/blob.bin", payload, content_type="application/octet-stream"
    )
    assert put.json() == {"path": "/home/user/data/blob.bin", "size": len(payload)}
    got = client.get(f"{url}?path=/home/user/data/blob.bin")
    assert got.status_code == 200
    assert got.getvalue() == payload
    assert got["Content-Disposition"] == 'attachment; filename="blob.bin"'
    assert got["X-Content-Type-Options"] == "nosniff"
    listing = client.get(f"{url}list/?path=/home/user/data").json()
    assert listing["entries"] == [
        {
            "name": "blob.bin",
            "path": "/home/user/data/blob.bin",
            "type": "file",
            "size": len(payload),
        }
    ]
    missing = client.get(f"{url}?path=/home/user/nope")
    assert (missing.status_code, missing.json()["code"]) == (404, "file_not_found")


@pytest.mark.django_db
def test_an_upload_over_the_limit_is_refused_whole(
    api: Any, member: Any, sandbox_run: SandboxRun, settings: Any, local_sandboxes: Any
) -> None:
    settings.UPLOAD_MAX_BYTES = 1000
    client = client_as(api, member)
    response = client.put(
        f"/api/v1/runs/{sandbox_run.pk}/files/?path=/home/user/big",
        b"x" * 1001,
        content_type="application/octet-stream",
    )
    assert (response.status_code, response.json()["code"]) == (413, "too_large")
    listing = client.get(f"/api/v1/runs/{sandbox_run.pk}/files/list/").json()
    assert "big" not in [e["name"] for e in listing["entries"]]


@pytest.mark.django_db
def test_work_in_the_sandbox_is_activity_and_reading_or_waiting_is_not(
    api: Any, member: Any, sandbox_run: SandboxRun
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    client = client_as(api, member)
    long_ago = timezone.now() - timedelta(minutes=10)
    for read in (f"/api/v1/runs/{sandbox_run.pk}/", f"/api/v1/runs/{sandbox_run.pk}/?wait_s=0.2"):
        SandboxRun.objects.filter(pk=sandbox_run.pk).update(last_activity_at=long_ago)
        assert client.get(read).status_code == 200
        sandbox_run.refresh_from_db()
        assert sandbox_run.last_activity_at == long_ago  # SPEC §11: waiting is not activity

    response = client.post(
        f"/api/v1/runs/{sandbox_run.pk}/exec/", {"command": "true"}, format="json"
    )
    assert response.status_code == 200
    sandbox_run.refresh_from_db()
    assert sandbox_run.last_activity_at > long_ago


# --- idempotency and limits ------------------------------------------------------------


@pytest.mark.django_db
def test_an_idempotency_key_returns_the_same_run(api: Any, member: Any, workspace: Any) -> None:
    client = client_as(api, member)
    url = f"/api/v1/workspaces/{workspace.pk}/runs/"
    first = client.post(url, RUN_BODY, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    second = client.post(url, RUN_BODY, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert SandboxRun.objects.count() == 1
    changed = client.post(
        url, {**RUN_BODY, "prompt": "other"}, format="json", HTTP_IDEMPOTENCY_KEY="abc"
    )
    assert (changed.status_code, changed.json()["code"]) == (409, "idempotency_mismatch")


@pytest.mark.django_db
def test_the_active_run_limit_answers_429_with_retry_after(
    api: Any, member: Any, workspace: Any, settings: Any
) -> None:
    settings.WORKSPACE_MAX_ACTIVE_RUNS = 2
    make_run(workspace=workspace)
    make_run(workspace=workspace, status="running")
    make_run(workspace=workspace, status="succeeded")  # ended runs do not count
    response = client_as(api, member).post(
        f"/api/v1/workspaces/{workspace.pk}/runs/", RUN_BODY, format="json"
    )
    assert (response.status_code, response.json()["code"]) == (429, "too_many_active_runs")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert SandboxRun.objects.count() == 3


# --- bad input -------------------------------------------------------------------------

BAD_RUNS = {
    "unknown field": {**RUN_BODY, "colour": "red"},
    "missing prompt": {"thread_id": "t"},
    "thread id too long": {**RUN_BODY, "thread_id": "x" * 256},
    "env not an object": {**RUN_BODY, "env": ["A=1"]},
    "env bad name": {**RUN_BODY, "env": {"1BAD": "x"}},
    "metadata too many keys": {**RUN_BODY, "metadata": {f"k{i}": i for i in range(17)}},
    "metadata nested": {**RUN_BODY, "metadata": {"a": {"b": 1}}},
    "relative file path": {**RUN_BODY, "command": "true", "files": {"rel.txt": "x"}},
    "dotdot file path": {**RUN_BODY, "command": "true", "files": {"/home/user/../../etc/x": "x"}},
    "files without a command": {**RUN_BODY, "files": {"/home/user/a.txt": "x"}},
    "nul in path": {**RUN_BODY, "output_dir": "/home/user/a\x00b"},
    "path outside home": {**RUN_BODY, "output_dir": "/etc"},
    "max duration too long": {**RUN_BODY, "max_duration_ms": 10**12},
    "timeout wrong type": {**RUN_BODY, "idle_timeout_ms": "soon"},
}


@pytest.mark.django_db
@pytest.mark.parametrize("body", BAD_RUNS.values(), ids=BAD_RUNS.keys())
def test_bad_run_input_is_a_400_and_creates_nothing(
    api: Any, member: Any, workspace: Any, body: dict[str, Any]
) -> None:
    response = client_as(api, member).post(
        f"/api/v1/workspaces/{workspace.pk}/runs/", body, format="json"
    )
    assert response.status_code == 400, response.json()
    assert response.json()["code"] in (
        "invalid", "invalid_path", "too_many", "out_of_range", "files_need_command",
    )  # fmt: skip
    assert SandboxRun.objects.count() == 0


@pytest.mark.django_db
def test_bad_exec_input(api: Any, member: Any, sandbox_run: SandboxRun) -> None:
    client = client_as(api, member)
    url = f"/api/v1/runs/{sandbox_run.pk}/exec/"
    assert (
        client.post(url, {"command": "true", "timeout_s": 10**7}, format="json").json()["code"]
        == "timeout_too_long"
    )
    assert client.post(url, {"command": "true", "cwd": "../etc"}, format="json").status_code == 400
    assert client.post(url, {"cmd": "true"}, format="json").status_code == 400
    assert (
        client.get(
            f"/api/v1/runs/{sandbox_run.pk}/files/?path=/home/user/../../etc/shadow"
        ).status_code
        == 400
    )
    assert client.get(f"/api/v1/runs/{sandbox_run.pk}/files/").status_code == 400
    assert client.get("/api/v1/runs/not-a-uuid/").status_code == 404


@pytest.mark.django_db
def test_the_run_lists_filter_by_status_and_thread(api: Any, owner: Any, workspace: Any) -> None:
    make_run(workspace=workspace, thread_id="a")
    done = make_run(workspace=workspace, thread_id="b", status="succeeded")
    client = client_as(api, owner)
    assert [r["id"] for r in client.get("/api/v1/runs/?thread_id=b").json()["results"]] == [
        str(done.pk)
    ]
    assert [
        r["id"]
        for r in client.get(f"/api/v1/workspaces/{workspace.pk}/runs/?status=succeeded").json()[
            "results"
        ]
    ] == [str(done.pk)]
    assert client.get("/api/v1/runs/?status=bogus").status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/v1/runs/", "/api/v1/workspaces/{ws}/runs/"])
def test_run_lists_use_a_constant_number_of_queries(
    api: Any, owner: Any, workspace: Any, url: str, django_assert_max_num_queries: Any
) -> None:
    client = client_as(api, owner)
    url = url.format(ws=workspace.pk)
    for _ in range(3):
        make_run(workspace=workspace)
    with django_assert_max_num_queries(4):
        assert len(client.get(url).json()["results"]) == 3
    for _ in range(40):
        make_run(workspace=workspace)
    with django_assert_max_num_queries(4):
        assert len(client.get(url).json()["results"]) == 43


@pytest.mark.django_db
def test_deleting_a_workspace_cancels_its_runs_and_kills_their_sandboxes(
    api: Any, owner: Any, sandbox_run: SandboxRun, local_sandboxes: Any
) -> None:
    response = client_as(api, owner).delete(f"/api/v1/workspaces/{sandbox_run.workspace_id}/")
    assert response.status_code == 204
    assert local_sandboxes.list_sandboxes({}) == []
    assert not SandboxRun.objects.filter(pk=sandbox_run.pk).exists()


# --- usage -----------------------------------------------------------------------------------


def _usage_url(workspace: Any) -> str:
    return f"/api/v1/workspaces/{workspace.pk}/usage/"


def _totals(runs: int, seconds: float, cost: str) -> dict[str, Any]:
    return {"runs": runs, "sandbox_seconds": seconds, "cost_usd": cost}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"), table(owner=200, admin=200, member=403, member_key=403, admin_key=200)
)
def test_only_admins_and_owners_see_usage(
    as_caller: Any, caller: str, status: int, workspace: Any
) -> None:
    response = as_caller(caller).get(_usage_url(workspace))
    assert response.status_code == status, response.json()
    if status == 200:
        assert set(response.json()) >= {"runs", "sandbox_seconds", "cost_usd", "by_status"}


@pytest.mark.django_db
def test_usage_by_status_and_by_day(
    usage_history: None, api: Any, owner: Any, workspace: Any
) -> None:
    query = {"from": "2026-01-05", "to": "2026-01-07"}
    response = client_as(api, owner).get(_usage_url(workspace), query)

    assert response.status_code == 200, response.json()
    assert response.json() == {
        "from": "2026-01-05",
        "to": "2026-01-07",
        **_totals(5, 1200.0, "0.875000"),
        "by_status": {
            "booting": _totals(1, 0.0, "0.000000"),
            "running": _totals(1, 300.0, "0.000000"),
            "paused": _totals(0, 0.0, "0.000000"),
            "succeeded": _totals(1, 600.0, "0.500000"),
            "failed": _totals(1, 100.0, "0.250000"),
            "canceled": _totals(1, 200.0, "0.125000"),
        },
        "by_day": [
            {"day": "2026-01-05", **_totals(2, 700.0, "0.750000")},
            {"day": "2026-01-06", **_totals(2, 200.0, "0.125000")},
            {"day": "2026-01-07", **_totals(1, 300.0, "0.000000")},
        ],
    }


@pytest.mark.django_db
def test_by_default_usage_covers_the_last_30_days(
    usage_history: None, api: Any, owner: Any, workspace: Any
) -> None:
    body = client_as(api, owner).get(_usage_url(workspace)).json()
    assert (body["from"], body["to"]) == ("2025-12-09", "2026-01-07")
    assert len(body["by_day"]) == 30
    assert body["runs"] == 6  # the run of the day before the three days counts here


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-01-07", "to": "2026-01-05"}, "from"),
        ({"from": "2025-01-01", "to": "2026-01-05"}, "from"),  # 370 days
        ({"from": "2026-01-05\x00"}, "from"),
    ],
)
def test_bad_dates_are_a_400_naming_the_field(
    query: dict[str, str], field: str, api: Any, owner: Any, workspace: Any
) -> None:
    response = client_as(api, owner).get(_usage_url(workspace), query)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert field in response.json()["errors"]


@pytest.mark.django_db
def test_a_year_is_allowed(api: Any, owner: Any, workspace: Any) -> None:
    query = {"from": "2025-01-06", "to": "2026-01-06"}  # 366 days
    response = client_as(api, owner).get(_usage_url(workspace), query)
    assert response.status_code == 200
    assert len(response.json()["by_day"]) == 366


# --- streaming exec (a real ASGI server, real sandboxes) --------------------------------------


@pytest.fixture(params=live_backends())
def live_run(request: Any, workspace: Any) -> SandboxRun:
    """A running run on a real sandbox of each backend, started by the owner."""
    backend = request.getfixturevalue(request.param)
    info = backend.create(template="base", metadata={"app": "airlock"}, envs={}, timeout_s=600)
    return make_run(workspace=workspace, status="running", sandbox_id=info.sandbox_id)


def _stream_exec(server: Any, run: SandboxRun, key: str, body: dict[str, Any]) -> Any:
    import httpx

    return httpx.stream(
        "POST",
        f"{server.url}/api/v1/runs/{run.pk}/exec/",
        json=body,
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
        timeout=60,
    )


def _events(lines: Any) -> Any:
    """(event, data) pairs of a Server-Sent Events stream, as they arrive."""
    import json

    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))


def _processes_running(marker: str) -> list[int]:
    """Host processes whose command line holds `marker` (sandboxed ones included)."""
    import os
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _wait_until(condition: Any, timeout_s: float = 20) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_streamed_exec_sends_output_in_order_then_one_exit_event(
    asgi_server: Any, live_run: SandboxRun, member_key: str
) -> None:
    command = "echo one; sleep 0.3; echo two >&2; sleep 0.3; printf 'three\\n'; exit 3"
    with _stream_exec(asgi_server, live_run, member_key, {"command": command}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response.iter_lines()))
    assert [(e, d.get("text")) for e, d in events[:-1]] == [
        ("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "three\n"),
    ]  # fmt: skip
    kind, exit_event = events[-1]
    assert kind == "exit"
    row = Command.objects.get(run=live_run)
    assert exit_event == {
        "exit_code": 3, "timed_out": False, "truncated": False,
        "duration_ms": exit_event["duration_ms"], "command_id": str(row.pk),
    }  # fmt: skip
    # One code path with the JSON exec: the same row and trail.
    assert (row.kind, row.status, row.exit_code, row.stdout_tail) == (
        "exec", "exited", 3, "one\nthree\n",
    )  # fmt: skip


def test_the_first_chunk_arrives_while_the_command_still_runs_and_a_disconnect_kills_it(
    asgi_server: Any, live_run: SandboxRun, member_key: str
) -> None:
    marker = "987.654"
    body = {"command": f"echo ready; sleep {marker} & sleep {marker}; echo never", "timeout_s": 900}
    with _stream_exec(asgi_server, live_run, member_key, body) as response:
        # Held until the end of the block: a closed iterator closes the stream (a disconnect).
        events = _events(response.iter_lines())
        assert next(events) == ("stdout", {"text": "ready\n"})
        # The row is written while the sandbox starts the command (off the first byte's path).
        assert _wait_until(lambda: Command.objects.filter(run=live_run).exists())
        row = Command.objects.get(run=live_run)
        assert row.status == "running"  # the command is still asleep
        assert _wait_until(lambda: bool(_processes_running(marker)))
    # The client went away: the command and what it started are killed, and recorded so.
    assert _wait_until(lambda: Command.objects.get(pk=row.pk).status != "running")
    row.refresh_from_db()
    assert (row.status, (row.error or {})["code"]) == ("killed", "client_disconnected")
    assert _wait_until(lambda: not _processes_running(marker)), _processes_running(marker)


def test_a_streamed_exec_refused_before_it_starts_is_a_json_error(
    asgi_server: Any, workspace: Any, member_key: str
) -> None:
    ended = make_run(workspace=workspace, status="succeeded")
    with _stream_exec(asgi_server, ended, member_key, {"command": "true"}) as response:
        response.read()
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "invalid_state"
    with _stream_exec(asgi_server, ended, member_key, {"cmd": "true"}) as response:
        response.read()
    assert (response.status_code, response.json()["errors"]) == (400, {"cmd": ["Unknown field."]})


# --- the command history and background commands -------------------------------------------


@pytest.fixture
def fake_run(workspace: Any, fake_backend: Any) -> SandboxRun:
    """A running run on the in-memory backend, started by the owner; `printf secret` prints."""
    from sandboxes.backends import CommandResult
    from tests.sandboxes.fake_backend import start_run

    fake_backend.command_results["printf secret"] = CommandResult(0, "s3cr3t", "err", False, 5)
    return start_run(workspace=workspace)


def _commands(run: SandboxRun) -> str:
    return f"/api/v1/runs/{run.pk}/commands/"


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**{k: 202 for k in EVERYONE}))
def test_start_a_background_command(
    as_caller: Any, caller: str, status: int, fake_run: SandboxRun, fake_backend: Any
) -> None:
    response = as_caller(caller).post(
        _commands(fake_run), {"command": "sleep 60", "env": {"A": "b"}}, format="json"
    )
    assert response.status_code == status
    if status == 202:
        body = response.json()
        assert (body["status"], body["kind"], body["env_names"]) == ("running", "background", ["A"])
        assert Command.objects.get(pk=body["id"]).handle
        assert fake_backend.commands[-1] == (fake_run.sandbox_id, "sleep 60")


# Command output is content: the run's creator (olivia) and admins read it; other members,
# and member keys other than the one that started the run, see what ran and how it ended.
OUTPUT = dict(owner=True, admin=True, member=False, member_key=False, admin_key=True)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "sees_output"), OUTPUT.items())
def test_members_see_what_ran_but_only_the_creator_and_admins_its_output(
    as_caller: Any, owner: Any, caller: str, sees_output: bool, fake_run: SandboxRun
) -> None:
    client_as(as_caller("owner"), owner).post(
        f"/api/v1/runs/{fake_run.pk}/exec/", {"command": "printf secret"}, format="json"
    )
    client = as_caller(caller)
    [listed] = client.get(_commands(fake_run)).json()["results"]
    assert (listed["command"], listed["exit_code"], listed["status"]) == (
        "printf secret",
        0,
        "exited",
    )
    detail = client.get(f"{_commands(fake_run)}{listed['id']}/?stdout_offset=2").json()
    if sees_output:
        assert (listed["stdout_tail"], listed["stderr_tail"]) == ("s3cr3t", "err")
        assert detail["output"] == {
            "stdout": "cr3t", "stderr": "err", "stdout_offset": 2, "stderr_offset": 0,
            "stdout_next": 6, "stderr_next": 3,
        }  # fmt: skip
    else:
        assert (listed["stdout_tail"], listed["stderr_tail"], detail["output"]) == (None,) * 3
        assert "s3cr3t" not in str(detail) + str(listed)


@pytest.mark.django_db
def test_a_member_key_reads_the_output_of_runs_it_started(
    api: Any, workspace: Any, member_key: str, fake_backend: Any
) -> None:
    from sandboxes.backends import CommandResult
    from tests.sandboxes.fake_backend import start_run

    key = api_key_find(raw_key=member_key)
    assert key is not None
    fake_backend.command_results["printf mine"] = CommandResult(0, "mine", "", False, 1)
    run = start_run(workspace=workspace, api_key=key)
    client = client_as(api, member_key)
    client.post(f"/api/v1/runs/{run.pk}/exec/", {"command": "printf mine"}, format="json")
    assert client.get(_commands(run)).json()["results"][0]["stdout_tail"] == "mine"


@pytest.mark.django_db
def test_the_history_lists_every_kind_filtered_and_paginated(
    api: Any, owner: Any, fake_run: SandboxRun
) -> None:
    client = client_as(api, owner)
    for i in range(3):
        client.post(f"/api/v1/runs/{fake_run.pk}/exec/", {"command": f"echo {i}"}, format="json")
    client.post(_commands(fake_run), {"command": "sleep 60"}, format="json")
    first = client.get(f"{_commands(fake_run)}?page_size=2").json()
    assert [c["command"] for c in first["results"]] == ["echo 0", "echo 1"]  # oldest first
    rest = client.get(first["next"]).json()
    assert [c["command"] for c in rest["results"]] == ["echo 2", "sleep 60"]
    only = client.get(f"{_commands(fake_run)}?kind=background&status=running").json()
    assert [c["command"] for c in only["results"]] == ["sleep 60"]
    bad = client.get(f"{_commands(fake_run)}?kind=nope")
    assert bad.status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"), table(owner=200, admin=200, member=403, member_key=403, admin_key=200)
)
def test_kill_a_background_command(
    as_caller: Any, owner: Any, caller: str, status: int, fake_run: SandboxRun, fake_backend: Any
) -> None:
    started = client_as(as_caller("owner"), owner).post(
        _commands(fake_run), {"command": "sleep 60"}, format="json"
    )
    url = f"{_commands(fake_run)}{started.json()['id']}/kill/"
    response = as_caller(caller).post(url)
    assert response.status_code == status
    if status == 200:
        assert response.json()["status"] == "killed"
        assert not any(fake_backend.background.values())


@pytest.mark.django_db
def test_a_command_of_another_run_is_not_found(
    api: Any, owner: Any, fake_run: SandboxRun, workspace: Any
) -> None:
    client = client_as(api, owner)
    other = make_run(workspace=workspace, status="running")
    started = client.post(_commands(fake_run), {"command": "sleep 60"}, format="json").json()
    assert client.get(f"{_commands(other)}{started['id']}/").status_code == 404
    assert client.post(f"{_commands(other)}{started['id']}/kill/").status_code == 404


@pytest.mark.django_db
def test_bad_command_input(api: Any, owner: Any, fake_run: SandboxRun) -> None:
    client = client_as(api, owner)
    started = client.post(_commands(fake_run), {"command": "sleep 60"}, format="json").json()
    detail = f"{_commands(fake_run)}{started['id']}/"
    for url, field in [
        (f"{detail}?stdout_offset=-1", "stdout_offset"),
        (f"{detail}?offset=3", "offset"),
        (f"{_commands(fake_run)}?limit=3", "limit"),
    ]:
        response = client.get(url)
        assert response.status_code == 400, url
        assert field in response.json()["errors"]
    response = client.post(_commands(fake_run), {"command": "x", "timeout_s": 10**7}, format="json")
    assert response.json()["code"] == "timeout_too_long"


@pytest.mark.django_db
def test_a_multipart_upload_is_refused_and_writes_nothing(
    api: Any, owner: Any, fake_run: SandboxRun, fake_backend: Any
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = client_as(api, owner)
    url = f"/api/v1/runs/{fake_run.pk}/files/?path=/home/user/a.txt"
    form = client.put(url, {"file": SimpleUploadedFile("a.txt", b"hello")}, format="multipart")
    body = assert_error(form, 415)
    assert "raw body" in body["detail"]
    assert fake_backend.files == {}
    raw = client.put(url, b"hello", content_type="text/plain")
    assert raw.json() == {"path": "/home/user/a.txt", "size": 5}
    assert fake_backend.files[(fake_run.sandbox_id, "/home/user/a.txt")] == b"hello"


# --- an agent's own output: the job's row on GET runs/{id}/ -----------------------------


def _job_run(workspace: Any, *, api_key: Any = None) -> SandboxRun:
    from django.utils import timezone

    from sandboxes.models import Command

    run = make_run(workspace=workspace, status="failed", command="python3 job.py", api_key=api_key)
    Command.objects.create(
        run=run, workspace=workspace, kind="job", command=run.command, cwd="/home/user",
        actor="system:execute_run_command", status="exited", exit_code=3,
        ended_at=timezone.now(), duration_ms=120, stdout_tail="42\n", stderr_tail="oops\n",
    )  # fmt: skip
    return run


@pytest.mark.django_db
def test_the_key_that_started_a_job_reads_what_it_printed(api: Any, workspace: Any) -> None:
    from tests.factories import make_api_key

    key, raw = make_api_key(workspace=workspace)
    run = _job_run(workspace, api_key=key)
    job = client_as(api, raw).get(f"/api/v1/runs/{run.pk}/").json()["job"]
    assert job["status"] == "exited" and job["exit_code"] == 3
    assert (job["stdout"], job["stderr"], job["truncated"]) == ("42\n", "oops\n", False)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "sees_output"),
    [("owner", True), ("admin", True), ("admin_key", True), ("member", False),
     ("member_key", False)],
)  # fmt: skip
def test_only_the_runs_creator_and_admins_read_the_jobs_output(
    as_caller: Any, caller: str, sees_output: bool, workspace: Any, keys: Any
) -> None:
    from tests.factories import make_api_key

    agent, _ = make_api_key(workspace=workspace, name="the agent")
    run = _job_run(workspace, api_key=agent)  # started by another key (of the owner's)
    job = as_caller(caller).get(f"/api/v1/runs/{run.pk}/").json()["job"]
    assert job["exit_code"] == 3  # metadata, for every member
    assert (job["stdout"] is not None) is sees_output
    assert (job["stderr"] is not None) is sees_output


@pytest.mark.django_db
def test_a_run_without_a_job_has_none(api: Any, workspace: Any, member: Any) -> None:
    run = make_run(workspace=workspace, status="running")
    assert client_as(api, member).get(f"/api/v1/runs/{run.pk}/").json()["job"] is None


@pytest.mark.django_db
def test_lists_of_runs_do_not_carry_job_output(api: Any, workspace: Any, owner: Any) -> None:
    _job_run(workspace)
    [listed] = (
        client_as(api, owner).get(f"/api/v1/workspaces/{workspace.pk}/runs/").json()["results"]
    )
    assert "job" not in listed


# --- pause, resume and the network (SPEC §15) ------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["pause", "resume"])
@pytest.mark.parametrize(
    ("caller", "status"), table(owner=200, admin=200, member=403, member_key=403, admin_key=200)
)
def test_pausing_and_resuming_someone_elses_run(
    as_caller: Any, caller: str, status: int, action: str, workspace: Any, fake_backend: Any
) -> None:
    from tests.sandboxes.fake_backend import start_run

    run = start_run(workspace=workspace)  # started by the owner
    if action == "resume":
        SandboxRun.objects.filter(pk=run.pk).update(status="paused", paused_at=run.running_at)
        fake_backend.pause(run.sandbox_id)
    response = as_caller(caller).post(f"/api/v1/runs/{run.pk}/{action}/")
    assert response.status_code == status
    if status == 200:
        expected = "paused" if action == "pause" else "running"
        assert response.json()["status"] == expected
        assert (run.sandbox_id in fake_backend.paused) == (action == "pause")


@pytest.mark.django_db
def test_a_paused_run_answers_exec_and_shows_how_it_waits(
    api: Any, owner: Any, workspace: Any, fake_backend: Any
) -> None:
    from tests.sandboxes.fake_backend import start_run

    client = client_as(api, owner)
    run = start_run(workspace=workspace, on_idle="pause")
    paused = client.post(f"/api/v1/runs/{run.pk}/pause/").json()
    assert (paused["status"], paused["on_idle"]) == ("paused", "pause")
    assert paused["paused_at"] is not None
    assert client.post(f"/api/v1/runs/{run.pk}/pause/").json()["status"] == "paused"

    response = client.post(f"/api/v1/runs/{run.pk}/exec/", {"command": "true"}, format="json")

    assert response.status_code == 200
    detail = client.get(f"/api/v1/runs/{run.pk}/").json()
    assert (detail["status"], detail["paused_at"]) == ("running", None)
    assert client.post(f"/api/v1/runs/{run.pk}/resume/").json()["status"] == "running"


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["booting", "succeeded"])
def test_pause_and_resume_of_a_run_that_is_not_running_or_paused_is_a_409(
    api: Any, owner: Any, workspace: Any, status: str, fake_backend: Any
) -> None:
    run = make_run(workspace=workspace, status=status)
    for action in ("pause", "resume"):
        response = client_as(api, owner).post(f"/api/v1/runs/{run.pk}/{action}/")
        assert response.status_code == 409
        assert response.json()["code"] == "invalid_state"


@pytest.mark.django_db
def test_a_run_is_created_with_its_network_and_on_idle(
    api: Any, member: Any, workspace: Any, fake_backend: Any
) -> None:
    body = {
        **RUN_BODY,
        "on_idle": "pause",
        "network": {"internet": True, "deny_out": ["169.254.169.254/32"]},
    }
    response = client_as(api, member).post(
        f"/api/v1/workspaces/{workspace.pk}/runs/", body, format="json"
    )
    assert response.status_code == 201, response.json()
    assert (response.json()["on_idle"], response.json()["network"]) == (
        "pause", {"internet": True, "allow_out": [], "deny_out": ["169.254.169.254/32"]},
    )  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"on_idle": "hibernate"},
        {"network": {"internet": "yes"}},
        {"network": {"allow_out": ["not a domain!"]}},
        {"network": {"deny_out": "10.0.0.0/8"}},
        {"network": {"bandwidth": 10}},
    ],
)
def test_a_bad_on_idle_or_network_is_a_400(
    api: Any, member: Any, workspace: Any, body: dict[str, Any], fake_backend: Any
) -> None:
    response = client_as(api, member).post(
        f"/api/v1/workspaces/{workspace.pk}/runs/", {**RUN_BODY, **body}, format="json"
    )
    assert response.status_code == 400, response.json()
    assert SandboxRun.objects.count() == 0


@pytest.mark.django_db
def test_a_network_the_local_backend_cannot_give_is_a_400_naming_it(
    api: Any, member: Any, workspace: Any, local_sandboxes: Any
) -> None:
    response = client_as(api, member).post(
        f"/api/v1/workspaces/{workspace.pk}/runs/",
        {**RUN_BODY, "network": {"internet": True}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_by_backend"
    assert "local backend" in response.json()["detail"]
    assert SandboxRun.objects.count() == 0


@pytest.mark.django_db
def test_list_rows_are_written_exactly_as_the_run_serializer_writes_a_run(workspace: Any) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from sandboxes.api import RUN_ROW_FIELDS, RunOut, run_row
    from tests.factories import make_api_key

    key, _ = make_api_key(workspace=workspace)
    runs = [
        make_run(workspace=workspace),
        make_run(
            workspace=workspace,
            status="failed",
            api_key=key,
            files={"/home/user/b.txt": "b", "/home/user/a.txt": "a"},
            metadata={"n": 1, "nested": {"x": [1, 2]}},
            error={"code": "boom", "detail": "it broke"},
            end_reason="command_failed",
            exit_code=3,
            cost_usd=Decimal("1.5"),
            cpu_count=2,
            memory_mb=512,
            finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
            command="exit 3",
        ),
        make_run(workspace=workspace, status="succeeded", cost_usd=Decimal("0")),
        make_run(
            workspace=workspace,
            status="paused",
            on_idle="pause",
            paused_at=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
            network={"internet": True, "allow_out": ["10.0.0.0/8"], "deny_out": ["1.2.3.4"]},
        ),
        make_run(workspace=workspace, network={}),  # made before networks were per run
    ]
    rows = {row["id"]: row for row in SandboxRun.objects.values(*RUN_ROW_FIELDS)}
    for run in runs:
        run.refresh_from_db()
        assert run_row(rows[run.pk]) == dict(RunOut(run).data)


@pytest.mark.django_db
def test_run_lists_never_count_the_runs(api: Any, owner: Any, workspace: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):
        make_run(workspace=workspace)
    client = client_as(api, owner)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(f"/api/v1/workspaces/{workspace.pk}/runs/?page_size=2").json()
        client.get(page["next"].replace("http://testserver", ""))
    assert not [q for q in queries if "COUNT(" in q["sql"].upper()]

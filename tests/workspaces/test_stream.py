"""workspaces/stream.py: the trail as Server-Sent Events. Under the test client (WSGI) the
answer is the backlog; the live stream is driven through a real uvicorn server serving
config.asgi, in this process, so its subscriptions can be counted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import assert_error, client_as, table
from tests.factories import make_api_key, make_run, record_event
from workspaces import services, stream
from workspaces.access import Actor
from workspaces.models import Event
from workspaces.watch import trail_watch


def stream_url(workspace: Any, query: str = "") -> str:
    return f"/api/v1/workspaces/{workspace.pk}/events/stream/" + (f"?{query}" if query else "")


def parse(body: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body (comments and retry hints left out)."""
    found = []
    for block in body.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":") and ": " in line:
                name, value = line.split(": ", 1)
                fields[name] = value
        if "data" in fields:
            found.append({**fields, "data": json.loads(fields["data"])})
    return found


def streamed(response: Any) -> bytes:
    """The body read to its end (the test client closes the response there, as a server
    would)."""
    return b"".join(response.streaming_content)


def rename(workspace: Any, name: str) -> None:
    services.workspace_rename(workspace=workspace, name=name, actor=Actor(user=workspace.owner))


# --- under the test client: the backlog --------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"),
    table(owner=200, admin=200, member=200, member_key=200, admin_key=200),
)
def test_who_may_read_the_stream(as_caller: Any, caller: str, status: int, workspace: Any) -> None:
    response = as_caller(caller).get(stream_url(workspace), HTTP_ACCEPT="text/event-stream")
    assert response.status_code == status
    if status == 200:
        assert response["Content-Type"] == "text/event-stream"
        assert parse(streamed(response))
    else:
        assert response["Content-Type"] == "application/json"  # errors stay JSON


@pytest.mark.django_db
def test_each_event_is_framed_with_its_id_type_and_the_lists_json(
    api: Any, workspace: Any, member: Any
) -> None:
    rename(workspace, "Renamed")
    client = client_as(api, member)
    listed = client.get(f"/api/v1/workspaces/{workspace.pk}/events/").json()["results"]
    framed = parse(streamed(client.get(stream_url(workspace))))
    assert [e["data"] for e in framed] == listed
    assert [(int(e["id"]), e["event"]) for e in framed] == [(e["id"], e["type"]) for e in listed]


@pytest.mark.django_db
def test_it_resumes_after_last_event_id_or_after(api: Any, workspace: Any, member: Any) -> None:
    for name in ("A", "B", "C"):
        rename(workspace, name)
    ids = list(Event.objects.filter(workspace_id=workspace.pk).values_list("id", flat=True))
    client = client_as(api, member)
    by_header = parse(streamed(client.get(stream_url(workspace), HTTP_LAST_EVENT_ID=str(ids[-3]))))
    by_query = parse(streamed(client.get(stream_url(workspace, f"after={ids[-3]}"))))
    header_wins = client.get(stream_url(workspace, "after=0"), HTTP_LAST_EVENT_ID=str(ids[-2]))
    assert [int(e["id"]) for e in by_header] == ids[-2:]
    assert [int(e["id"]) for e in by_query] == ids[-2:]
    assert [int(e["id"]) for e in parse(streamed(header_wins))] == ids[-1:]


@pytest.mark.django_db
def test_it_filters_like_the_list(api: Any, workspace: Any, member: Any) -> None:
    run = make_run(workspace=workspace, status="running", thread_id="t-9")
    record_event(run, "run.succeeded")
    rename(workspace, "Renamed")
    client = client_as(api, member)
    by_type = parse(streamed(client.get(stream_url(workspace, "type=workspace.renamed"))))
    by_run = parse(streamed(client.get(stream_url(workspace, f"run_id={run.pk}"))))
    by_thread = parse(streamed(client.get(stream_url(workspace, "thread_id=t-9"))))
    assert [e["event"] for e in by_type] == ["workspace.renamed"]
    assert [e["event"] for e in by_run] == ["run.succeeded"]
    assert [e["event"] for e in by_thread] == ["run.succeeded"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "header"),
    [("after=-1", None), ("type=nope", None), ("page_size=5", None), ("", "soon")],
)
def test_bad_stream_parameters_are_a_400(
    api: Any, workspace: Any, member: Any, query: str, header: str | None
) -> None:
    extra: dict[str, Any] = {"HTTP_LAST_EVENT_ID": header} if header else {}
    response = client_as(api, member).get(stream_url(workspace, query), **extra)
    assert_error(response, 400)


@pytest.mark.django_db
def test_a_key_reads_only_its_own_workspaces_stream(
    api: Any, workspace: Any, outsider: Any
) -> None:
    from tests.factories import make_workspace

    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    _, key = make_api_key(workspace=workspace)
    assert_error(client_as(api, key).get(stream_url(elsewhere)), 404)


# --- live, through uvicorn -------------------------------------------------------------


@pytest.fixture
def server(asgi_server: Any) -> Iterator[str]:
    """config.asgi served by uvicorn on a loopback port, in this process; its base URL."""
    yield asgi_server.url
    stream.release_connections()  # before the test database goes


class Reader:
    """An SSE client over a real connection, reading event by event."""

    def __init__(self, url: str, key: str, last_event_id: int | None = None) -> None:
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.client = httpx.Client(timeout=15)
        self.response = self.client.send(
            self.client.build_request("GET", url, headers=headers), stream=True
        )
        self.lines = self.response.iter_lines()
        self.comments: list[str] = []

    def next_event(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line)
            elif line == "" and "data" in fields:
                return {**fields, "data": json.loads(fields["data"])}
            elif ": " in line:
                name, value = line.split(": ", 1)
                fields[name] = value
        raise AssertionError("the stream ended")

    def next_comment(self) -> str:
        seen = len(self.comments)
        for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line)
                if len(self.comments) > seen:
                    return line
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.response.close()
        self.client.close()


def wait_until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_a_reconnect_with_last_event_id_loses_and_repeats_nothing(
    server: Any, workspace: Any
) -> None:
    _, key = make_api_key(workspace=workspace)
    url = server + stream_url(workspace)
    start = Event.objects.order_by("-id").values_list("id", flat=True).first()

    first = Reader(url, key, last_event_id=start)
    for name in ("A", "B", "C"):
        rename(workspace, name)
    got = [first.next_event() for _ in range(3)]
    first.close()  # the client goes …
    for name in ("D", "E"):
        rename(workspace, name)  # … events happen while it is away …
    again = Reader(url, key, last_event_id=int(got[-1]["id"]))  # … and it comes back
    rename(workspace, "F")
    got += [again.next_event() for _ in range(3)]
    again.close()

    names = [e["data"]["data"]["to"] for e in got]
    ids = [int(e["id"]) for e in got]
    assert names == ["A", "B", "C", "D", "E", "F"]
    assert ids == sorted(set(ids))  # in order, each once
    expected = list(
        Event.objects.filter(workspace_id=workspace.pk, id__gt=start).values_list("id", flat=True)
    )
    assert ids == expected
    assert all(e["event"] == "workspace.renamed" for e in got)


@pytest.mark.django_db(transaction=True)
def test_a_stream_hears_a_decision_made_by_another_client(
    server: Any, workspace: Any, admin_user: Any
) -> None:
    from artifacts import review
    from tests.artifacts.conftest import make_artifact

    _, key = make_api_key(workspace=workspace)
    artifact = make_artifact(make_run(workspace=workspace, status="running"))
    reader = Reader(server + stream_url(workspace, "type=artifact.approved"), key)
    review.artifact_review(artifact=artifact, actor=Actor(user=admin_user), decision="approve")
    event = reader.next_event()
    reader.close()
    assert (event["event"], event["data"]["subject"]["id"]) == (
        "artifact.approved",
        str(artifact.pk),
    )


@pytest.mark.django_db(transaction=True)
def test_a_quiet_stream_sends_heartbeats(server: Any, workspace: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(stream, "HEARTBEAT_S", 0.2)
    _, key = make_api_key(workspace=workspace)
    reader = Reader(server + stream_url(workspace, "type=artifact.approved"), key)
    assert reader.next_comment().startswith(": events of workspace")
    assert reader.next_comment() == ": heartbeat"
    reader.close()


@pytest.mark.django_db(transaction=True)
def test_a_client_that_disconnects_ends_its_stream(server: Any, workspace: Any) -> None:
    _, key = make_api_key(workspace=workspace)
    watch = trail_watch()
    before = watch.listeners()
    readers = [Reader(server + stream_url(workspace), key) for _ in range(3)]
    for reader in readers:
        reader.next_comment()
    wait_until(lambda: watch.listeners() == before + 3)
    for reader in readers:
        reader.close()
    wait_until(lambda: watch.listeners() == before)


@pytest.mark.django_db(transaction=True)
def test_the_live_stream_refuses_outsiders_and_bad_keys(
    server: Any, workspace: Any, outsider: Any
) -> None:
    from tests.factories import make_workspace

    _, foreign = make_api_key(workspace=make_workspace(owner=outsider, name="Elsewhere"))
    url = server + stream_url(workspace)
    assert httpx.get(url, headers={"Authorization": f"Bearer {foreign}"}).status_code == 404
    unauthenticated = httpx.get(url)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["code"] == "not_authenticated"


@pytest.mark.django_db(transaction=True)
def test_events_of_another_workspace_do_not_reach_a_stream(
    server: Any, workspace: Any, outsider: Any
) -> None:
    from tests.factories import make_workspace

    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    _, key = make_api_key(workspace=workspace)
    reader = Reader(server + stream_url(workspace, "type=workspace.renamed"), key)
    reader.next_comment()
    rename(elsewhere, "Not for you")
    rename(workspace, "For you")
    event = reader.next_event()
    reader.close()
    assert event["data"]["data"]["to"] == "For you"
    assert event["data"]["workspace_id"] == str(workspace.pk)

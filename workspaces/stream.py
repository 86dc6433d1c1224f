"""`GET workspaces/{ws}/events/stream/`: the trail as Server-Sent Events (SPEC §10).

Each event is `id:` (its id, the cursor), `event:` (its type) and `data:` (the JSON the events
list shows). A client resumes after `Last-Event-ID` (what EventSource sends when it reconnects)
or `?after=`, and gets every event after it exactly once: the stream reads only up to the trail
watch's horizon, below which no event can still commit (workspaces.watch). A comment line is
sent after HEARTBEAT_S without events, so proxies and clients know the stream is alive.

Served by an async view under ASGI (uvicorn): the checks (authentication, role, query) run on a
pooled thread through the DRF view below, then the stream itself is a coroutine on the event
loop, woken by the trail watch; its database reads borrow one of POOL_SIZE threads for one
query each.
An open stream holds no database connection and no worker thread of its own (Django's ASGI
handler parks one idle thread per request for its signal receivers). A client that disconnects
cancels it. Under WSGI (the sync test client, a sync server) the answer is the backlog after the
cursor, then the response ends and the client reconnects: long polling, not a stream.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections, connection
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import renderers, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import CommaSeparatedChoices, StrictSerializer
from config.exceptions import InvalidInput
from workspaces import events, selectors
from workspaces.api import WorkspaceScopedView
from workspaces.models import Event, EventType, Workspace
from workspaces.watch import trail_watch

HEARTBEAT_S = 10.0
BATCH = 200
# The streams' own threads for database work (the checks, then one read per wake-up): a few
# connections per process however many streams are open.
POOL_SIZE = 4
_pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="event-stream")
WSGI_BACKLOG = 1000  # events answered at most, under WSGI, before the response ends
RETRY_MS = 1000  # how soon EventSource reconnects


class EventStreamRenderer(renderers.BaseRenderer):
    """Lets `Accept: text/event-stream` through content negotiation. The stream itself is
    not rendered; errors are, as JSON."""

    media_type = "text/event-stream"
    format = "sse"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        return bytes(renderers.JSONRenderer().render(data))


class EventStreamQuery(StrictSerializer):
    after = serializers.IntegerField(
        min_value=0, required=False, help_text="Resume after this event id (Last-Event-ID wins)."
    )
    type = CommaSeparatedChoices(
        choices=EventType.values,
        required=False,
        help_text="One event type, or several separated by commas.",
    )
    run_id = serializers.UUIDField(required=False)
    thread_id = serializers.CharField(max_length=255, required=False)


LAST_EVENT_ID = OpenApiParameter(
    "Last-Event-ID",
    int,
    OpenApiParameter.HEADER,
    description="The id of the last event received: the stream resumes after it.",
)


class EventStreamView(WorkspaceScopedView):
    renderer_classes = [renderers.JSONRenderer, EventStreamRenderer]
    query = {"GET": EventStreamQuery}

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        """An async view around the DRF one: the checks on a pooled thread, the stream on
        the event loop. (drf-spectacular reads `cls` to document it like any other view.)"""
        checks = super().as_view(**initkwargs)

        def run_checks(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if isinstance(request, ASGIRequest):
                close_old_connections()  # a pooled thread's connection outlives requests
            response: HttpResponseBase = checks(request, *args, **kwargs)
            if isinstance(response, Response):
                response.render()
            return response

        async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            # Under ASGI on any pooled thread; under WSGI on the request's own thread (the
            # test client's transaction lives there).
            if isinstance(request, ASGIRequest):
                call = sync_to_async(run_checks, thread_sensitive=False, executor=_pool)
            else:
                call = sync_to_async(run_checks, thread_sensitive=True)
            return await call(request, *args, **kwargs)

        for name in ("cls", "initkwargs", "view_class", "view_initkwargs", "csrf_exempt"):
            setattr(view, name, getattr(checks, name))
        return view

    @extend_schema(
        parameters=[EventStreamQuery, LAST_EVENT_ID],
        responses={(200, "text/event-stream"): OpenApiTypes.STR},
        operation_id="workspaces_events_stream",
        description="The workspace's trail as Server-Sent Events, live: `id:` is the event "
        "id, `event:` its type, `data:` the event as the events list shows it. Resumes after "
        "`Last-Event-ID` (or `after`) with nothing lost and nothing repeated; a comment line "
        f"at least every {HEARTBEAT_S:g} s. Members and up.",
    )
    def get(self, request: Request, workspace_id: str) -> StreamingHttpResponse:
        query = dict(self.query_data)
        after = _resume_after(request, query.pop("after", None))
        filters = {
            "types": query.get("type"),
            "run_id": query.get("run_id"),
            "thread_id": query.get("thread_id"),
        }
        content: AsyncIterator[bytes] | Iterator[bytes]
        if isinstance(request._request, ASGIRequest):
            content = live(self.workspace, after, filters)
        else:
            content = backlog(self.workspace, after, filters)
        response = StreamingHttpResponse(content, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response):  # an error: JSON, whatever was accepted
            request.accepted_renderer = renderers.JSONRenderer()
            request.accepted_media_type = "application/json"
        return super().finalize_response(request, response, *args, **kwargs)


def _resume_after(request: Request, after: int | None) -> int:
    header = request.headers.get("Last-Event-ID")
    if header is None or not header.strip():
        return after or 0
    if not header.strip().isdigit():
        raise InvalidInput("Last-Event-ID must be an event id.", code="invalid")
    return int(header.strip())


def sse(event: Event) -> bytes:
    """One event, framed: JSON never holds a raw line break, so `data:` is one line. Framed
    once per process: the streams share the poller's copy of an event."""
    framed: bytes | None = getattr(event, "_sse", None)
    if framed is None:
        data = json.dumps(events.as_json(event), separators=(",", ":"), ensure_ascii=False)
        framed = f"id: {event.pk}\nevent: {event.type}\ndata: {data}\n\n".encode()
        event._sse = framed  # type: ignore[attr-defined]
    return framed


def _matches(event: Event, filters: dict[str, Any]) -> bool:
    """The events list's filters (selectors.event_list), on an event in memory."""
    types, run_id, thread_id = filters["types"], filters["run_id"], filters["thread_id"]
    return (
        (not types or event.type in types)
        and (run_id is None or event.run_id == run_id)
        and (thread_id is None or event.thread_id == thread_id)
    )


def _read(
    workspace: Workspace, after: int, upto: int | None, filters: dict[str, Any], limit: int
) -> tuple[list[bytes], int | None]:
    """Events after `after` (up to `upto`), framed; and the id of the last one read."""
    queryset = selectors.event_list(workspace=workspace, after=after, **filters)
    if upto is not None:
        queryset = queryset.filter(id__lte=upto)
    rows = list(queryset[:limit])
    return [sse(e) for e in rows], (rows[-1].pk if rows else None)


def _pooled_read(
    workspace: Workspace, after: int, upto: int, filters: dict[str, Any]
) -> tuple[list[bytes], int | None]:
    close_old_connections()  # a pooled thread's connection outlives requests: check it
    return _read(workspace, after, upto, filters, BATCH)


async def live(workspace: Workspace, after: int, filters: dict[str, Any]) -> AsyncIterator[bytes]:
    """The stream under ASGI: every event after `after`, then each new one as it commits,
    until the client goes (the handler cancels this coroutine)."""
    subscription = trail_watch().subscribe(str(workspace.pk))
    read = sync_to_async(_pooled_read, thread_sensitive=False, executor=_pool)
    try:
        yield f"retry: {RETRY_MS}\n: events of workspace {workspace.pk}\n\n".encode()
        scanned = after
        while True:
            horizon = subscription.horizon()
            while horizon is not None and horizon > scanned:
                remembered = subscription.recent(scanned, horizon)
                if remembered is not None:  # the usual case: shared, no database read
                    chunks = [sse(e) for e in remembered if _matches(e, filters)]
                    last = None
                else:  # a resume from further back than the poller remembers
                    chunks, last = await read(workspace, scanned, horizon, filters)
                if chunks:
                    yield b"".join(chunks)
                scanned = last if last is not None and len(chunks) == BATCH else horizon
            if not await subscription.changed(HEARTBEAT_S):
                yield b": heartbeat\n\n"
    finally:
        subscription.close()


def backlog(workspace: Workspace, after: int, filters: dict[str, Any]) -> Iterator[bytes]:
    """Under WSGI: what is there after `after`, then the end of the response."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    chunks, _ = _read(workspace, after, None, filters, WSGI_BACKLOG)
    yield from chunks


def release_connections(timeout: float = 5.0) -> None:
    """Close the database connection of every pooled thread (tests, before their database
    goes): one task per thread, each held at a barrier until all have closed theirs."""
    barrier = threading.Barrier(POOL_SIZE)

    def close() -> None:
        connection.close()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout)

    for future in [_pool.submit(close) for _ in range(POOL_SIZE)]:
        future.result(timeout + 1)

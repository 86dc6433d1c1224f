"""The web application, as uvicorn serves it (`uvicorn config.asgi:application`): Django, and
the MCP server (artifacts/mcp.py) mounted beside it at /mcp/. Under ASGI, streams (the
streaming exec, SSE) hold no worker thread while they wait.

The lifespan (startup and shutdown) is the MCP app's: Django has none, and the MCP session
manager's task group must run for as long as the server does.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase
from starlette.types import ASGIApp, Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
get_asgi_application()  # sets Django up: import the apps' modules after

from artifacts.mcp import MCP_PATH, mcp_app  # noqa: E402

# `PUT runs/{id}/files/`: its body goes to the sandbox as the view reads it (StreamedBody).
STREAMED_UPLOAD = re.compile(r"/api/v1/runs/[^/]+/files/")
_scope: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "airlock_scope", default=None
)


class StreamedBody:
    """A request body read from the ASGI connection as the view reads it, instead of spooled
    whole to a temporary file before the view runs (Django's way): an upload then crosses
    memory once, socket → sandbox file. `read` is called on the view's thread and pulls
    messages on the event loop (the view's thread waits); a client that goes away mid-body
    is RequestAborted there."""

    def __init__(self, receive: Receive, loop: asyncio.AbstractEventLoop):
        self._receive = receive
        self._loop = loop
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._more = True
        self.done = asyncio.Event()  # every message of the body received

    async def _pull(self, size: int) -> None:
        while self._more and self._buffered < size:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._more = False
                self.done.set()
                raise RequestAborted()
            body = message.get("body", b"")
            if body:
                self._chunks.append(body)
                self._buffered += len(body)
            if not message.get("more_body", False):
                self._more = False
                self.done.set()

    def read(self, size: int | None = -1, /) -> bytes:
        want = size if size is not None and size >= 0 else 1 << 62
        if self._buffered < want and self._more:
            # Plain asyncio, not asgiref's async_to_sync: that one carries its context
            # variables back into the request and broke the connection's next request.
            asyncio.run_coroutine_threadsafe(self._pull(want), self._loop).result()
        data = b"".join(self._chunks)
        self._chunks = [data[want:]] if len(data) > want else []
        self._buffered = len(data) - min(len(data), want)
        return data[:want]

    def close(self) -> None:
        self._chunks, self._buffered = [], 0


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with each request's middleware and view run in one hop to a
    thread, as under WSGI, instead of one hop per hook of every middleware (about fifteen per
    request): every middleware and view here is synchronous. Responses, streams included,
    are still sent from the event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.load_middleware(is_async=False)

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        token = _scope.set(scope)
        try:
            await super().handle(scope, receive, send)
        finally:
            _scope.reset(token)

    async def read_body(self, receive: Any) -> Any:
        scope = _scope.get()
        if (
            scope is not None
            and scope.get("method") == "PUT"
            and STREAMED_UPLOAD.fullmatch(scope.get("path", ""))
        ):
            body = StreamedBody(receive, asyncio.get_running_loop())
            scope["airlock.streamed_body"] = body
            return body
        return await super().read_body(receive)

    async def listen_for_disconnect(self, receive: Any) -> None:
        scope = _scope.get()
        body = scope.get("airlock.streamed_body") if scope is not None else None
        if body is not None:
            # The view owns the connection until the body is read; a view that answers
            # without reading it (an error) ends the request, and this wait with it.
            await body.done.wait()
        await super().listen_for_disconnect(receive)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase = await sync_to_async(self.get_response, thread_sensitive=True)(
            request
        )
        return response


def _share_connections() -> None:
    """Under ASGI each request's sync code runs on a thread of its own, so a persistent
    connection would stay open, unused, with the thread it was made on: Django asks for
    CONN_MAX_AGE=0 under ASGI, and PostgreSQL connections then come from a pool shared by
    the threads (WEB_DATABASE_POOL_SIZE; opening one costs more than most requests).
    Workers, which are not served here, keep their persistent connections."""
    for database in settings.DATABASES.values():
        database["CONN_MAX_AGE"] = 0
        postgres = database["ENGINE"] == "django.db.backends.postgresql"
        if postgres and settings.WEB_DATABASE_POOL_SIZE:
            size = settings.WEB_DATABASE_POOL_SIZE
            pool = {"min_size": min(2, size), "max_size": size, "timeout": 30}
            database.setdefault("OPTIONS", {})["pool"] = pool


def build_application() -> ASGIApp:
    """Django and a new MCP app (whose lifespan runs once: one per server)."""
    _share_connections()
    mcp_application = mcp_app()
    django_application = OneHopASGIHandler()
    # The admin's and the API docs' assets (Swagger UI and ReDoc come with the project, so the
    # docs work offline), unless a proxy serves the collected var/static (SERVE_STATIC=false).
    django_app = ASGIStaticFilesHandler(django_application) if settings.SERVE_STATIC else None

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await mcp_application(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == MCP_PATH.rstrip("/"):
            scope = {**scope, "path": MCP_PATH, "raw_path": MCP_PATH.encode()}
            path = MCP_PATH
        if scope["type"] == "http" and path.startswith(MCP_PATH):
            await mcp_application(scope, receive, send)
            return
        await (django_app or django_application)(scope, receive, send)  # type: ignore[arg-type]

    return application


_built: ASGIApp | None = None


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """The served application, built on its first call (the lifespan's startup): importing
    this module (tests do) changes no setting."""
    global _built
    if _built is None:
        _built = build_application()
    await _built(scope, receive, send)

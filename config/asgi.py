"""The web application, as uvicorn serves it (`uvicorn config.asgi:application`): Django, and
the MCP server (artifacts/mcp.py) mounted beside it at /mcp/. Under ASGI, streams (the
streaming exec, SSE) hold no worker thread while they wait.

The lifespan (startup and shutdown) is the MCP app's: Django has none, and the MCP session
manager's task group must run for as long as the server does.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from starlette.types import ASGIApp, Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()  # sets Django up: import the apps' modules after

from artifacts.mcp import MCP_PATH, mcp_app  # noqa: E402


def build_application() -> ASGIApp:
    """Django and a new MCP app (whose lifespan runs once: one per server)."""
    # Under ASGI each request's sync code runs on a thread of its own, so a persistent
    # connection would stay open, unused, with the thread it was made on: Django's docs ask
    # for CONN_MAX_AGE=0 under ASGI (each request closes its connection when it finishes).
    # Workers, which are not served here, keep theirs.
    for database in settings.DATABASES.values():
        database["CONN_MAX_AGE"] = 0
    mcp_application = mcp_app()
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


application = build_application()

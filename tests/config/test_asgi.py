"""config/asgi.py, the application uvicorn serves: Django, its static files (the admin's and the
API docs' assets, offline), and the MCP server mounted at /mcp/ — through a real server."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest


def test_the_api_and_the_docs_and_their_assets_are_served(asgi_server: Any) -> None:
    with httpx.Client(base_url=asgi_server.url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/workspaces/").status_code == 401
        html = client.get("/api/v1/docs/").text
        assets = re.findall(r"""(?:src|href)=["'](/static/[^"']+)["']""", html)
        assert assets
        for url in assets:
            assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("path", ["/mcp", "/mcp/"])
def test_the_mcp_mount_answers_at_mcp(asgi_server: Any, path: str) -> None:
    response = httpx.post(f"{asgi_server.url}{path}", json={}, timeout=10)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_static_files_can_be_left_to_a_proxy(settings: Any) -> None:
    import asyncio

    from config.asgi import build_application

    settings.SERVE_STATIC = False
    settings.WEB_DATABASE_POOL_SIZE = 0
    app = build_application()
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Any:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "GET", "path": "/static/admin/css/base.css", "raw_path": b"",
        "query_string": b"", "headers": [(b"host", b"127.0.0.1")], "server": ("127.0.0.1", 80),
        "scheme": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "root_path": "",
    }  # fmt: skip

    async def call() -> None:
        await app(scope, receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 404

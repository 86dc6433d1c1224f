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


def test_an_upload_streams_through_the_server_into_the_sandbox(
    asgi_server: Any, sandbox_run: Any, local_sandboxes: Any, monkeypatch: Any
) -> None:
    from config.asgi import StreamedBody
    from tests.factories import make_api_key

    reads: list[int] = []
    read = StreamedBody.read

    def counted(self: StreamedBody, size: int | None = -1, /) -> bytes:
        data = read(self, size)
        reads.append(len(data))
        return data

    monkeypatch.setattr(StreamedBody, "read", counted)

    _, secret = make_api_key(workspace=sandbox_run.workspace)
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB: more than Django would keep in memory
    url = f"{asgi_server.url}/api/v1/runs/{sandbox_run.pk}/files/?path=/home/user/big.bin"
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/octet-stream"}

    def chunks() -> Any:  # sent in pieces, with a declared length
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    with httpx.Client(timeout=30) as client:  # twice on one keep-alive connection
        for _ in range(2):
            response = client.put(
                url, content=chunks(), headers={**headers, "Content-Length": str(len(data))}
            )
            assert response.status_code == 200, response.text
        assert client.get(f"{asgi_server.url}/healthz").status_code == 200
    assert response.json() == {"path": "/home/user/big.bin", "size": len(data)}
    home = local_sandboxes.root / sandbox_run.sandbox_id / "home"
    assert (home / "big.bin").read_bytes() == data
    assert sum(reads) == 2 * len(data) and max(reads) <= 1024 * 1024  # read from the connection
    # Chunked, no declared length: spooled first, the same bytes land.
    response = httpx.put(url, content=chunks(), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert (home / "big.bin").read_bytes() == data


def test_an_upload_refused_before_its_body_is_read_answers_and_the_server_goes_on(
    asgi_server: Any, sandbox_run: Any, settings: Any
) -> None:
    from tests.factories import make_api_key

    _, secret = make_api_key(workspace=sandbox_run.workspace)
    settings.UPLOAD_MAX_BYTES = 1000
    url = f"{asgi_server.url}/api/v1/runs/{sandbox_run.pk}/files/?path=/home/user/x.bin"
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/octet-stream"}
    with httpx.Client(timeout=30) as client:
        too_big = client.put(url, content=b"x" * 5000, headers=headers)
        assert too_big.status_code == 413, too_big.text
        nobody = client.put(url, content=b"x" * 10, headers={"Authorization": "Bearer alk_no"})
        assert nobody.status_code == 401
        assert client.get(f"{asgi_server.url}/healthz").status_code == 200

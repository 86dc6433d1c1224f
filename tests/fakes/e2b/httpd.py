"""HTTP plumbing for the double (stdlib only): request bodies, answers, the threaded server,
and a bridge to connectrpc's WSGI applications that keeps their streams streaming."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .state import FakeE2BState, RecordedRequest, Role

MAX_JSON_BODY = 1024 * 1024
FILE_CHUNK = 64 * 1024


class RequestBody:
    """A request body that ends where the request ends.

    De-chunks ``Transfer-Encoding: chunked`` (how the SDK sends streaming RPCs and file uploads;
    ``wsgiref`` cannot) and otherwise stops at ``Content-Length`` — never reading into the next
    request on a kept-alive connection, which is what makes connectrpc's read-until-EOF error
    path safe here.
    """

    def __init__(self, rfile: BufferedIOBase, headers: Message) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._remaining = int(headers.get("Content-Length") or 0)  # chunked: left in chunk
        self._eof = not self._chunked and self._remaining == 0

    def _next_chunk(self) -> None:
        size_line = self._rfile.readline(1024)
        if not size_line:
            raise ConnectionError("client closed the connection mid-body")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._eof = True
        self._remaining = size

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        while not self._eof and (wanted is None or wanted > 0):
            if self._remaining == 0:
                if not self._chunked:
                    self._eof = True
                    break
                self._next_chunk()
                continue
            step = self._remaining if wanted is None else min(self._remaining, wanted)
            data = self._rfile.read(step)
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            parts.append(data)
            self._remaining -= len(data)
            if wanted is not None:
                wanted -= len(data)
            if self._chunked and self._remaining == 0:
                self._rfile.readline(1024)  # the CRLF after each chunk
            if wanted is None:
                continue
            # Hand back what we have once the current chunk is used up: streaming RPCs must
            # not wait for the next chunk (the client sends it only after our answer).
            if self._chunked and self._remaining == 0:
                break
        return b"".join(parts)

    def drain(self) -> None:
        while self.read(FILE_CHUNK):
            pass


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()
    length: int | None = 0  # None: send chunked


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    data = json.dumps(payload).encode()
    return Response(
        status, [("Content-Type", "application/json"), *(headers or [])], [data], len(data)
    )


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"code": status, "message": message}, headers)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: RequestBody
    client: str
    record: RecordedRequest
    # What the handler resolved about the request, e.g. the sandbox a host name addresses.
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")

    def header(self, name: str) -> str | None:
        """A header, or what the routing put in its place."""
        return self.overrides.get(name.lower(), self.headers.get(name))

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> dict[str, Any]:
        data = self.body.read(MAX_JSON_BODY + 1)
        if len(data) > MAX_JSON_BODY:
            raise HTTPError(error(413, "body too large"))
        try:
            payload = json.loads(data) if data else {}
        except ValueError as e:
            raise HTTPError(error(400, f"invalid JSON body: {e}")) from e
        if not isinstance(payload, dict):
            raise HTTPError(error(400, "the body must be a JSON object"))
        self.record.body = payload
        return payload


class HTTPError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked responses for streams
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the double is quiet; tests read FakeE2BState.requests instead

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body = RequestBody(self.rfile, self.headers)
        record = RecordedRequest(
            role=self.server.role,
            method=self.command,
            path=unquote(url.path),
            query=parse_qs(url.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        request = Request(
            method=self.command,
            path=record.path,
            query=record.query,
            headers=self.headers,
            body=body,
            client=f"{self.client_address[0]}:{self.client_address[1]}",
            record=record,
        )
        with self.server.state.lock:
            self.server.state.requests.append(record)
        try:
            response = self.server.app(request)
        except HTTPError as e:
            response = e.response
        except Exception as e:  # a bug in the double: answer 500 rather than hang the client
            response = error(500, f"test double failed: {e!r}")
        record.status = response.status
        try:
            body.drain()  # keep-alive: the next request starts right after this body
        except (OSError, ValueError):
            self.close_connection = True
        self._send(response)

    def _send(self, response: Response) -> None:
        chunked = response.length is None
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif response.status != HTTPStatus.NO_CONTENT:
                self.send_header("Content-Length", str(response.length))
            self.end_headers()
            for chunk in response.body:
                if not chunk:
                    continue  # an empty chunk would end a chunked body early
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, ssl.SSLError):
            self.close_connection = True  # the client went away mid-answer
        finally:
            close = getattr(response.body, "close", None)
            if close is not None:
                close()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        role: Role,
        state: FakeE2BState,
        app: Callable[[Request], Response],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__((host, port), Handler)
        if tls is not None:
            # The handshake happens on the first read, in the request's own thread, so a slow
            # client never holds up accepting the next connection.
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls is not None else "http"
        self.role: Role = role
        self.state = state
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop kept-alive connections, so handler threads end with the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.server_address[0]!s}:{self.port}"


def call_wsgi(app: Callable[..., Iterable[bytes]], request: Request) -> Response:
    """Serve a request with a WSGI app (connectrpc's), streaming its body iterator as is."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": urlencode(request.query, doseq=True),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": request.client.rsplit(":", 1)[0],
        "REMOTE_PORT": request.client.rsplit(":", 1)[1],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": request.body,
        "wsgi.errors": NullErrors(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    headers = {name.lower(): value for name, value in request.headers.items()}
    headers.update(request.overrides)
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            environ[f"HTTP_{key}"] = value
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started["status"] = int(status.split(" ", 1)[0])
        started["headers"] = headers

    body = app(environ, start_response)
    answer = [(k, v) for k, v in started["headers"] if k.lower() != "content-length"]
    if isinstance(body, list | tuple):
        return Response(started["status"], answer, body, sum(len(b) for b in body))
    return Response(started["status"], answer, body, None)


class NullErrors:
    def write(self, text: str) -> None:
        pass

    def writelines(self, lines: Iterable[str]) -> None:
        pass

    def flush(self) -> None:
        pass

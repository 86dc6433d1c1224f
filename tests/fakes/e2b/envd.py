"""envd as the double serves it: routing to a sandbox, files over HTTP, and the Connect
services (``process.Process`` in process.py, ``filesystem.Filesystem`` here).

A request reaches a sandbox the two ways E2B's proxy routes it: by the headers
``E2b-Sandbox-Id`` and ``E2b-Sandbox-Port`` on the one sandbox URL (``E2B_SANDBOX_URL``), or by
host name, ``https://49983-<sandbox id>.<domain>``, on the per-sandbox domain create answers
with (infra packages/client-proxy: the host names the sandbox and port). A sandbox that is
gone, or paused, gets the proxy's 502 "… was not found": for a paused sandbox created without
auto-resume infra's proxy falls through to the same answer (client-proxy/internal/proxy/
proxy.go ``catalogResolution``), which the SDK reads as ``SandboxNotRunningException``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import stat
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.envd.process import process_connect, process_pb
from protobuf.wkt import Timestamp

from .httpd import FILE_CHUNK, HTTPError, Request, Response, call_wsgi, error, json_response
from .process import HOME_IN_TEXT, Event, FakeProcess, ProcessService
from .state import ENVD_PORT, SANDBOX_HOME, FakeE2BState, FakeSandbox

# https://49983-<sandbox id>.<domain>: how E2B's proxy reads a host name.
_SANDBOX_HOST = re.compile(r"(?P<port>\d+)-(?P<sandbox_id>[^.]+)\.(?P<domain>.+)")


_FILE_TYPES = {
    stat.S_IFREG: filesystem_pb.FileType.FILE,
    stat.S_IFDIR: filesystem_pb.FileType.DIRECTORY,
}


class FilesystemService(filesystem_connect.FilesystemSync):
    def __init__(self, envd: Envd) -> None:
        self.envd = envd

    def _resolve(self, ctx: RequestContext[Any, Any], path: str) -> tuple[FakeSandbox, Path]:
        sandbox = self.envd.sandbox_of(ctx)
        self.envd.state.latencies.wait("files")
        try:
            return sandbox, sandbox.host_path(path)
        except ValueError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from e

    @staticmethod
    def _entry(sandbox: FakeSandbox, host: Path) -> filesystem_pb.EntryInfo:
        link = host.lstat()
        is_symlink = stat.S_ISLNK(link.st_mode)
        target: str | None = None
        info = link
        if is_symlink:
            target = os.readlink(host)
            if target.startswith(str(sandbox.home)):
                target = SANDBOX_HOME + target.removeprefix(str(sandbox.home))
            # Report the target's type like envd, but never stat a host file through a link.
            with contextlib.suppress(OSError, ValueError):
                info = sandbox.host_path(sandbox.sandbox_path(host)).stat()
        file_type = _FILE_TYPES.get(
            stat.S_IFMT(info.st_mode),
            filesystem_pb.FileType.SYMLINK if is_symlink else filesystem_pb.FileType.UNSPECIFIED,
        )
        return filesystem_pb.EntryInfo(
            name=host.name,
            type=file_type,
            path=sandbox.sandbox_path(host),
            size=info.st_size,
            mode=stat.S_IMODE(info.st_mode),
            permissions=stat.filemode(info.st_mode),
            owner="user",
            group="user",
            modified_time=Timestamp.from_datetime(datetime.fromtimestamp(info.st_mtime, UTC)),
            symlink_target=target,
            is_symlink=is_symlink,
        )

    def stat(
        self,
        request: filesystem_pb.StatRequest,
        ctx: RequestContext[filesystem_pb.StatRequest, filesystem_pb.StatResponse],
    ) -> filesystem_pb.StatResponse:
        sandbox, host = self._resolve(ctx, request.path)
        if not host.exists() and not host.is_symlink():
            raise ConnectError(Code.NOT_FOUND, f"file not found: {request.path}")
        return filesystem_pb.StatResponse(entry=self._entry(sandbox, host))

    def list_dir(
        self,
        request: filesystem_pb.ListDirRequest,
        ctx: RequestContext[filesystem_pb.ListDirRequest, filesystem_pb.ListDirResponse],
    ) -> filesystem_pb.ListDirResponse:
        sandbox, host = self._resolve(ctx, request.path)
        if not host.exists():
            raise ConnectError(Code.NOT_FOUND, f"directory not found: {request.path}")
        if not host.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"path is not a directory: {request.path}")
        entries: list[filesystem_pb.EntryInfo] = []

        def walk(directory: Path, depth: int) -> None:
            for child in sorted(directory.iterdir()):
                entries.append(self._entry(sandbox, child))
                if depth > 1 and child.is_dir() and not child.is_symlink():
                    walk(child, depth - 1)

        walk(host, max(request.depth, 1))
        return filesystem_pb.ListDirResponse(entries=entries)

    def make_dir(
        self,
        request: filesystem_pb.MakeDirRequest,
        ctx: RequestContext[filesystem_pb.MakeDirRequest, filesystem_pb.MakeDirResponse],
    ) -> filesystem_pb.MakeDirResponse:
        sandbox, host = self._resolve(ctx, request.path)
        if host.exists():
            raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {request.path}")
        host.mkdir(parents=True)
        return filesystem_pb.MakeDirResponse(entry=self._entry(sandbox, host))

    def remove(
        self,
        request: filesystem_pb.RemoveRequest,
        ctx: RequestContext[filesystem_pb.RemoveRequest, filesystem_pb.RemoveResponse],
    ) -> filesystem_pb.RemoveResponse:
        _sandbox, host = self._resolve(ctx, request.path)
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)
        elif host.exists() or host.is_symlink():
            host.unlink()
        else:
            raise ConnectError(Code.NOT_FOUND, f"file not found: {request.path}")
        return filesystem_pb.RemoveResponse()

    def move(
        self,
        request: filesystem_pb.MoveRequest,
        ctx: RequestContext[filesystem_pb.MoveRequest, filesystem_pb.MoveResponse],
    ) -> filesystem_pb.MoveResponse:
        sandbox, source = self._resolve(ctx, request.source)
        _sandbox, destination = self._resolve(ctx, request.destination)
        if not source.exists():
            raise ConnectError(Code.NOT_FOUND, f"file not found: {request.source}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        source.rename(destination)
        return filesystem_pb.MoveResponse(entry=self._entry(sandbox, destination))


class Envd:
    """The envd side of the double: one WSGI-style app for every sandbox."""

    def __init__(self, state: FakeE2BState) -> None:
        self.state = state
        self.process_app = process_connect.ProcessWSGIApplication(ProcessService(self))
        self.filesystem_app = filesystem_connect.FilesystemWSGIApplication(FilesystemService(self))

    def __call__(self, request: Request) -> Response:
        sandbox_id, port = self._route(request)
        sandbox = self.state.find(sandbox_id)
        if sandbox is None or not sandbox.running:
            # What E2B's edge proxy answers; the SDK reads "was not found" as a dead sandbox.
            return json_response(
                502,
                {
                    "code": 502,
                    "message": f"The sandbox {sandbox_id} was not found",
                    "sandboxId": sandbox_id,
                },
            )
        if port != str(ENVD_PORT):
            return error(502, f"port {port} is not open")
        if request.header("X-Access-Token") != sandbox.envd_access_token:
            return error(401, "unauthorized access, please provide a valid access token")
        request.overrides["e2b-sandbox-id"] = sandbox_id
        if request.path.startswith("/process.Process/"):
            return call_wsgi(self.process_app, request)
        if request.path.startswith("/filesystem.Filesystem/"):
            return call_wsgi(self.filesystem_app, request)
        if request.path == "/health" and request.method == "GET":
            return Response(204)
        if request.path == "/files" and request.method == "GET":
            self.state.latencies.wait("files")
            return self.download(sandbox, request)
        if request.path == "/files" and request.method == "POST":
            self.state.latencies.wait("files")
            return self.upload(sandbox, request)
        return error(404, f"{request.method} {request.path} is not served by the double")

    def _route(self, request: Request) -> tuple[str, str]:
        """(sandbox id, port) from the host name on the per-sandbox domain, else from the
        headers the SDK sends to the one sandbox URL."""
        match = _SANDBOX_HOST.fullmatch(request.host)
        if match and match["domain"] == self.state.sandbox_domain:
            return match["sandbox_id"], match["port"]
        return request.header("E2b-Sandbox-Id") or "", request.header("E2b-Sandbox-Port") or ""

    def sandbox_of(self, ctx: RequestContext[Any, Any]) -> FakeSandbox:
        sandbox_id = ctx.request_headers.get("e2b-sandbox-id", "")
        sandbox = self.state.find(sandbox_id)
        if sandbox is None or not sandbox.running:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
        return sandbox

    def spawn(
        self,
        sandbox: FakeSandbox,
        config: process_pb.ProcessConfig,
        *,
        stdin: bool,
        tag: str | None,
        timeout_s: float | None,
        subscriber: queue.Queue[Event],
    ) -> FakeProcess:
        home = str(sandbox.home)

        def to_host(text: str) -> str:
            return HOME_IN_TEXT.sub(lambda _m: home, text)

        try:
            cwd = sandbox.host_path(config.cwd or SANDBOX_HOME)
        except ValueError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from e
        if not cwd.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{config.cwd}' does not exist")
        # A clean environment, as in a fresh VM: nothing of the test process leaks in. envd
        # sets PATH, HOME, USER, LOGNAME, then its defaults (E2B_SANDBOX, E2B_SANDBOX_ID, …),
        # then the request's envs (handler.go ``New``). TMPDIR is the double's: /tmp would be
        # the host's, shared by every sandbox and by the tests.
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": home,
            "USER": "user",
            "LOGNAME": "user",
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "TMPDIR": str(sandbox.tmp),
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": sandbox.sandbox_id,
        }
        env.update({k: to_host(v) for k, v in sandbox.envs.items()})
        env.update({k: to_host(v) for k, v in config.envs.items()})
        env.update(sandbox.marker_env())
        argv = [config.cmd, *(to_host(a) for a in config.args)]
        try:
            process = FakeProcess(
                sandbox,
                config,
                argv,
                cwd=cwd,
                env=env,
                stdin=stdin,
                tag=tag,
                timeout_s=timeout_s,
                subscriber=subscriber,
            )
        except OSError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, f"cannot start {config.cmd}: {e}") from e
        with self.state.lock:
            if process.running:
                sandbox.processes[process.pid] = process
        return process

    def download(self, sandbox: FakeSandbox, request: Request) -> Response:
        path = request.param("path") or ""
        try:
            host = sandbox.host_path(path)
        except ValueError as e:
            return error(400, str(e))
        if host.is_dir():
            return error(400, f"path '{path}' is a directory")
        try:
            handle = host.open("rb")
        except FileNotFoundError:
            return error(404, f"path '{path}' does not exist")
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(FILE_CHUNK):
                    yield chunk

        return Response(
            200,
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Disposition", f'attachment; filename="{host.name}"'),
            ],
            chunks(),
            size,
        )

    def upload(self, sandbox: FakeSandbox, request: Request) -> Response:
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            files = _parse_multipart(content_type, request.body.read())
            default_path = request.param("path")
            targets: list[tuple[str, bytes | None]] = [
                (filename or default_path or "", data) for filename, data in files
            ]
        else:
            targets = [(request.param("path") or "", None)]  # streamed below
        # The SDK's gzip upload (envd >= 0.5.7) compresses the octet-stream body.
        gzipped = request.headers.get("Content-Encoding", "").lower() == "gzip"
        written: list[dict[str, str]] = []
        for path, data in targets:
            try:
                host = sandbox.host_path(path)
            except ValueError as e:
                return error(400, str(e))
            if host.is_dir():
                return error(400, f"path '{path}' is a directory")
            host.parent.mkdir(parents=True, exist_ok=True)
            with host.open("wb") as out:
                if data is not None:
                    out.write(data)
                elif gzipped:
                    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    while chunk := request.body.read(FILE_CHUNK):
                        out.write(inflate.decompress(chunk))
                    out.write(inflate.flush())
                else:
                    while chunk := request.body.read(FILE_CHUNK):
                        out.write(chunk)
            written.append({"name": host.name, "type": "file", "path": sandbox.sandbox_path(host)})
        return json_response(200, written)


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str | None, bytes]]:
    """The file parts of a multipart/form-data body as (filename, bytes)."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise HTTPError(error(400, "multipart body without a boundary"))
    files: list[tuple[str | None, bytes]] = []
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        disposition = Message()
        disposition["Content-Disposition"] = headers.get("Content-Disposition", "")
        filename = disposition.get_param("filename", header="Content-Disposition")
        files.append((filename if isinstance(filename, str) else None, data.removesuffix(b"\r\n")))
    return files

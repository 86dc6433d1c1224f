"""The MCP server (SPEC §12): Airlock's agent interface for MCP clients, at `/mcp/`
(streamable HTTP, the official `mcp` SDK), mounted beside Django by config/asgi.py.

Every tool is the REST route it mirrors, with nothing of its own: the same input serializer
(so the same limits and messages), the same resolver of the run or artifact and the caller's
role, the same service or selector, the same output serializer. A refusal is a tool error
whose content is the API's error body, `{detail, code}` (plus `errors` for field errors), with
the HTTP status it would have had. The caller is a workspace API key (`Authorization: Bearer`,
the REST API's own lookup), acting with exactly its role.

It lives in artifacts, the floor above sandboxes, because its tools use both (like the
command job, `artifacts.jobs`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import close_old_connections, connections
from django.http.request import split_domain_port, validate_host
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.utils.encoders import JSONEncoder
from starlette.types import ASGIApp, Receive, Scope, Send

from artifacts import capture, selectors
from artifacts.api import ArtifactOut, ArtifactWaitQuery, CaptureIn
from artifacts.models import ArtifactType, ReviewState
from config.api import exception_handler
from config.exceptions import InvalidInput, NotFound, TooLarge
from sandboxes import execution, services, validation
from sandboxes import selectors as run_selectors
from sandboxes.api import (
    CompleteIn,
    ExecIn,
    ExecOut,
    FileEntryOut,
    RunCreateIn,
    RunOut,
    RunWaitQuery,
    UploadOut,
    resolve_run,
)
from sandboxes.backends.base import SANDBOX_HOME
from sandboxes.models import RunStatus
from workspaces.access import Actor
from workspaces.authentication import api_key_authenticate
from workspaces.models import ApiKey

# Content the read tools return in one answer: beyond it, download through the REST API.
READ_MAX_BYTES = 4 * 1024 * 1024
SCOPE_KEY = "airlock.api_key"

INSTRUCTIONS = """\
Airlock runs your code in a sandbox and keeps every file you want to hand out behind a human
review. Start a sandbox (sandbox_start), work in it (sandbox_exec, sandbox_write_file,
sandbox_read_file, sandbox_list_files), submit the files a human should see (artifact_submit),
wait for the decision (artifact_status with wait_s), read approved content (artifact_read), and
stop the sandbox when you are done (sandbox_stop). Paths are absolute, under /home/user.
A refused call is a tool error whose text is JSON: {"detail", "code", "status"}."""

server = MCPServer(
    "airlock",
    title="Airlock",
    instructions=INSTRUCTIONS,
    version="1.0.0",
    warn_on_duplicate_tools=True,
)


# --- plumbing ----------------------------------------------------------------------------


def _json(data: Any) -> Any:
    """What a DRF serializer produced, as plain JSON values (UUIDs, dates, decimals as text)."""
    return json.loads(json.dumps(data, cls=JSONEncoder))


def _result(data: dict[str, Any], *, error: bool = False) -> CallToolResult:
    data = _json(data)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data))],
        structured_content=data,
        is_error=error,
    )


def _refusal(exc: Exception) -> CallToolResult | None:
    """The API's answer to an error, as a tool error; None for an error the API would not
    answer (a bug: the SDK reports it without details and logs it)."""
    response = exception_handler(exc, {})
    if response is None:
        return None
    body = {**response.data, "status": response.status_code}
    if response.has_header("Retry-After"):
        body["retry_after_s"] = int(response["Retry-After"])
    return _result(body, error=True)


def _validated(serializer_class: type[serializers.Serializer[Any]], **data: Any) -> dict[str, Any]:
    """The tool's arguments through the route's own input serializer (arguments left out are
    not sent)."""
    serializer = serializer_class(data={k: v for k, v in data.items() if v is not None})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _key(ctx: Context) -> ApiKey:
    request = ctx.request_context.request
    key = getattr(request, "scope", {}).get(SCOPE_KEY)
    if not isinstance(key, ApiKey):  # the mount authenticates every request before this
        raise drf_exceptions.NotAuthenticated()
    return key


async def _call(ctx: Context, work: Callable[[Actor], dict[str, Any]]) -> CallToolResult:
    """Run `work` as the key's actor on a thread of its own, as Django runs a sync view under
    ASGI (its own thread-sensitive context, connections closed after), and turn what it
    returns or raises into the tool's result."""
    key = _key(ctx)

    def run() -> CallToolResult:
        close_old_connections()
        try:
            return _result(work(Actor(user=key.created_by, api_key=key)))
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal is None:
                raise
            return refusal
        finally:
            connections.close_all()

    async with ThreadSensitiveContext():
        return await sync_to_async(run, thread_sensitive=True)()


RunId = Annotated[uuid.UUID, Field(description="The run's id (sandbox_start's `id`).")]
ArtifactId = Annotated[uuid.UUID, Field(description="The artifact's id (artifact_submit's `id`).")]
SandboxPath = Annotated[str, Field(description=f"An absolute path under {SANDBOX_HOME}.")]
Encoding = Annotated[
    Literal["utf-8", "base64"],
    Field(description="How `content` is given or returned: UTF-8 text, or base64 bytes."),
]
Env = Annotated[
    dict[str, str] | None,
    Field(description="Environment variables. Stored for the command only; never shown back."),
]


# --- sandboxes ---------------------------------------------------------------------------


@server.tool(
    annotations=ToolAnnotations(title="Start a sandbox", destructive_hint=False),
    structured_output=False,
)
async def sandbox_start(
    ctx: Context,
    thread_id: Annotated[str, Field(description="Your agent thread's id: groups its runs.")],
    prompt: Annotated[str, Field(description="The task, shown to the human reviewers.")],
    template: Annotated[str | None, Field(description="Sandbox template (E2B).")] = None,
    env: Env = None,
    metadata: Annotated[
        dict[str, Any] | None, Field(description="Your labels (at most 16 keys).")
    ] = None,
    max_duration_ms: Annotated[
        int | None, Field(description="The run's longest life (default 1 h).")
    ] = None,
    idle_timeout_ms: Annotated[
        int | None, Field(description="Idle time before the sandbox is ended (default 15 min).")
    ] = None,
    on_idle: Annotated[
        Literal["kill", "pause"] | None,
        Field(
            description="Once idle: `kill` ends the run; `pause` pauses the sandbox (billed "
            "nothing; your next call resumes it): for a run that waits for a review."
        ),
    ] = None,
    wait_s: Annotated[
        float,
        Field(description="Wait up to this many seconds (≤ 60) for the sandbox to be running."),
    ] = 30,
) -> CallToolResult:
    """Start an interactive sandbox run in the key's workspace and wait until it is running.
    Returns the run: use its `id` with the other tools. Its `status` is `running` when it is
    ready (still `booting` if wait_s passed first: call again with sandbox_exec later)."""

    def work(actor: Actor) -> dict[str, Any]:
        assert actor.api_key is not None
        data = _validated(
            RunCreateIn,
            thread_id=thread_id,
            prompt=prompt,
            template=template,
            env=env,
            metadata=metadata,
            max_duration_ms=max_duration_ms,
            idle_timeout_ms=idle_timeout_ms,
            on_idle=on_idle,
        )
        wait = _validated(RunWaitQuery, wait_s=wait_s)
        run, _ = services.run_create(workspace=actor.api_key.workspace, actor=actor, **data)
        if wait.get("wait_s"):
            run = run_selectors.run_wait(
                run=run, while_status={RunStatus.BOOTING}, wait_s=wait["wait_s"]
            )
        return dict(RunOut(run).data)

    return await _call(ctx, work)


@server.tool(annotations=ToolAnnotations(title="Run a command"), structured_output=False)
async def sandbox_exec(
    ctx: Context,
    run_id: RunId,
    command: Annotated[str, Field(description="Run with bash -c, in the foreground.")],
    timeout_s: Annotated[
        float | None,
        Field(description="Kill it after this long (default 60 s, at most the run's remaining)."),
    ] = None,
    cwd: Annotated[str | None, Field(description=f"Default {SANDBOX_HOME}.")] = None,
    env: Env = None,
) -> CallToolResult:
    """Run one command in the sandbox and wait for it: its exit code, stdout, stderr (each
    at most EXEC_MAX_OUTPUT_BYTES, `truncated` beyond) and duration. A command that timed out
    is a result with `timed_out` true and `exit_code` null. Processes it leaves in the
    background keep running until the run ends."""

    def work(actor: Actor) -> dict[str, Any]:
        run, _ = resolve_run(actor=actor, run_id=run_id)
        data = _validated(ExecIn, command=command, timeout_s=timeout_s, cwd=cwd, env=env)
        return dict(ExecOut(execution.run_exec(run=run, actor=actor, **data)).data)

    return await _call(ctx, work)


@server.tool(annotations=ToolAnnotations(title="Write a file"), structured_output=False)
async def sandbox_write_file(
    ctx: Context,
    run_id: RunId,
    path: SandboxPath,
    content: Annotated[str, Field(description="The file's content (see `encoding`).")],
    encoding: Encoding = "utf-8",
) -> CallToolResult:
    """Write a file into the sandbox (parent directories made, an existing file replaced).
    Returns its path and size in bytes."""

    def work(actor: Actor) -> dict[str, Any]:
        run, _ = resolve_run(actor=actor, run_id=run_id)
        data = _decode(content, encoding)
        size = execution.run_upload_file(run=run, actor=actor, path=path, stream=io.BytesIO(data))
        return dict(UploadOut({"path": validation.clean_sandbox_path(path), "size": size}).data)

    return await _call(ctx, work)


@server.tool(
    annotations=ToolAnnotations(title="Read a file", read_only_hint=True),
    structured_output=False,
)
async def sandbox_read_file(
    ctx: Context, run_id: RunId, path: SandboxPath, encoding: Encoding = "utf-8"
) -> CallToolResult:
    """Read a file of the sandbox (at most 4 MiB here): UTF-8 text, or base64 for bytes. This
    is the sandbox's working copy, not a reviewed artifact."""

    def work(actor: Actor) -> dict[str, Any]:
        run, _ = resolve_run(actor=actor, run_id=run_id)
        clean = validation.clean_sandbox_path(path)
        chunks = execution.run_download_file(run=run, path=clean, actor=actor)
        data = _read_bounded(chunks)
        return {"path": clean, "size": len(data), "encoding": encoding,
                "content": _encode(data, encoding)}  # fmt: skip

    return await _call(ctx, work)


@server.tool(
    annotations=ToolAnnotations(title="List a directory", read_only_hint=True),
    structured_output=False,
)
async def sandbox_list_files(
    ctx: Context,
    run_id: RunId,
    path: Annotated[str, Field(description=f"A directory under {SANDBOX_HOME}.")] = SANDBOX_HOME,
) -> CallToolResult:
    """The entries of a sandbox directory: name, path, type (file, dir, symlink, other) and
    size of files."""

    def work(actor: Actor) -> dict[str, Any]:
        run, _ = resolve_run(actor=actor, run_id=run_id)
        clean = validation.clean_sandbox_path(path)
        entries = execution.run_list_files(run=run, path=clean, actor=actor)
        return {"path": clean, "entries": FileEntryOut(entries, many=True).data}

    return await _call(ctx, work)


@server.tool(
    annotations=ToolAnnotations(title="Stop a sandbox", destructive_hint=True),
    structured_output=False,
)
async def sandbox_stop(
    ctx: Context,
    run_id: RunId,
    outcome: Annotated[
        Literal["succeeded", "failed", "canceled"],
        Field(description="How the run ends: done, done but failed, or abandoned."),
    ] = "succeeded",
    error_message: Annotated[
        str | None, Field(description="With `failed`: what went wrong, for the reviewers.")
    ] = None,
) -> CallToolResult:
    """End the run and kill its sandbox (its background processes with it). Submitted
    artifacts stay for review. Member keys may end only the runs they started."""

    def work(actor: Actor) -> dict[str, Any]:
        run, _ = resolve_run(actor=actor, run_id=run_id, controls_run=True)
        if outcome == "canceled":
            return dict(RunOut(services.run_cancel(run=run, actor=actor)).data)
        error = {"code": "failed", "message": error_message} if error_message else None
        data = _validated(CompleteIn, status=outcome, error=error)
        run = services.run_complete(
            run=run, actor=actor, status=data["status"], error=data.get("error")
        )
        return dict(RunOut(run).data)

    return await _call(ctx, work)


# --- artifacts ---------------------------------------------------------------------------


@server.tool(annotations=ToolAnnotations(title="Submit a file for review"), structured_output=False)
async def artifact_submit(
    ctx: Context,
    run_id: RunId,
    path: SandboxPath,
    type: Annotated[
        ArtifactType | None,
        Field(description="file, image, code, log or other (default: from its name and bytes)."),
    ] = None,
    title: Annotated[
        str | None, Field(description="Shown to reviewers (default: its name).")
    ] = None,
) -> CallToolResult:
    """Copy a file of the running sandbox out as an artifact, pending a human review. Returns
    the artifact: wait for the decision with artifact_status."""

    def work(actor: Actor) -> dict[str, Any]:
        run, role = resolve_run(actor=actor, run_id=run_id)
        data = _validated(CaptureIn, path=path, type=type, title=title)
        artifact = capture.artifact_capture(run=run, actor=actor, **data)
        visible = selectors.content_visible(artifact=artifact, role=role)
        return dict(ArtifactOut(artifact, context={"content_visible": visible}).data)

    return await _call(ctx, work)


@server.tool(
    annotations=ToolAnnotations(title="Review status", read_only_hint=True),
    structured_output=False,
)
async def artifact_status(
    ctx: Context,
    artifact_id: ArtifactId,
    wait_s: Annotated[
        float,
        Field(
            description="Wait up to this many seconds (≤ 60) while it is pending: how to "
            "wait for the human decision without polling."
        ),
    ] = 0,
) -> CallToolResult:
    """An artifact's metadata and review state (`pending`, `approved`, `rejected`, with the
    reviewer's comment). With wait_s the answer comes as soon as it is decided."""

    def work(actor: Actor) -> dict[str, Any]:
        artifact, role = selectors.artifact_get(actor=actor, artifact_id=artifact_id)
        wait = _validated(ArtifactWaitQuery, wait_s=wait_s)
        if wait.get("wait_s"):
            artifact = selectors.artifact_wait(
                artifact=artifact, while_state={ReviewState.PENDING}, wait_s=wait["wait_s"]
            )
        visible = selectors.content_visible(artifact=artifact, role=role)
        return dict(ArtifactOut(artifact, context={"content_visible": visible}).data)

    return await _call(ctx, work)


@server.tool(
    annotations=ToolAnnotations(title="Read an artifact", read_only_hint=True),
    structured_output=False,
)
async def artifact_read(
    ctx: Context, artifact_id: ArtifactId, encoding: Encoding = "utf-8"
) -> CallToolResult:
    """An artifact's content (at most 4 MiB here). Member keys get it only once a reviewer
    approved it (until then: not_found, as the REST API answers); admin keys get any."""

    def work(actor: Actor) -> dict[str, Any]:
        artifact, _ = selectors.artifact_get(actor=actor, artifact_id=artifact_id, content=True)
        if artifact.size > READ_MAX_BYTES:
            raise TooLarge(f"The artifact is larger than {READ_MAX_BYTES} bytes; download it.")
        try:
            with default_storage.open(artifact.file.name, "rb") as file:
                data = file.read()
        except FileNotFoundError as exc:
            raise NotFound("The artifact's stored file is missing.") from exc
        return {"id": artifact.pk, "content_type": artifact.content_type, "size": len(data),
                "encoding": encoding, "content": _encode(data, encoding)}  # fmt: skip

    return await _call(ctx, work)


# --- content -----------------------------------------------------------------------------


def _decode(content: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return content.encode("utf-8")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("content is not valid base64.", code="invalid_base64") from exc


def _encode(data: bytes, encoding: str) -> str:
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            "The content is not UTF-8 text; ask for it with encoding base64.", code="not_text"
        ) from exc


def _read_bounded(chunks: Any) -> bytes:
    data = bytearray()
    try:
        for chunk in chunks:
            data += chunk
            if len(data) > READ_MAX_BYTES:
                raise TooLarge(f"The file is larger than {READ_MAX_BYTES} bytes; download it.")
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return bytes(data)


# --- the ASGI app ------------------------------------------------------------------------


def _unauthorized(detail: str, code: str = "authentication_failed") -> bytes:
    return json.dumps({"detail": detail, "code": code}).encode()


class ApiKeyMount:
    """The MCP app behind the REST API's API-key authentication and Django's ALLOWED_HOSTS:
    a request without a live workspace key is a 401 before the SDK sees it; the key goes to
    the tools in the request's scope."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
        host = headers.get("host", b"").decode("latin-1")
        if not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
            await _send(send, 400, _unauthorized("Invalid Host header.", "bad_host"))
            return
        key, error = await _authenticate(headers.get("authorization", b""))
        if key is None:
            await _send(send, 401, error, {"www-authenticate": 'Bearer realm="mcp"'})
            return
        await self.app({**scope, SCOPE_KEY: key}, receive, send)


async def _authenticate(header: bytes) -> tuple[ApiKey | None, bytes]:
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        detail = "Send a workspace API key: Authorization: Bearer alk_…"
        return None, _unauthorized(detail, "not_authenticated")
    try:
        raw = parts[1].decode()
    except UnicodeDecodeError:
        return None, _unauthorized("Malformed API key.")

    def lookup() -> ApiKey:
        try:
            return api_key_authenticate(raw)
        finally:
            connections.close_all()

    try:
        async with ThreadSensitiveContext():
            return await sync_to_async(lookup, thread_sensitive=True)(), b""
    except drf_exceptions.AuthenticationFailed as exc:
        return None, _unauthorized(str(exc.detail))


async def _send(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


MCP_PATH = "/mcp/"


def mcp_app() -> ASGIApp:
    """The streamable HTTP app at MCP_PATH: stateless (any web process answers any request,
    so several uvicorn workers need no sticky sessions) with plain JSON answers. Host checks
    are Django's (ALLOWED_HOSTS), so the SDK's own are off."""
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return ApiKeyMount(app)

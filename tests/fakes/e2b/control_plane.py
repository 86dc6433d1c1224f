"""E2B's control-plane API as the double serves it (``X-API-KEY``).

Routes, defaults and answers follow the spec (e2b-dev/E2B ``spec/openapi.yml``) and its server
(e2b-dev/infra ``packages/api/internal/handlers``: ``sandbox_create.go``, ``sandbox_connect.go``,
``sandbox_pause.go``, ``sandbox_resume.go``, ``sandbox_timeout.go``, ``sandbox_kill.go``,
``sandbox_get.go``, ``sandboxes_list.go``, ``utils/pagination.go``, ``utils/sandboxes_list.go``);
commits in docs/e2b.md. Only the routes below exist; anything else is a 404.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

from .httpd import HTTPError, Request, Response, error, json_response
from .state import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_TIMEOUT_V2_S,
    MAX_PAGE_SIZE,
    MAX_TIMEOUT_S,
    FakeE2BState,
    FakeSandbox,
    now,
)

_ID = r"(?P<sandbox_id>[^/]+)"
# infra sandbox_create.go ErrMsgDomainsRequireBlockAll
_DOMAINS_NEED_BLOCK_ALL = (
    "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny out "
    "to block all other traffic."
)
_ALL_TRAFFIC = "0.0.0.0/0"  # infra sandbox-network AllInternetTrafficCIDR

Order = Literal["asc", "desc"]


def _not_found(sandbox_id: str) -> HTTPError:
    # infra utils.SandboxNotFoundMsg
    return HTTPError(
        error(404, f"Sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")
    )


class ControlPlane:
    def __init__(self, state: FakeE2BState) -> None:
        self.state = state
        route = re.compile
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., Response]]] = [
            ("POST", route("/sandboxes"), "create", self.create_v1),
            ("POST", route("/v2/sandboxes"), "create", self.create_v2),
            ("GET", route("/sandboxes"), "listing", self.list_v1),
            ("GET", route("/v2/sandboxes"), "listing", self.list_v2),
            ("GET", route(f"/sandboxes/{_ID}"), "get", self.get),
            ("DELETE", route(f"/sandboxes/{_ID}"), "kill", self.kill),
            ("POST", route(f"/sandboxes/{_ID}/connect"), "connect", self.connect_v1),
            ("POST", route(f"/v2/sandboxes/{_ID}/connect"), "connect", self.connect_v2),
            ("POST", route(f"/sandboxes/{_ID}/timeout"), "set_timeout", self.set_timeout),
            ("POST", route(f"/sandboxes/{_ID}/pause"), "pause", self.pause),
            ("POST", route(f"/sandboxes/{_ID}/resume"), "resume", self.resume),
        ]

    def __call__(self, request: Request) -> Response:
        if fault := self.state.take_fault(request.method, request.path):
            retry = [("Retry-After", str(fault.retry_after))] if fault.retry_after else []
            return error(fault.status, f"injected fault {fault.status}", retry)
        if request.headers.get("X-API-KEY") != self.state.api_key:
            return error(401, "Invalid API key, it must start with 'e2b_' prefix")
        for method, pattern, operation, handler in self.routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                self.state.latencies.wait(operation)
                return handler(request, **match.groupdict())
        return error(404, f"{request.method} {request.path} is not served by the double")

    def _known(self, sandbox_id: str) -> FakeSandbox:
        sandbox = self.state.find(sandbox_id)
        if sandbox is None:
            raise _not_found(sandbox_id)
        return sandbox

    # -- bodies ---------------------------------------------------------------------------------

    @staticmethod
    def _timeout(body: dict[str, Any], default: int | None) -> int:
        """timeout_helper.go ``validateAndParseTimeout``: > 0 and within the plan's maximum."""
        timeout = body.get("timeout", default)
        if timeout is None:
            raise HTTPError(error(400, "timeout is required"))
        if not isinstance(timeout, int) or isinstance(timeout, bool):
            raise HTTPError(error(400, "timeout must be an integer"))
        if timeout <= 0:
            raise HTTPError(error(400, "Timeout must be greater than 0"))
        if timeout > MAX_TIMEOUT_S:
            raise HTTPError(
                error(400, f"Timeout cannot be greater than {MAX_TIMEOUT_S // 3600} hours")
            )
        return timeout

    @staticmethod
    def _str_map(body: dict[str, Any], key: str) -> dict[str, str]:
        value = body.get(key) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise HTTPError(error(400, f"{key} must map strings to strings"))
        return value

    @staticmethod
    def _network(body: dict[str, Any]) -> dict[str, Any] | None:
        """sandbox_create.go ``validateEgressRules``: deny entries are IPs or CIDRs, allow entries
        IPs, CIDRs or domains, and allowing a domain needs all other traffic denied."""
        network = body.get("network")
        if network is None:
            return None
        if not isinstance(network, dict):
            raise HTTPError(error(400, "network must be an object"))
        allow = network.get("allowOut") or []
        deny = network.get("denyOut") or []
        if not isinstance(allow, list) or not isinstance(deny, list):
            raise HTTPError(error(400, "allowOut and denyOut must be lists"))
        for entry in deny:
            if not _is_specified_ip_or_cidr(entry):
                raise HTTPError(error(400, f"invalid denied CIDR {entry}"))
        domains = [entry for entry in allow if not _is_ip_or_cidr(entry)]
        for entry in allow:
            if entry not in domains and not _is_specified_ip_or_cidr(entry):
                raise HTTPError(error(400, f"invalid allowed address {entry}"))
        if domains and _ALL_TRAFFIC not in deny:
            raise HTTPError(error(400, _DOMAINS_NEED_BLOCK_ALL))
        return network

    # -- lifecycle ------------------------------------------------------------------------------

    def create_v1(self, request: Request) -> Response:
        return self._create(request, DEFAULT_TIMEOUT_S)

    def create_v2(self, request: Request) -> Response:
        return self._create(request, DEFAULT_TIMEOUT_V2_S)

    def _create(self, request: Request, default_timeout: int) -> Response:
        body = request.json()
        template = body.get("templateID")
        if not isinstance(template, str) or not template:
            return error(400, "templateID is required")
        known = self.state.known_templates
        if known is not None and template.split(":", 1)[0] not in known:
            return error(404, f"template '{template}' not found")
        allow_internet = body.get("allow_internet_access")
        if allow_internet is not None and not isinstance(allow_internet, bool):
            return error(400, "allow_internet_access must be a boolean")
        sandbox = self.state.add_sandbox(
            template_id=template.split(":", 1)[0],
            metadata=self._str_map(body, "metadata"),
            envs=self._str_map(body, "envVars"),
            timeout_s=self._timeout(body, default_timeout),
            allow_internet_access=allow_internet,
            network=self._network(body),
            auto_pause=body.get("autoPause") is True,
        )
        return json_response(201, sandbox.created())

    def connect_v1(self, request: Request, sandbox_id: str) -> Response:
        # The spec's ConnectSandbox requires `timeout`.
        return self._connect(request, sandbox_id, None)

    def connect_v2(self, request: Request, sandbox_id: str) -> Response:
        return self._connect(request, sandbox_id, DEFAULT_TIMEOUT_V2_S)

    def _connect(self, request: Request, sandbox_id: str, default: int | None) -> Response:
        """sandbox_connect.go: a running sandbox's deadline only ever moves later (200); a
        paused one is resumed with the timeout from now (201)."""
        body = request.json()
        sandbox = self._known(sandbox_id)
        timeout = self._timeout(body, default)
        if sandbox.running:
            with self.state.lock:
                sandbox.end_at = max(sandbox.end_at, now() + timedelta(seconds=timeout))
            return json_response(200, sandbox.created())
        self.state.resume(sandbox, timeout)
        return json_response(201, sandbox.created())

    def kill(self, request: Request, sandbox_id: str) -> Response:
        """sandbox_kill.go: running or paused (its snapshot is deleted), 204; else 404."""
        sandbox = self._known(sandbox_id)
        with self.state.lock:
            sandbox.killed_at = now()
        sandbox.kill_processes()
        return Response(204)

    def set_timeout(self, request: Request, sandbox_id: str) -> Response:
        """sandbox_timeout.go: counts from now, both ways; a paused sandbox is not in the
        orchestrator's store, so it is a 404 (keep_alive.go)."""
        body = request.json()
        sandbox = self._known(sandbox_id)
        timeout = body.get("timeout")
        if not isinstance(timeout, int) or isinstance(timeout, bool):
            return error(400, "timeout is required")
        if not sandbox.running:
            raise _not_found(sandbox_id)
        with self.state.lock:
            sandbox.end_at = now() + timedelta(seconds=max(timeout, 0))
        return Response(204)

    def pause(self, request: Request, sandbox_id: str) -> Response:
        """sandbox_pause.go: 204, 409 when already paused, 404 when unknown. ``memory: false``
        keeps the files only (processes do not survive)."""
        body = request.json()
        sandbox = self._known(sandbox_id)
        if not sandbox.running:
            return error(409, f"Error pausing sandbox - sandbox '{sandbox_id}' is already paused")
        self.state.pause(sandbox, keep_memory=body.get("memory") is not False)
        return Response(204)

    def resume(self, request: Request, sandbox_id: str) -> Response:
        """sandbox_resume.go (deprecated route): 409 when running, 201 with the sandbox."""
        body = request.json()
        sandbox = self._known(sandbox_id)
        if sandbox.running:
            return error(409, f"Sandbox {sandbox_id} is already running")
        self.state.resume(sandbox, self._timeout(body, DEFAULT_TIMEOUT_S))
        return json_response(201, sandbox.created())

    def get(self, request: Request, sandbox_id: str) -> Response:
        return json_response(200, self._known(sandbox_id).detail())

    # -- listing --------------------------------------------------------------------------------

    def list_v1(self, request: Request) -> Response:
        """GET /sandboxes (deprecated): running sandboxes only, newest first, no pages."""
        wanted = _metadata_filter(request.param("metadata"))
        running = [s for s in self.state.live_sandboxes() if s.running and _has_metadata(s, wanted)]
        return json_response(200, [s.listed() for s in _sorted(running, "desc")])

    def list_v2(self, request: Request) -> Response:
        """GET /v2/sandboxes: running and paused unless ``state`` says; newest first unless
        ``order=asc``; ``startedAfter`` inclusive; ``template`` an ID or alias without tag;
        keyset pages of ``limit`` (1–100) with ``x-next-token`` (sandboxes_list.go)."""
        raw_order = request.param("order") or "desc"
        if raw_order not in ("asc", "desc"):
            return error(400, f'Invalid order parameter: unknown order "{raw_order}"')
        order: Order = "asc" if raw_order == "asc" else "desc"
        states = _states(request.param("state"))
        limit = _limit(request.param("limit"))
        cursor = _parse_cursor(request.param("nextToken"), order)
        wanted = _metadata_filter(request.param("metadata"))
        started_after = _started_after(request.param("startedAfter"))
        template = request.param("template")
        if template is not None and ":" in template:
            return error(
                400,
                "Invalid template: tags are not supported here because sandboxes are not "
                "tag-scoped",
            )
        matching = [
            s
            for s in self.state.live_sandboxes()
            if s.state in states
            and _has_metadata(s, wanted)
            and (started_after is None or s.started_at >= started_after)
            and (template is None or s.template_id == template)
        ]
        headers: list[tuple[str, str]] = []
        if "running" in states:
            headers.append(("X-Total-Running", str(sum(s.running for s in matching))))
        page = [s for s in _sorted(matching, order) if _after_cursor(s, cursor, order)]
        if len(page) > limit:
            page = page[:limit]
            headers.append(("X-Next-Token", _cursor(page[-1], order)))
        return json_response(200, [s.listed() for s in page], headers)


# -- helpers of the list ---------------------------------------------------------------------


def _sorted(sandboxes: list[FakeSandbox], order: Order) -> list[FakeSandbox]:
    """utils.SortPaginatedSandboxes: desc is (started desc, id asc), asc its exact reverse."""
    ascending = sorted(sandboxes, key=lambda s: s.sandbox_id, reverse=True)
    ascending.sort(key=lambda s: s.started_at)
    return ascending if order == "asc" else ascending[::-1]


def _after_cursor(sandbox: FakeSandbox, cursor: tuple[datetime, str] | None, order: Order) -> bool:
    if cursor is None:
        return True
    moment, sandbox_id = cursor
    if order == "asc":
        return sandbox.started_at > moment or (
            sandbox.started_at == moment and sandbox.sandbox_id < sandbox_id
        )
    return sandbox.started_at < moment or (
        sandbox.started_at == moment and sandbox.sandbox_id > sandbox_id
    )


def _cursor(sandbox: FakeSandbox, order: Order) -> str:
    """utils.generateCursor: base64url of "<RFC 3339 time>__<id>", with "__asc" when ascending."""
    text = f"{sandbox.started_at.astimezone(UTC).isoformat()}__{sandbox.sandbox_id}"
    if order == "asc":
        text += "__asc"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _parse_cursor(token: str | None, order: Order) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        parts = base64.urlsafe_b64decode(token.encode()).decode().split("__")
        token_order = "asc" if len(parts) == 3 and parts[2] == "asc" else "desc"
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "asc"):
            raise ValueError("invalid cursor format")
        if token_order != order:
            raise ValueError("cursor was issued for a different sort order")
        return datetime.fromisoformat(parts[0]), parts[1]
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise HTTPError(error(400, "Invalid next token")) from e


def _states(raw: str | None) -> set[str]:
    if raw is None:
        return {"running", "paused"}
    states = set(raw.split(","))
    if not states <= {"running", "paused"}:
        raise HTTPError(error(400, f"invalid state {raw}"))
    return states


def _limit(raw: str | None) -> int:
    try:
        limit = int(raw) if raw is not None else MAX_PAGE_SIZE
    except ValueError as e:
        raise HTTPError(error(400, "limit must be an integer")) from e
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise HTTPError(error(400, f"limit must be between 1 and {MAX_PAGE_SIZE}"))
    return limit


def _started_after(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as e:
        raise HTTPError(error(400, f"invalid startedAfter {raw}")) from e
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    """utils.parseFilters: unescape the whole query, split into key=value pairs, unescape each."""
    if raw is None:
        return {}
    wanted: dict[str, str] = {}
    for pair in unquote(raw).split("&"):
        parts = pair.split("=")
        if len(parts) != 2:
            raise HTTPError(error(400, "Error parsing metadata"))
        wanted[unquote(parts[0])] = unquote(parts[1])
    return wanted


def _has_metadata(sandbox: FakeSandbox, wanted: dict[str, str]) -> bool:
    return wanted.items() <= sandbox.metadata.items()


def _is_ip_or_cidr(entry: object) -> bool:
    if not isinstance(entry, str):
        return False
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def _is_specified_ip_or_cidr(entry: object) -> bool:
    """sandbox-network ``IsSpecifiedIPOrCIDR``: an IP or CIDR whose address is not 0.0.0.0 or
    ::, except the all-traffic CIDR 0.0.0.0/0 itself."""
    if not _is_ip_or_cidr(entry):
        return False
    assert isinstance(entry, str)
    if entry == _ALL_TRAFFIC:
        return True
    return not ipaddress.ip_address(entry.split("/", 1)[0]).is_unspecified

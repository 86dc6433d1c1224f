"""Run routes (SPEC §4). Thin: validate → service/selector → serialize."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import django_filters
from django.http import StreamingHttpResponse
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import exceptions as drf_exceptions
from rest_framework import generics, serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import APIView

from config.api import (
    CommaSeparatedChoices,
    StrictQueryMixin,
    StrictSerializer,
    paginate,
    paginate_rows,
    served_chunks,
    validated,
)
from config.exceptions import AirlockError, InvalidInput, PermissionDenied
from sandboxes import background, execution, selectors, services, validation
from sandboxes.backends.base import SANDBOX_HOME
from sandboxes.models import (
    ACTIVE_STATUSES,
    DEFAULT_OUTPUT_DIR,
    Command,
    CommandKind,
    CommandStatus,
    EndReason,
    OnIdle,
    RunStatus,
    SandboxRun,
)
from workspaces.access import Actor
from workspaces.api import WorkspaceScopedView
from workspaces.models import Role

MAX_TEXT = 100_000


class BlankIsNullChoiceField(serializers.ChoiceField):
    """A choice that is not made yet reads as null, not as an empty string."""

    def to_representation(self, value: Any) -> Any:
        return super().to_representation(value) if value else None


NETWORK_RULES_HELP = (
    "IP addresses, CIDR blocks or domain names (`*.example.com` for its subdomains), at most "
    f"{validation.MAX_NETWORK_RULES}. What a backend cannot enforce is a 400 naming it: the "
    "local backend has no network at all; E2B denies only IPs and CIDRs, and allows a domain "
    "only with `internet` false."
)
NETWORK_SCHEMA = {
    "type": "object",
    "description": "What the sandbox may reach (SPEC §15).",
    "properties": {
        "internet": {"type": "boolean"},
        "allow_out": {"type": "array", "items": {"type": "string"}},
        "deny_out": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["internet", "allow_out", "deny_out"],
}


class JSONBooleanField(serializers.BooleanField):
    """true or false, as JSON says them: not "yes", 1 or "on" (DRF's BooleanField takes those)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class NetworkIn(StrictSerializer):
    internet = JSONBooleanField(
        required=False, help_text="Default: SANDBOX_DEFAULT_INTERNET (false unless set)."
    )
    allow_out = serializers.ListField(
        child=serializers.CharField(max_length=253),
        max_length=validation.MAX_NETWORK_RULES,
        required=False,
        help_text="Reachable even with `internet` false. " + NETWORK_RULES_HELP,
    )
    deny_out = serializers.ListField(
        child=serializers.CharField(max_length=253),
        max_length=validation.MAX_NETWORK_RULES,
        required=False,
        help_text="Never reachable. " + NETWORK_RULES_HELP,
    )


class RunOut(serializers.ModelSerializer[SandboxRun]):
    end_reason = BlankIsNullChoiceField(choices=EndReason.choices, allow_null=True)
    workspace_id = serializers.UUIDField(read_only=True)
    created_by_id = serializers.IntegerField(read_only=True)
    api_key_id = serializers.UUIDField(read_only=True, allow_null=True)
    error = serializers.JSONField(allow_null=True)
    metadata = serializers.JSONField()
    files = serializers.SerializerMethodField()
    network = serializers.SerializerMethodField()
    paused_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="When its current pause began (paused runs)."
    )

    class Meta:
        model = SandboxRun
        fields = [
            "id", "workspace_id", "thread_id", "status", "prompt", "command", "template",
            "metadata", "files", "output_dir", "sandbox_id", "created_by_id", "api_key_id",
            "created_at", "running_at", "finished_at", "last_activity_at",
            "max_duration_ms", "idle_timeout_ms", "exit_code", "error", "end_reason",
            "cpu_count", "memory_mb", "cost_usd", "on_idle", "network", "paused_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_files(self, run: SandboxRun) -> list[str]:
        """The paths written before the command; their contents stay private like env."""
        return sorted(run.files)

    @extend_schema_field(NETWORK_SCHEMA)
    def get_network(self, run: SandboxRun) -> dict[str, Any]:
        return network_out(run.network)


def network_out(network: dict[str, Any] | None) -> dict[str, Any]:
    """A run's network as the API shows it ({} on runs made before networks were per run)."""
    network = network or {}
    return {
        "internet": bool(network.get("internet", False)),
        "allow_out": list(network.get("allow_out") or []),
        "deny_out": list(network.get("deny_out") or []),
    }


# The list's rows are built straight from `values()`, not through RunOut (which documents
# them and serializes single runs): building model instances and DRF fields for every row cost
# the list most of its time. Each value is formatted as RunOut formats it; a test compares the
# two on runs of every shape.
RUN_ROW_FIELDS = tuple(RunOut.Meta.fields)
_COST = Decimal("0.000001")  # cost_usd's decimal places
_NULLABLE_DATES = ("running_at", "finished_at", "paused_at")


def _iso(value: datetime) -> str:
    """DRF's DateTimeField output for a time the database returned (UTC: USE_TZ, TIME_ZONE)."""
    text = (value if value.utcoffset() == timedelta(0) else value.astimezone(UTC)).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """One run as RunOut writes it, from the run's column values (`RUN_ROW_FIELDS`)."""
    out = dict(row)
    out["id"] = str(row["id"])
    out["workspace_id"] = str(row["workspace_id"])
    out["api_key_id"] = str(row["api_key_id"]) if row["api_key_id"] is not None else None
    out["files"] = sorted(row["files"])
    out["created_at"] = _iso(row["created_at"])
    out["last_activity_at"] = _iso(row["last_activity_at"])
    for name in _NULLABLE_DATES:
        out[name] = _iso(row[name]) if row[name] is not None else None
    out["end_reason"] = row["end_reason"] or None
    out["network"] = network_out(row["network"])
    cost = row["cost_usd"]
    out["cost_usd"] = format(cost.quantize(_COST), "f") if cost is not None else None
    return out


class RunCreateIn(StrictSerializer):
    thread_id = serializers.CharField(max_length=255)
    prompt = serializers.CharField(max_length=MAX_TEXT, trim_whitespace=False)
    command = serializers.CharField(
        max_length=MAX_TEXT, required=False, allow_blank=True, trim_whitespace=False
    )
    template = serializers.CharField(max_length=100, required=False, allow_blank=True)
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=32_768),
        required=False,
    )
    metadata = serializers.DictField(required=False)
    files = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="{absolute path under /home/user: text content}, written before `command`.",
    )
    output_dir = serializers.CharField(max_length=1024, required=False, default=DEFAULT_OUTPUT_DIR)
    max_duration_ms = serializers.IntegerField(
        min_value=validation.MIN_TIMEOUT_MS,
        max_value=validation.MAX_DURATION_LIMIT_MS,
        required=False,
    )
    idle_timeout_ms = serializers.IntegerField(
        min_value=validation.MIN_TIMEOUT_MS,
        max_value=validation.MAX_DURATION_LIMIT_MS,
        required=False,
    )
    on_idle = serializers.ChoiceField(
        choices=OnIdle.choices,
        required=False,
        help_text="What the sweep does once the run is idle for `idle_timeout_ms`: `kill` ends "
        "it (`idle_timeout`); `pause` pauses its sandbox (billed nothing, outside the active-run "
        "limit) and the next exec, file, command or capture call resumes it. Default: "
        "SANDBOX_DEFAULT_ON_IDLE (`kill` unless set).",
    )
    network = NetworkIn(required=False)


class RunFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=RunStatus.choices)
    thread_id = django_filters.CharFilter()
    workspace = django_filters.UUIDFilter(field_name="workspace_id")

    class Meta:
        model = SandboxRun
        fields = ["status", "thread_id", "workspace"]


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="Repeat a request with the same key to get the same run back, not a second one.",
)


class WorkspaceRunsView(WorkspaceScopedView, generics.GenericAPIView[SandboxRun]):
    filter_backends = [DjangoFilterBackend]
    filterset_class = RunFilter
    queryset = SandboxRun.objects.none()

    @extend_schema(responses=RunOut(many=True), operation_id="workspaces_runs_list")
    def get(self, request: Request, workspace_id: str) -> Response:
        runs = self.filter_queryset(selectors.run_list(actor=self.actor, workspace=self.workspace))
        return paginate_rows(self, request, runs.values(*RUN_ROW_FIELDS), run_row, "-created_at")

    @extend_schema(
        request=RunCreateIn,
        parameters=[IDEMPOTENCY_KEY],
        responses={201: RunOut, 200: RunOut},
        description="Start a run: 201 `booting`. With an Idempotency-Key already used for the "
        "same request, 200 and the run it made.",
    )
    def post(self, request: Request, workspace_id: str) -> Response:
        key = request.headers.get("Idempotency-Key", "")
        if len(key) > 255 or not key.isprintable():
            raise InvalidInput("Idempotency-Key must be printable and at most 255 characters.")
        data = validated(RunCreateIn, request)
        run, created = services.run_create(
            workspace=self.workspace, actor=self.actor, idempotency_key=key, **data
        )
        return Response(RunOut(run).data, status=201 if created else 200)


class UsageTotalsOut(serializers.Serializer[Any]):
    runs = serializers.IntegerField()
    sandbox_seconds = serializers.FloatField(
        help_text="Time running (paused time left out), including runs still live, so far."
    )
    cost_usd = serializers.DecimalField(
        max_digits=20, decimal_places=6, help_text="Of runs that have ended."
    )


class UsageByStatusOut(serializers.Serializer[Any]):
    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {status: UsageTotalsOut() for status in RunStatus.values}


class UsageByDayOut(UsageTotalsOut):
    day = serializers.DateField()


class UsageOut(UsageTotalsOut):
    by_status = UsageByStatusOut(help_text="One entry per run status.")
    by_day = UsageByDayOut(many=True)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # "from" is a Python keyword: these fields cannot be declared as class attributes.
        fields = super().get_fields()
        fields["from"] = serializers.DateField(source="start")
        fields["to"] = serializers.DateField(source="end")
        return fields


USAGE_DEFAULT_DAYS = 30


class UsageQuery(StrictSerializer):
    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {
            "from": serializers.DateField(required=False),
            "to": serializers.DateField(required=False),
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("to") or timezone.localdate()
        start = attrs.get("from") or end - timedelta(days=USAGE_DEFAULT_DAYS - 1)
        if start > end:
            raise serializers.ValidationError({"from": ["`from` is after `to`."]})
        if (end - start).days + 1 > selectors.USAGE_MAX_DAYS:
            raise serializers.ValidationError(
                {"from": [f"The period is longer than {selectors.USAGE_MAX_DAYS} days."]}
            )
        return {"start": start, "end": end}


class WorkspaceUsageView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"GET": Role.ADMIN}
    query = {"GET": UsageQuery}

    @extend_schema(
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="Default: 29 days before `to`"),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Default: today"),
        ],
        responses=UsageOut,
        description=(
            "Runs started from `from` to `to` (whole days in UTC, both included, at most "
            f"{selectors.USAGE_MAX_DAYS}): how many, their sandbox-seconds and cost, in total, "
            "by status and by day. Admins and owners."
        ),
    )
    def get(self, request: Request, workspace_id: str) -> Response:
        usage = selectors.run_usage(workspace=self.workspace, **self.query_data)
        return Response(UsageOut(usage).data)


class RunListView(StrictQueryMixin, generics.GenericAPIView[SandboxRun]):
    filter_backends = [DjangoFilterBackend]
    filterset_class = RunFilter
    queryset = SandboxRun.objects.none()

    @extend_schema(responses=RunOut(many=True), operation_id="runs_list")
    def get(self, request: Request) -> Response:
        runs = self.filter_queryset(selectors.run_list(actor=Actor.from_request(request)))
        return paginate_rows(self, request, runs.values(*RUN_ROW_FIELDS), run_row, "-created_at")


class RunScopedView(StrictQueryMixin, APIView):
    """Base of every `runs/{id}/…` route: resolves the run once (404 for outsiders) and
    checks the role for the method. Activity is recorded by what works in the sandbox (exec,
    files, commands, captures), never by reading the run."""

    minimum_role: ClassVar[dict[str, Role]] = {}
    controls_run = False  # cancel/complete: members only on their own runs
    run: SandboxRun
    role: Role
    actor: Actor

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.actor = Actor.from_request(request)
        self.run, self.role = resolve_run(
            actor=self.actor,
            run_id=kwargs["run_id"],
            minimum=self.minimum_role.get(request.method or "GET", Role.MEMBER),
            controls_run=self.controls_run,
        )


def resolve_run(
    *, actor: Actor, run_id: Any, minimum: Role = Role.MEMBER, controls_run: bool = False
) -> tuple[SandboxRun, Role]:
    """What every run route (and MCP tool) starts with: the run and the caller's role, 404
    for outsiders, 403 below `minimum`, and with `controls_run` (ending it) 403 for a member
    on someone else's run."""
    run, role = selectors.run_get(actor=actor, run_id=run_id, minimum=minimum)
    if controls_run and not selectors.run_is_controlled_by(run=run, actor=actor, role=role):
        raise PermissionDenied("Members may only end their own runs.")
    return run, role


class RunWaitQuery(StrictSerializer):
    wait_s = serializers.FloatField(
        min_value=0,
        max_value=selectors.WAIT_MAX_S,
        required=False,
        help_text="Wait up to this many seconds for the run to leave `while_status`.",
    )
    while_status = CommaSeparatedChoices(
        choices=RunStatus.values,
        required=False,
        help_text="With wait_s: the statuses to wait through (default: booting,running).",
    )


class JobOut(serializers.Serializer[Command]):
    """The run's own command as the job ran it (its row in the command history); documented
    by JOB_SCHEMA."""

    status = serializers.ChoiceField(choices=CommandStatus.choices)
    exit_code = serializers.IntegerField(allow_null=True)
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    truncated = serializers.BooleanField(
        help_text="Output was cut to its last 64 KiB, or by EXEC_MAX_OUTPUT_BYTES."
    )
    stdout = serializers.SerializerMethodField(
        help_text="The last 64 KiB of what it printed: only for the run's creator (its user or "
        "API key) and admins/owners; null for other members."
    )
    stderr = serializers.SerializerMethodField(help_text="Like stdout.")

    def get_stdout(self, command: Command) -> str | None:
        return command.stdout_tail if self.context.get("output_visible") else None

    def get_stderr(self, command: Command) -> str | None:
        return command.stderr_tail if self.context.get("output_visible") else None


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


# Inline, not a $ref: a nullable reference (allOf + nullable) is not what OpenAPI 3.0
# validators accept for null. The `api` test fixture checks answers against this shape.
JOB_SCHEMA = _nullable(
    "object",
    description="The job's command (runs started with `command`), once it has started; null "
    "otherwise. `stdout`/`stderr` are the last 64 KiB it printed, only for the run's creator "
    "(its user or API key) and admins/owners (null for other members): the airlock gates files "
    "(artifacts), not what the agent's own commands print back to it.",
    properties={
        "status": {"type": "string", "enum": CommandStatus.values},
        "exit_code": _nullable("integer"),
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": _nullable("string", format="date-time"),
        "duration_ms": _nullable("integer"),
        "truncated": {"type": "boolean"},
        "stdout": _nullable("string"),
        "stderr": _nullable("string"),
    },
    required=sorted(JobOut._declared_fields),
)


class RunDetailOut(RunOut):
    job = serializers.SerializerMethodField()

    class Meta(RunOut.Meta):
        fields = [*RunOut.Meta.fields, "job"]
        read_only_fields = fields

    @extend_schema_field(JOB_SCHEMA)
    def get_job(self, run: SandboxRun) -> dict[str, Any] | None:
        command = self.context.get("job")
        return dict(JobOut(command, context=self.context).data) if command is not None else None


def _run_detail(run: SandboxRun, actor: Actor, role: Role) -> dict[str, Any]:
    """The run with its job's row (output for those who may read it)."""
    job = (
        selectors.command_list(run=run).filter(kind=CommandKind.JOB).last() if run.command else None
    )
    visible = selectors.run_is_controlled_by(run=run, actor=actor, role=role)
    detail = run_row({name: getattr(run, name) for name in RUN_ROW_FIELDS})
    context = {"output_visible": visible}
    detail["job"] = dict(JobOut(job, context=context).data) if job is not None else None
    return detail


class RunDetailView(RunScopedView):
    query = {"GET": RunWaitQuery}

    @extend_schema(
        parameters=[RunWaitQuery],
        responses=RunDetailOut,
        description="One run. With `wait_s`, the answer comes as soon as the run's status is "
        "none of `while_status` (default `booting,running`), or after `wait_s` seconds (at most "
        f"{selectors.WAIT_MAX_S}) with the run as it is then. Waiting is not activity: it does "
        "not keep the sandbox alive.",
    )
    def get(self, request: Request, run_id: str) -> Response:
        query = self.query_data
        run = self.run
        if query.get("wait_s"):
            while_status = set(query.get("while_status") or ACTIVE_STATUSES)
            run = selectors.run_wait(run=run, while_status=while_status, wait_s=query["wait_s"])
        return Response(_run_detail(run, self.actor, self.role))


class ExecIn(StrictSerializer):
    command = serializers.CharField(max_length=MAX_TEXT, trim_whitespace=False)
    timeout_s = serializers.FloatField(min_value=0.1, required=False)
    cwd = serializers.CharField(max_length=validation.PATH_MAX_LENGTH, required=False)
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=32_768),
        required=False,
    )


class ExecExitOut(serializers.Serializer[Any]):
    exit_code = serializers.IntegerField(allow_null=True, help_text="null when it timed out")
    truncated = serializers.BooleanField(
        help_text=f"stdout or stderr was cut at EXEC_MAX_OUTPUT_BYTES (default {1024 * 1024})."
    )
    timed_out = serializers.BooleanField()
    duration_ms = serializers.IntegerField()
    command_id = serializers.UUIDField(help_text="Its row in the run's command history.")


class ExecOut(ExecExitOut):
    stdout = serializers.CharField()
    stderr = serializers.CharField()


class EventStreamRenderer(BaseRenderer):
    """`Accept: text/event-stream` on the routes that stream. Errors raised before the stream
    starts are still answered as JSON (see `StreamingView`)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Any = None,
    ) -> bytes:
        # Only errors reach a renderer here, and StreamingView answers those as JSON.
        return json.dumps(data, cls=JSONEncoder).encode()


class StreamingView(RunScopedView):
    """A route that answers JSON, or Server-Sent Events when the client asks for them."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def wants_stream(self, request: Request) -> bool:
        return isinstance(getattr(request, "accepted_renderer", None), EventStreamRenderer)

    def handle_exception(self, exc: Exception) -> Response:
        # An error before the stream starts (bad input, a run not running) is JSON, whatever
        # the client accepts, with its status code.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, cls=JSONEncoder)}\n\n".encode()


SSE_HEARTBEAT = b": keepalive\n\n"


async def exec_events(prepared: execution.PreparedExec) -> AsyncIterator[bytes]:
    """A streamed exec as Server-Sent Events: `stdout`/`stderr` `{text}` as the command
    prints, then one `exit` (or one `error` `{detail, code}` when the sandbox failed under
    it), with a comment line every SSE_HEARTBEAT_S of silence."""
    try:
        async for item in execution.exec_stream(prepared, heartbeat_s=SSE_HEARTBEAT_S):
            if item is None:
                yield SSE_HEARTBEAT
            elif isinstance(item, execution.ExecOutput):
                yield sse(item.stream, {"text": item.text})
            else:
                yield sse("exit", ExecExitOut(item).data)
    except AirlockError as exc:
        yield sse("error", {"detail": exc.detail, "code": exc.code})


SSE_HEARTBEAT_S = 15.0
EXEC_STREAM_DESCRIPTION = (
    "Run one command in the sandbox and wait for it (`timeout_s`: default 60 s or the run's "
    "remaining time). A timed-out command is a result: `timed_out` true, `exit_code` null.\n\n"
    "With `Accept: text/event-stream` the output is streamed as Server-Sent Events while the "
    'command runs: `event: stdout` / `event: stderr` with `data: {"text": …}`, then one '
    "`event: exit` with `data: {exit_code, duration_ms, timed_out, truncated, command_id}` "
    "(or one `event: error` with `data: {detail, code}` if the sandbox failed under it). A "
    "comment line is sent every 15 s of silence. Closing the connection kills the command and "
    "everything it started. Errors found before the command starts are JSON, as usual."
)


class RunExecView(StreamingView):
    @extend_schema(
        request=ExecIn,
        # The stream is asked for with Accept, not DRF's ?format= (which it does not take).
        parameters=[OpenApiParameter("format", exclude=True)],
        responses={
            (200, "application/json"): ExecOut,
            (200, "text/event-stream"): OpenApiTypes.STR,
        },
        description=EXEC_STREAM_DESCRIPTION,
    )
    def post(self, request: Request, run_id: str) -> Response | StreamingHttpResponse:
        data = validated(ExecIn, request)
        if self.wants_stream(request):
            prepared = execution.exec_prepare(run=self.run, actor=self.actor, **data)
            return event_stream_response(exec_events(prepared))
        result = execution.run_exec(run=self.run, actor=self.actor, **data)
        return Response(ExecOut(result).data)


def event_stream_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


# --- the command history and background commands --------------------------------------------


class CommandOut(serializers.ModelSerializer[Command]):
    """A command of the run's history. Its output tails (the last 64 KiB of each stream) are
    content: null unless the caller started the run or is an admin or owner."""

    timed_out = serializers.BooleanField(read_only=True)
    error = serializers.JSONField(allow_null=True, read_only=True, help_text="{code, message}")
    env_names = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text="Never the values."
    )
    stdout_tail = serializers.SerializerMethodField()
    stderr_tail = serializers.SerializerMethodField()

    class Meta:
        model = Command
        fields = [
            "id", "kind", "command", "cwd", "env_names", "status", "actor", "started_at",
            "ended_at", "exit_code", "duration_ms", "timed_out", "truncated", "error",
            "stdout_bytes", "stderr_bytes", "stdout_tail", "stderr_tail",
        ]  # fmt: skip
        read_only_fields = fields

    def _visible(self) -> bool:
        return bool(self.context.get("output_visible"))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_stdout_tail(self, command: Command) -> str | None:
        return command.stdout_tail if self._visible() else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_stderr_tail(self, command: Command) -> str | None:
        return command.stderr_tail if self._visible() else None


class CommandOutputOut(serializers.Serializer[Any]):
    stdout = serializers.CharField()
    stderr = serializers.CharField()
    stdout_offset = serializers.IntegerField()
    stderr_offset = serializers.IntegerField()
    stdout_next = serializers.IntegerField()
    stderr_next = serializers.IntegerField()


# Inline, not a component: a nullable reference is beyond OpenAPI 3.0 validators.
COMMAND_OUTPUT_SCHEMA = {
    "type": "object",
    "nullable": True,
    "description": "Its output after the byte offsets asked for (`stdout_offset`, "
    "`stderr_offset`: where the text starts; `*_next`: where to read on); null unless you "
    "may read it.",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        **{
            f"{stream}_{end}": {"type": "integer"}
            for stream in ("stdout", "stderr")
            for end in ("offset", "next")
        },
    },
    "required": [
        "stdout",
        "stderr",
        "stdout_offset",
        "stderr_offset",
        "stdout_next",
        "stderr_next",
    ],
}


class CommandDetailOut(CommandOut):
    output = serializers.SerializerMethodField()

    class Meta(CommandOut.Meta):
        fields = [*CommandOut.Meta.fields, "output"]
        read_only_fields = fields

    @extend_schema_field(COMMAND_OUTPUT_SCHEMA)
    def get_output(self, command: Command) -> dict[str, Any] | None:
        read = getattr(command, "output", None)
        return CommandOutputOut(read).data if read is not None and self._visible() else None


class CommandStartIn(ExecIn):
    timeout_s = serializers.FloatField(
        min_value=0.1,
        required=False,
        help_text="Kill it past this long (default: when the run ends; at most its remaining "
        "time).",
    )


class CommandFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=CommandKind.choices)
    status = django_filters.ChoiceFilter(choices=CommandStatus.choices)

    class Meta:
        model = Command
        fields = ["kind", "status"]


class CommandOutputQuery(StrictSerializer):
    stdout_offset = serializers.IntegerField(min_value=0, required=False, default=0)
    stderr_offset = serializers.IntegerField(min_value=0, required=False, default=0)


class RunCommandsView(RunScopedView, generics.GenericAPIView[Command]):
    filter_backends = [DjangoFilterBackend]
    filterset_class = CommandFilter
    queryset = Command.objects.none()

    @extend_schema(
        responses=CommandOut(many=True),
        operation_id="runs_commands_list",
        description="The run's command history, oldest first: every exec, background command "
        "and the job's command. Output tails are null unless you started the run or are an "
        "admin or owner.",
    )
    def get(self, request: Request, run_id: str) -> Response:
        commands = self.filter_queryset(selectors.command_list(run=self.run))
        rows = functools.partial(CommandOut, context={"output_visible": self.output_visible()})
        return paginate(self, request, commands, rows, "started_at")

    @extend_schema(
        request=CommandStartIn,
        responses={202: CommandOut},
        description="Start a command in the background: 202 at once, `status: running`. Read "
        "its output so far with GET …/commands/{id}/?stdout_offset=&stderr_offset=, kill it "
        "with POST …/kill/. It ends when it exits, is killed, passes `timeout_s`, or the run "
        "ends (then it is killed).",
    )
    def post(self, request: Request, run_id: str) -> Response:
        data = validated(CommandStartIn, request)
        command = background.command_start_background(run=self.run, actor=self.actor, **data)
        body = CommandOut(command, context={"output_visible": self.output_visible()}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    def output_visible(self) -> bool:
        return selectors.command_output_visible(run=self.run, actor=self.actor, role=self.role)


class RunCommandDetailView(RunScopedView):
    query = {"GET": CommandOutputQuery}

    @extend_schema(
        parameters=[CommandOutputQuery],
        responses=CommandDetailOut,
        description="One command: how it stands and, for the run's creator and admins, its "
        "output after the given byte offsets (`output`; null for other members). A "
        "background command that ended meanwhile is recorded as ended by this read.",
    )
    def get(self, request: Request, run_id: str, command_id: str) -> Response:
        command = selectors.command_get(run=self.run, command_id=command_id)
        visible = selectors.command_output_visible(run=self.run, actor=self.actor, role=self.role)
        read = background.command_read(run=self.run, command=command, **self.query_data)
        command.output = read if visible else None  # type: ignore[attr-defined]
        body = CommandDetailOut(command, context={"output_visible": visible}).data
        return Response(body)


class RunCommandKillView(RunScopedView):
    controls_run = True

    @extend_schema(
        request=None,
        responses=CommandOut,
        description="Kill a background command and everything it started (members: in runs "
        "they started). A command that already ended is answered as it is.",
    )
    def post(self, request: Request, run_id: str, command_id: str) -> Response:
        command = selectors.command_get(run=self.run, command_id=command_id)
        command = background.command_kill(run=self.run, command=command, actor=self.actor)
        return Response(CommandOut(command, context={"output_visible": True}).data)


class PathQuery(StrictSerializer):
    path = serializers.CharField(
        max_length=validation.PATH_MAX_LENGTH,
        trim_whitespace=False,
        help_text=f"Absolute, under {SANDBOX_HOME}",
    )


class DirectoryQuery(StrictSerializer):
    path = serializers.CharField(
        max_length=validation.PATH_MAX_LENGTH,
        trim_whitespace=False,
        required=False,
        default=SANDBOX_HOME,
        help_text=f"Absolute, under {SANDBOX_HOME} (default)",
    )


class UploadOut(serializers.Serializer[Any]):
    path = serializers.CharField()
    size = serializers.IntegerField()


class RunFilesView(RunScopedView):
    query = {"GET": PathQuery, "PUT": PathQuery}

    @extend_schema(
        parameters=[PathQuery],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses=UploadOut,
        description="Write the raw request body to `path` (parents created, replaced if "
        "there). The body is the file's bytes: a multipart form is refused (415), so that no "
        "form envelope ends up in the file.",
    )
    def put(self, request: Request, run_id: str) -> Response:
        if request.content_type.lower().startswith("multipart/"):
            raise drf_exceptions.UnsupportedMediaType(
                request.content_type,
                detail="Send the file's bytes as the raw body (Content-Type: "
                "application/octet-stream), not as a multipart form.",
            )
        path = self.query_data["path"]
        declared = request.META.get("CONTENT_LENGTH") or ""
        size = execution.run_upload_file(
            run=self.run,
            actor=self.actor,
            path=path,
            stream=request._request,
            size=int(declared) if declared.isdigit() else None,
        )
        return Response({"path": validation.clean_sandbox_path(path), "size": size})

    @extend_schema(
        parameters=[PathQuery],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
        description="The file's bytes, as an attachment.",
    )
    def get(self, request: Request, run_id: str) -> StreamingHttpResponse:
        path = validation.clean_sandbox_path(self.query_data["path"])
        # Large chunks: under ASGI each one crosses to a worker thread and back.
        chunks = execution.run_download_file(
            run=self.run, path=path, chunk_size=1024 * 1024, actor=self.actor
        )
        response = StreamingHttpResponse(
            served_chunks(request, chunks), content_type="application/octet-stream"
        )
        filename = path.rsplit("/", 1)[-1] or "file"
        response["Content-Disposition"] = _attachment(filename)
        response["X-Content-Type-Options"] = "nosniff"
        return response


def _attachment(filename: str) -> str:
    from django.utils.http import content_disposition_header

    return content_disposition_header(as_attachment=True, filename=filename) or "attachment"


class FileEntryOut(serializers.Serializer[Any]):
    name = serializers.CharField()
    path = serializers.CharField()
    type = serializers.ChoiceField(choices=["file", "dir", "symlink", "other"])
    size = serializers.IntegerField(allow_null=True)


class FileListOut(serializers.Serializer[Any]):
    path = serializers.CharField()
    entries = FileEntryOut(many=True)


class RunFileListView(RunScopedView):
    query = {"GET": DirectoryQuery}

    @extend_schema(parameters=[DirectoryQuery], responses=FileListOut)
    def get(self, request: Request, run_id: str) -> Response:
        path = validation.clean_sandbox_path(self.query_data["path"])
        entries = execution.run_list_files(run=self.run, path=path, actor=self.actor)
        return Response({"path": path, "entries": FileEntryOut(entries, many=True).data})


class ErrorIn(StrictSerializer):
    code = serializers.CharField(max_length=64)
    message = serializers.CharField(max_length=2000)


class CompleteIn(StrictSerializer):
    status = serializers.ChoiceField(choices=[RunStatus.SUCCEEDED, RunStatus.FAILED])
    error = ErrorIn(required=False)


class RunCompleteView(RunScopedView):
    controls_run = True

    @extend_schema(request=CompleteIn, responses=RunOut)
    def post(self, request: Request, run_id: str) -> Response:
        data = validated(CompleteIn, request)
        run = services.run_complete(
            run=self.run, actor=self.actor, status=data["status"], error=data.get("error")
        )
        return Response(RunOut(run).data)


class RunCancelView(RunScopedView):
    controls_run = True

    @extend_schema(request=None, responses=RunOut)
    def post(self, request: Request, run_id: str) -> Response:
        run = services.run_cancel(run=self.run, actor=self.actor)
        return Response(RunOut(run).data, status=status.HTTP_200_OK)


PAUSE_DESCRIPTION = (
    "Pause the run's sandbox now (SPEC §15): its processes, memory and files are kept, it is "
    "billed nothing and does not count toward the workspace's active runs; it still ends at its "
    "max duration. The next exec, file, command or capture call resumes it (or POST "
    "…/resume/). A paused run answers 200 as it is; a run that is not running, or a job run "
    "(started with `command`: its job holds it), is a 409; a backend that cannot pause is a "
    "400."
)
RESUME_DESCRIPTION = (
    "Resume a paused run's sandbox: it runs again, with its idle timeout from now. A running "
    "run answers 200 as it is; a run that ended is a 409; a workspace already at "
    "WORKSPACE_MAX_ACTIVE_RUNS is a 429 with Retry-After."
)


class RunPauseView(RunScopedView):
    controls_run = True

    @extend_schema(request=None, responses=RunOut, description=PAUSE_DESCRIPTION)
    def post(self, request: Request, run_id: str) -> Response:
        run = services.run_pause(run=self.run, actor=self.actor)
        return Response(RunOut(run).data)


class RunResumeView(RunScopedView):
    controls_run = True

    @extend_schema(request=None, responses=RunOut, description=RESUME_DESCRIPTION)
    def post(self, request: Request, run_id: str) -> Response:
        run = services.run_resume(run=self.run, actor=self.actor)
        return Response(RunOut(run).data)

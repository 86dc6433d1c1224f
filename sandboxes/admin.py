"""Runs in the admin: read-only, with a cancel action that goes through the service. What a
reviewer reads is shown as they would read it (dollars, durations, short ids with the
prompt's first line); the bookkeeping the sweep and the API keep for themselves (claims,
deadline pushes, the idempotency key and fingerprint, env, files) is not shown. The artifacts
app replaces the change page with the run review page (artifacts.admin)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Left
from django.http import HttpRequest
from django.template.defaultfilters import truncatechars
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from config.exceptions import AirlockError
from sandboxes import selectors, services
from sandboxes.models import LIVE_STATUSES, Command, OnIdle, RunStatus, SandboxRun
from workspaces.admin import (
    NO_SAVE_BUTTONS,
    AdministeredWorkspaceFilter,
    LargeListAdmin,
    ReadOnlyInline,
    WorkspaceAdmin,
    WorkspaceScopedAdmin,
    admin_actor,
    dollars,
    first_line,
    human_duration,
    short_id,
    trail_panel,
)
from workspaces.models import Workspace

USAGE_SUMMARY_DAYS = 30


def workspace_usage_summary(workspace: Workspace) -> SafeString:
    """The workspace admin's usage line: active runs now, and the last 30 days' runs,
    sandbox-hours and cost (the same figures as the usage API)."""
    end = timezone.localdate()
    start = end - timedelta(days=USAGE_SUMMARY_DAYS - 1)
    usage = selectors.run_usage(workspace=workspace, start=start, end=end)
    return format_html(
        "{} active now · last {} days: {} runs, {} sandbox-hours, {}",
        selectors.active_run_count(workspace=workspace),
        USAGE_SUMMARY_DAYS,
        usage.runs,
        f"{usage.sandbox_seconds / 3600:.2f}",
        dollars(usage.cost_usd),
    )


class WorkspaceWithUsageAdmin(WorkspaceAdmin):
    """The workspace admin (workspaces.admin) with the usage line runs make."""

    detail_fields = ("id", "name", "owner", "created_at", "usage", "history")

    @admin.display(description="Usage")
    def usage(self, obj: Workspace) -> SafeString:
        return workspace_usage_summary(obj)


admin.site.unregister(Workspace)
admin.site.register(Workspace, WorkspaceWithUsageAdmin)


def run_started_by(run: SandboxRun) -> str:
    """Who started the run: a person, or a workspace API key (acting for its creator)."""
    if run.api_key_id is not None and run.api_key is not None:
        return f"API key “{run.api_key.name}” ({run.api_key.prefix}…) of {run.created_by}"
    return str(run.created_by)


# What the run page shows, in this order; everything else on the model is bookkeeping.
RUN_DETAIL_FIELDS = (
    "id", "workspace", "thread_id", "status", "end_reason", "prompt", "command", "template",
    "metadata", "output_dir", "sandbox_id", "started_by", "created_at", "running_at",
    "finished_at", "last_activity_at", "limits", "network_access", "paused_at", "exit_code",
    "error", "resources", "cost", "history",
)  # fmt: skip


OUTPUT_EXCERPT_CHARS = 400


class CommandInline(ReadOnlyInline):
    """The run's command history, oldest first. Reviewers (admins and owners) may read
    command output, so each row shows the end of what it printed."""

    model = Command
    verbose_name_plural = "Command history"
    fields = ("command", "kind", "status", "exit_code", "started_at", "duration_ms", "actor",
              "output")  # fmt: skip
    readonly_fields = fields
    ordering = ["started_at", "id"]

    @admin.display(description="Output (end)")
    def output(self, obj: Command) -> SafeString:
        text = (obj.stdout_tail + obj.stderr_tail)[-OUTPUT_EXCERPT_CHARS:]
        return format_html("<pre style='white-space: pre-wrap; margin: 0'>{}</pre>", text)

    @admin.display(description="Command")
    def command(self, obj: Command) -> str:
        return truncatechars(obj.command, 200)


# The run list's columns need these; the rest (env, files, metadata, error, the command) can be
# large and is read on the run's own page only.
RUN_LIST_FIELDS = (
    "id", "workspace", "thread_id", "status", "end_reason", "created_by", "api_key",
    "created_at", "finished_at", "cost_usd",
)  # fmt: skip


@admin.register(SandboxRun)
class SandboxRunAdmin(LargeListAdmin, WorkspaceScopedAdmin):
    list_display = [
        "run", "workspace", "thread_id", "status", "end_reason", "started_by", "created_at",
        "duration", "cost",
    ]  # fmt: skip
    list_display_links = ["run"]
    # A date filter of fixed ranges, not date_hierarchy: its drill-down reads the distinct
    # dates of every stored run on each page load.
    list_filter = [
        "status", "end_reason", ("created_at", admin.DateFieldListFilter),
        AdministeredWorkspaceFilter,
    ]  # fmt: skip
    search_fields = ["=id", "thread_id", "sandbox_id", "prompt"]
    list_select_related = ["workspace", "created_by", "api_key"]
    list_per_page = 50  # as the artifact list: rendering rows is most of the page's time
    actions = ["cancel_runs", "pause_runs", "resume_runs"]
    fields = RUN_DETAIL_FIELDS
    readonly_fields = RUN_DETAIL_FIELDS
    inlines = [CommandInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs start through the API or `manage.py start_run`

    def get_queryset(self, request: HttpRequest) -> QuerySet[SandboxRun]:
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name == "sandboxes_sandboxrun_changelist":
            # The list: only its columns' fields, and the prompt's start (a prompt may be
            # 100 KB).
            queryset = queryset.only(*RUN_LIST_FIELDS).annotate(prompt_start=Left("prompt", 200))
        return queryset

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)  # to run actions; every field is read-only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        # Nothing on a run is edited here: no save buttons, and a title that says so.
        context = {"title": "Run", **NO_SAVE_BUTTONS, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    @admin.display(description="Run", ordering="created_at")
    def run(self, obj: SandboxRun) -> SafeString:
        prompt = getattr(obj, "prompt_start", None)
        if prompt is None:
            prompt = obj.prompt
        return format_html("<code>{}</code> {}", short_id(obj.pk), first_line(prompt, 60) or "—")

    @admin.display(description="Started by")
    def started_by(self, obj: SandboxRun) -> str:
        return run_started_by(obj)

    @admin.display(description="Duration")
    def duration(self, obj: SandboxRun) -> str:
        end = obj.finished_at or (timezone.now() if obj.is_live else None)
        if end is None:
            return "—"
        return human_duration((end - obj.created_at).total_seconds() * 1000)

    @admin.display(description="Cost", ordering="cost_usd")
    def cost(self, obj: SandboxRun) -> str:
        return dollars(obj.cost_usd)

    @admin.display(description="Limits")
    def limits(self, obj: SandboxRun) -> str:
        when_idle = "; pauses" if obj.on_idle == OnIdle.PAUSE else ", or"
        paused = obj.paused_seconds()
        billed = f"; paused {human_duration(paused * 1000)} in all, not billed" if paused else ""
        return (
            f"ends after {human_duration(obj.max_duration_ms)}{when_idle} when idle for "
            f"{human_duration(obj.idle_timeout_ms)}{billed}"
        )

    @admin.display(description="Network")
    def network_access(self, obj: SandboxRun) -> str:
        network = obj.network or {}
        parts = ["internet" if network.get("internet") else "no internet"]
        if network.get("allow_out"):
            parts.append("allowed: " + ", ".join(network["allow_out"]))
        if network.get("deny_out"):
            parts.append("denied: " + ", ".join(network["deny_out"]))
        return "; ".join(parts)

    @admin.display(description="Resources")
    def resources(self, obj: SandboxRun) -> str:
        if obj.cpu_count is None:
            return "—"
        memory = f", {obj.memory_mb} MiB memory" if obj.memory_mb else ""
        return f"{obj.cpu_count} vCPU{memory}"

    @admin.display(description="Timeline")
    def history(self, obj: SandboxRun) -> SafeString | str:
        return trail_panel("run", obj.pk)

    @admin.action(description="Cancel selected runs (kills their sandboxes)")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[SandboxRun]) -> None:
        actor = admin_actor(request)
        canceled = skipped = 0
        for run in queryset:
            if run.status not in LIVE_STATUSES:
                skipped += 1
                continue
            try:
                services.run_cancel(run=run, actor=actor)
                canceled += 1
            except AirlockError:
                skipped += 1
        self.message_user(request, f"{canceled} canceled, {skipped} skipped (already ended).")

    @admin.action(description="Pause selected runs (their sandboxes wait, billed nothing)")
    def pause_runs(self, request: HttpRequest, queryset: QuerySet[SandboxRun]) -> None:
        self._each(request, queryset, RunStatus.RUNNING, services.run_pause, "paused")

    @admin.action(description="Resume selected paused runs")
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[SandboxRun]) -> None:
        self._each(request, queryset, RunStatus.PAUSED, services.run_resume, "resumed")

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[SandboxRun],
        status: str,
        change: Callable[..., SandboxRun],
        done_word: str,
    ) -> None:
        """Apply a pause or resume through its service to each selected run in `status`; the
        others are skipped, and each refusal is reported with its reason."""
        actor = admin_actor(request)
        done = skipped = 0
        refusals: list[str] = []
        for run in queryset:
            if run.status != status:
                skipped += 1
                continue
            try:
                change(run=run, actor=actor)
                done += 1
            except AirlockError as exc:
                refusals.append(f"{short_id(run.pk)}: {exc.detail}")
        message = f"{done} {done_word}, {skipped} skipped (not {status})."
        if refusals:
            message += f" {len(refusals)} refused: " + "; ".join(refusals[:5])
        self.message_user(request, message)

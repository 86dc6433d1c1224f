"""Runs in the admin: read-only, with a cancel action that goes through the service."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import truncatechars
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from config.exceptions import Conflict
from sandboxes import selectors, services
from sandboxes.models import ACTIVE_STATUSES, Command, SandboxRun
from workspaces.admin import (
    ReadOnlyInline,
    WorkspaceAdmin,
    WorkspaceScopedAdmin,
    admin_actor,
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
        "{} active now · last {} days: {} runs, {} sandbox-hours, ${}",
        selectors.active_run_count(workspace=workspace),
        USAGE_SUMMARY_DAYS,
        usage.runs,
        f"{usage.sandbox_seconds / 3600:.2f}",
        usage.cost_usd,
    )


class WorkspaceWithUsageAdmin(WorkspaceAdmin):
    """The workspace admin (workspaces.admin) with the usage line runs make."""

    detail_fields = ("id", "name", "owner", "created_at", "usage", "history")

    @admin.display(description="Usage")
    def usage(self, obj: Workspace) -> SafeString:
        return workspace_usage_summary(obj)


admin.site.unregister(Workspace)
admin.site.register(Workspace, WorkspaceWithUsageAdmin)


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


@admin.register(SandboxRun)
class SandboxRunAdmin(WorkspaceScopedAdmin):
    list_display = [
        "id", "workspace", "thread_id", "status", "end_reason", "created_by",
        "created_at", "finished_at", "cost_usd",
    ]  # fmt: skip
    list_filter = ["status", "end_reason", "workspace"]
    search_fields = ["=id", "thread_id", "sandbox_id", "prompt"]
    list_select_related = ["workspace", "created_by"]
    date_hierarchy = "created_at"
    actions = ["cancel_runs"]
    exclude = ["env", "files", "request_fingerprint"]
    readonly_fields = ["history"]
    inlines = [CommandInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        names = [f.name for f in SandboxRun._meta.fields if f.name not in self.exclude]
        return [*names, "history"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs start through the API or `manage.py start_run`

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)  # to run actions; every field is read-only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Timeline")
    def history(self, obj: SandboxRun) -> SafeString | str:
        return trail_panel("run", obj.pk)

    @admin.action(description="Cancel selected runs (kills their sandboxes)")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[SandboxRun]) -> None:
        actor = admin_actor(request)
        canceled = skipped = 0
        for run in queryset:
            if run.status not in ACTIVE_STATUSES:
                skipped += 1
                continue
            try:
                services.run_cancel(run=run, actor=actor)
                canceled += 1
            except Conflict:
                skipped += 1
        self.message_user(request, f"{canceled} canceled, {skipped} skipped (already ended).")

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from sandboxes.models import RunStatus, SandboxRun
from workspaces.management.operator import WORKSPACE_HELP, workspace_arg


class Command(BaseCommand):
    help = "List runs, newest first."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--workspace", help=WORKSPACE_HELP)
        parser.add_argument("--status", choices=RunStatus.values)
        parser.add_argument("--thread")
        parser.add_argument("--limit", type=int, default=50)

    def handle(self, *args: Any, **o: Any) -> None:
        runs = SandboxRun.objects.select_related("workspace").order_by("-created_at")
        if o["workspace"]:
            runs = runs.filter(workspace=workspace_arg(o["workspace"]))
        if o["status"]:
            runs = runs.filter(status=o["status"])
        if o["thread"]:
            runs = runs.filter(thread_id=o["thread"])
        self.stdout.write(f"{'id':36}  {'status':9}  {'created':19}  {'workspace':20}  thread")
        for run in runs[: o["limit"]]:
            self.stdout.write(
                f"{run.pk!s:36}  {run.status:9}  {run.created_at:%Y-%m-%d %H:%M:%S}  "
                f"{run.workspace.name[:20]:20}  {run.thread_id}"
            )

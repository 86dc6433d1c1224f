from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from config.exceptions import Conflict
from sandboxes import services
from sandboxes.management.commands._common import actor_for, describe, run_by_id
from workspaces.access import Actor


class Command(BaseCommand):
    help = "Cancel runs and kill their sandboxes."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_ids", nargs="+")
        parser.add_argument("--as", dest="username", help="who cancels (default: operator)")
        parser.add_argument("--dry-run", action="store_true", help="say what would happen")

    def handle(
        self, *args: Any, run_ids: list[str], username: str | None, dry_run: bool, **o: Any
    ) -> None:
        actor = actor_for(username) if username else Actor.system("operator")
        for run_id in run_ids:
            run = run_by_id(run_id)
            if dry_run:
                self.stdout.write(f"would cancel {describe(run)}")
                continue
            try:
                run = services.run_cancel(run=run, actor=actor)
            except Conflict as exc:
                self.stderr.write(f"{run.pk}: {exc.detail}")
                continue
            self.stdout.write(f"canceled {describe(run)}")

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from sandboxes import sweep


class Command(BaseCommand):
    help = (
        "End idle, overdue and stuck runs and kill their sandboxes, as the periodic sweep does. "
        "Only says what it would do unless given --for-real."
    )

    def add_arguments(self, parser: Any) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--for-real", action="store_true", help="kill sandboxes and end runs")
        mode.add_argument("--dry-run", action="store_true", help="say what would happen (default)")

    def handle(self, *args: Any, for_real: bool, **options: Any) -> None:
        report = sweep.sandboxes_sweep(dry_run=not for_real)
        for action in report.actions:
            (self.stderr if action.outcome == "error" else self.stdout).write(str(action))
        if not for_real:
            self.stdout.write(f"dry run: {len(report.actions)} to do; --for-real does it")
            return
        self.stdout.write(
            f"killed {report.killed}, failed {report.failed}, paused {report.paused}, "
            f"errors {report.errors}, "
            f"expired local sandboxes removed {report.reaped}"
        )
        if report.errors:
            raise CommandError(f"{report.errors} errors: those runs are left for the next sweep")

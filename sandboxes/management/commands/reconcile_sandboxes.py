from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from sandboxes import reconcile


class Command(BaseCommand):
    help = (
        "Kill this deployment's sandboxes that no live run owns, and fail running runs whose "
        "sandbox is gone, as the periodic reconcile does. Only says what it would do unless "
        "given --for-real."
    )

    def add_arguments(self, parser: Any) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--for-real", action="store_true", help="kill orphans and fail lost runs")
        mode.add_argument("--dry-run", action="store_true", help="say what would happen (default)")

    def handle(self, *args: Any, for_real: bool, **options: Any) -> None:
        report = reconcile.sandboxes_reconcile(dry_run=not for_real)
        for action in report.actions:
            (self.stderr if action.outcome == "error" else self.stdout).write(str(action))
        if not for_real:
            todo = sum(1 for action in report.actions if action.outcome != "error")
            self.stdout.write(f"dry run: {todo} to do; --for-real does it")
            return
        self.stdout.write(
            f"killed {report.killed} orphans, failed {report.lost} lost runs, "
            f"errors {report.errors}"
        )
        if report.errors:
            raise CommandError(f"{report.errors} errors: the next reconcile tries again")

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from config.exceptions import Conflict
from sandboxes import services
from sandboxes.management.commands._common import actor_for, describe, run_by_id
from sandboxes.models import ACTIVE_STATUSES, RunStatus
from workspaces.access import Actor
from workspaces.management.operator import add_for_real


class Command(BaseCommand):
    help = (
        "Cancel runs and kill their sandboxes. Only says what it would do unless given --for-real."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_ids", nargs="+")
        parser.add_argument("--as", dest="username", help="who cancels (default: operator)")
        add_for_real(parser, "cancel the runs and kill their sandboxes")

    def handle(
        self, *args: Any, run_ids: list[str], username: str | None, for_real: bool, **o: Any
    ) -> None:
        actor = actor_for(username) if username else Actor.system("operator")
        runs = [run_by_id(run_id) for run_id in run_ids]
        refused = 0
        for run in runs:
            if not for_real:
                if run.status in ACTIVE_STATUSES:
                    self.stdout.write(f"would cancel {describe(run)}")
                elif run.status == RunStatus.CANCELED:
                    self.stdout.write(f"already canceled, nothing to do: {describe(run)}")
                else:
                    refused += 1
                    self.stderr.write(f"{run.pk}: cannot cancel, the run is {run.status}")
                continue
            try:
                run = services.run_cancel(run=run, actor=actor)
            except Conflict as exc:
                refused += 1
                self.stderr.write(f"{run.pk}: {exc.detail}")
                continue
            self.stdout.write(f"canceled {describe(run)}")
        if not for_real:
            self.stdout.write("dry run: nothing changed; --for-real does it")
        if refused:
            raise CommandError(f"{refused} of {len(runs)} cannot be canceled.")

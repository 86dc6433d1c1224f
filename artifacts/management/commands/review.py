"""`manage.py review list | approve <id>… --as <user> | reject <id>… --as <user> --comment …`

Thin over artifacts.services: the decision is checked and logged exactly as in the API and the
admin (role, self-review, final states), acting as the named user."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.timesince import timesince

from artifacts import selectors, services
from config.exceptions import AirlockError
from workspaces.permissions import Actor

VERBS = {"approve": "approved", "reject": "rejected"}


class Command(BaseCommand):
    help = "List the pending review queue, or approve / reject artifacts as a reviewer."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="list|approve|reject")
        listing = actions.add_parser("list", help="Pending artifacts, oldest first.")
        listing.add_argument("--workspace", type=uuid.UUID, help="Only this workspace.")
        listing.add_argument("--limit", type=int, default=100)
        for verb in VERBS:
            decide = actions.add_parser(verb, help=f"{verb.capitalize()} artifacts.")
            decide.add_argument("artifact_ids", nargs="+", metavar="id")
            decide.add_argument(
                "--as", dest="username", required=True, help="The reviewer (admin or owner)."
            )
            decide.add_argument(
                "--comment", default="", help="Why; required to reject." if verb == "reject" else ""
            )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "list":
            self._list(workspace=options["workspace"], limit=options["limit"])
        else:
            self._decide(
                decision=action,
                ids=options["artifact_ids"],
                username=options["username"],
                comment=options["comment"],
            )

    def _list(self, *, workspace: uuid.UUID | None, limit: int) -> None:
        # An operator's view across every workspace: this command runs with shell access.
        queue = selectors.review_queue(workspace_ids=[workspace] if workspace else None)
        total = queue.count()
        now = timezone.now()
        for artifact in queue[: max(limit, 0)]:
            self.stdout.write(
                f"{artifact.pk}  {timesince(artifact.created_at, now, depth=1):>10} old  "
                f"{artifact.type:<5}  {filesizeformat(artifact.size):>9}  "
                f"ws={artifact.workspace.name!r} thread={artifact.thread_id!r}  "
                f"{artifact.title!r}"
            )
        self.stdout.write(f"{total} pending" + (f", {limit} shown" if total > limit else "."))

    def _decide(self, *, decision: str, ids: list[str], username: str, comment: str) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if decision == "reject" and not comment.strip():
            raise CommandError('A reject needs a comment: --comment "why".')
        actor = Actor(user=user)
        failures = 0
        for raw_id in ids:
            try:
                artifact, _ = selectors.artifact_get(actor=actor, artifact_id=uuid.UUID(raw_id))
                services.artifact_review(
                    artifact=artifact, actor=actor, decision=decision, comment=comment
                )
            except ValueError:
                self.stderr.write(f"{raw_id}: not an artifact id")
                failures += 1
                continue
            except AirlockError as exc:
                self.stderr.write(f"{raw_id}: {exc.detail}")
                failures += 1
                continue
            self.stdout.write(f"{raw_id}: {VERBS[decision]} ({artifact.title!r})")
        if failures:
            raise CommandError(f"{failures} of {len(ids)} not {VERBS[decision]}.")

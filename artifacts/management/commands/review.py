"""`manage.py review list | approve <id>… --as <user> | reject <id>… --as <user> --comment …`

Thin over artifacts.review: the decision is checked and logged exactly as in the API and the
admin (role, self-review, final states), acting as the named user. approve and reject only
say what they would do (the same checks, rolled back) unless given --for-real."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.timesince import timesince

from artifacts import review, selectors
from artifacts.models import Artifact
from workspaces.access import Actor
from workspaces.management.operator import WORKSPACE_HELP, add_for_real, workspace_arg

VERBS = {"approve": "approved", "reject": "rejected"}


class Command(BaseCommand):
    help = "List the pending review queue, or approve / reject artifacts as a reviewer."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="list|approve|reject")
        listing = actions.add_parser("list", help="Pending artifacts, oldest first.")
        listing.add_argument("--workspace", help=f"Only this workspace ({WORKSPACE_HELP}).")
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
            add_for_real(decide, f"{verb} them (else: only say what would happen)")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "list":
            self._list(workspace=options["workspace"], limit=options["limit"])
        else:
            self._decide(
                decision=action,
                ids=options["artifact_ids"],
                username=options["username"],
                comment=options["comment"],
                for_real=options["for_real"],
            )

    def _list(self, *, workspace: str | None, limit: int) -> None:
        # An operator's view across every workspace: this command runs with shell access.
        ids = [workspace_arg(workspace).pk] if workspace else None
        queue = selectors.review_queue(workspace_ids=ids)
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

    def _decide(
        self, *, decision: str, ids: list[str], username: str, comment: str, for_real: bool
    ) -> None:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if decision == "reject" and not comment.strip():
            raise CommandError('A reject needs a comment: --comment "why".')
        actor = Actor.for_user(user)
        artifacts, missing = self._artifacts(ids)
        for raw_id, why in missing:
            self.stderr.write(f"{raw_id}: {why}")
        outcome = review.artifacts_review(
            artifacts=artifacts,
            actor=actor,
            decision=decision,
            comment=comment,
            dry_run=not for_real,
        )
        done = VERBS[decision] if for_real else f"would be {VERBS[decision]}"
        for artifact in outcome.done:
            self.stdout.write(f"{artifact.pk}: {done} ({artifact.title!r})")
        for artifact in outcome.already_decided:
            self.stderr.write(f"{artifact.pk}: already {artifact.review_state}")
        for artifact, why in outcome.refused:
            self.stderr.write(f"{artifact.pk}: {why}")
        if not for_real:
            self.stdout.write("dry run: nothing decided; --for-real does it")
        failures = len(missing) + len(outcome.already_decided) + len(outcome.refused)
        if failures:
            raise CommandError(f"{failures} of {len(ids)} not {VERBS[decision]}.")

    @staticmethod
    def _artifacts(ids: list[str]) -> tuple[list[Artifact], list[tuple[str, str]]]:
        """The named artifacts, in the order given, and the ids that name none (with why).
        Whether the reviewer may see them is the review service's to say."""
        parsed: dict[str, uuid.UUID | None] = {}
        for raw_id in ids:
            try:
                parsed[raw_id] = uuid.UUID(raw_id)
            except ValueError:
                parsed[raw_id] = None
        found = Artifact.objects.select_related(*selectors.ARTIFACT_RELATED).in_bulk(
            [pk for pk in parsed.values() if pk is not None]
        )
        artifacts, missing = [], []
        for raw_id, pk in parsed.items():
            if pk is None:
                missing.append((raw_id, "not an artifact id"))
            elif pk in found:
                artifacts.append(found[pk])
            else:
                missing.append((raw_id, "No such artifact."))
        return artifacts, missing

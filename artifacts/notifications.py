"""Reviewers are told there is work (SPEC §11): when a run's artifacts become pending, its
workspace's admins and owners who keep `notify_reviews` on get one email, linking the run's
page in the admin (where the run is reviewed).

One email per run and **burst** of captures, not per artifact. A burst is a run's captures
that follow each other within BATCH_S; its email goes out once it is quiet:
- the captures of an interactive run: BATCH_S after the last capture of the burst (a second
  burst, an hour later, gets its own email);
- a command job's outputs are one burst (the job captures them one after the other, then
  ends the run): the email goes when the run ends. So does the email of an interactive run
  ended by its agent within BATCH_S of its last capture.
Which email a task sends is decided from the trail alone (the `artifact.created` events and
the run's end), so two tasks never send the same burst's email twice, and nothing is kept.
Artifacts already decided when the email would go (auto-approved, or quickly reviewed) are not
announced; a burst with nothing pending sends nothing.

The hook (`on_event`, registered by ArtifactsConfig.ready on the trail) only enqueues, on
commit and robustly; the email is sent by a Celery task (artifacts.tasks.notify_reviewers):
a mail server that fails fails that task, never a run or a capture.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from artifacts.models import Artifact, ReviewState
from sandboxes.models import SandboxRun
from workspaces import selectors as workspace_selectors
from workspaces.models import Event, EventType

logger = logging.getLogger(__name__)

NOTIFY_TASK = "artifacts.tasks.notify_reviewers"
BATCH_S = 60.0
LISTED_MAX = 20
RUN_ENDS = (EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELED)


def on_event(event: Event) -> None:
    """The trail hook: a capture or a run's end may complete a burst; look once it commits."""
    if event.run_id is None:
        return
    if event.type == EventType.ARTIFACT_CREATED:
        run_id, event_id = str(event.run_id), event.pk
        transaction.on_commit(lambda: _enqueue(run_id, event_id, BATCH_S), robust=True)
    elif event.type in RUN_ENDS:
        run_id = str(event.run_id)
        transaction.on_commit(lambda: _enqueue(run_id, None, 0), robust=True)


def _enqueue(run_id: str, event_id: int | None, countdown: float) -> None:
    current_app.send_task(NOTIFY_TASK, args=[run_id, event_id], countdown=countdown)


@dataclass(frozen=True)
class Notice:
    """What a look decided: emails sent, or look again in `retry_in_s` (a task that came
    early)."""

    sent: int = 0
    retry_in_s: float = 0.0
    why: str = ""


@dataclass(frozen=True)
class _Capture:
    event_id: int
    artifact_id: str
    at: datetime


def reviewers_notify(*, run_id: uuid.UUID | str, event_id: int | None) -> Notice:
    """Send the email of the burst that the capture `event_id` ends (or, with None, of the
    burst the run's end closed), if it is this look's to send."""
    run = SandboxRun.objects.select_related("workspace", "created_by", "api_key").filter(pk=run_id)
    found = run.first()
    if found is None:
        return Notice(why="no such run")
    captures = [
        _Capture(event_id=pk, artifact_id=subject, at=at)
        for pk, subject, at in Event.objects.filter(
            run_id=found.pk, type=EventType.ARTIFACT_CREATED
        )
        .order_by("id")
        .values_list("id", "subject_id", "created_at")
    ]
    index = _burst_end(found, captures, event_id)
    if isinstance(index, Notice):
        return index
    burst = _burst(captures, index)
    return _send(found, [c.artifact_id for c in burst])


def _burst_end(run: SandboxRun, captures: list[_Capture], event_id: int | None) -> int | Notice:
    """The index of the capture whose burst this look announces, or why it announces none."""
    ended = run.finished_at if not run.is_active else None
    if event_id is None:  # the run's end: it closes the last burst unless that was quiet
        if not captures or ended is None:
            return Notice(why="nothing captured")
        if (ended - captures[-1].at).total_seconds() >= BATCH_S:
            return Notice(why="the last burst was announced when it went quiet")
        return len(captures) - 1
    position = next((i for i, c in enumerate(captures) if c.event_id == event_id), None)
    if position is None:
        return Notice(why="no such capture")
    this = captures[position]
    following = captures[position + 1] if position + 1 < len(captures) else None
    if following is not None and (following.at - this.at).total_seconds() < BATCH_S:
        return Notice(why="the burst goes on")
    if following is None and ended is not None and (ended - this.at).total_seconds() < BATCH_S:
        return Notice(why="the run's end announces it")
    early = BATCH_S - (timezone.now() - this.at).total_seconds()
    if following is None and early > 0:
        return Notice(retry_in_s=early, why="not quiet yet")
    return position


def _burst(captures: list[_Capture], end: int) -> list[_Capture]:
    start = end
    while start > 0 and (captures[start].at - captures[start - 1].at).total_seconds() < BATCH_S:
        start -= 1
    return captures[start : end + 1]


def _send(run: SandboxRun, artifact_ids: list[str]) -> Notice:
    new = list(
        Artifact.objects.filter(
            run=run, pk__in=artifact_ids, review_state=ReviewState.PENDING
        ).order_by("created_at", "id")
    )
    if not new:
        return Notice(why="nothing of the burst is pending")
    waiting = Artifact.objects.filter(run=run, review_state=ReviewState.PENDING).count()
    recipients = [
        m.user
        for m in workspace_selectors.review_recipients(workspace_id=run.workspace_id)
        if settings.ALLOW_SELF_REVIEW or m.user_id != run.created_by_id
    ]
    if not recipients:
        return Notice(why="nobody to tell")
    subject, body = _message(run, new, waiting)
    messages = [EmailMessage(subject=subject, body=body, to=[user.email]) for user in recipients]
    with get_connection() as connection:
        sent = connection.send_messages(messages) or 0
    logger.info("review email for run %s: %d artifacts, %d recipients", run.pk, len(new), sent)
    return Notice(sent=sent)


def run_review_url(run: SandboxRun) -> str:
    """The run's page in the admin, where its artifacts are reviewed."""
    path = reverse("admin:sandboxes_sandboxrun_change", args=[run.pk])
    return f"{settings.SITE_URL}{path}"


def _one_line(text: str, limit: int) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _message(run: SandboxRun, new: list[Artifact], waiting: int) -> tuple[str, str]:
    """Plain text only: titles and prompts come from agents and are never markup here."""
    count = f"{len(new)} artifact{'s' if len(new) != 1 else ''}"
    subject = f"[Airlock] {count} to review: {_one_line(run.prompt, 60)}"
    started_by = (
        f"API key {run.api_key.name} ({run.api_key.prefix}…)"
        if run.api_key is not None
        else run.created_by.get_username()
    )
    lines = [
        f"{count} of a run in {run.workspace.name} wait for your review.",
        "",
        f"Run:     {run.pk}",
        f"Thread:  {_one_line(run.thread_id, 100)}",
        f"Started: by {started_by}",
        f"Prompt:  {_one_line(run.prompt, 300)}",
        "",
    ]
    lines += [f"- {_one_line(a.title, 120)} ({a.type}, {a.size} bytes)" for a in new[:LISTED_MAX]]
    if len(new) > LISTED_MAX:
        lines.append(f"- … and {len(new) - LISTED_MAX} more")
    if waiting > len(new):
        lines += ["", f"{waiting} artifacts of this run are pending in all."]
    lines += [
        "",
        f"Review them: {run_review_url(run)}",
        "",
        "You get this as an admin or owner of the workspace. To stop these emails, turn off "
        "notify_reviews on your membership (PATCH members/<your id>/ or the admin).",
    ]
    return subject, "\n".join(lines)

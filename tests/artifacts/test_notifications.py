"""artifacts/notifications.py: reviewers are emailed once per run and burst of captures,
captured with Django's locmem email backend (`mail.outbox`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from artifacts import notifications, review
from artifacts.notifications import BATCH_S, reviewers_notify
from sandboxes import services as run_services
from tests.artifacts.conftest import make_artifact
from tests.factories import make_run, make_user, record_event
from workspaces import services
from workspaces.access import Actor
from workspaces.models import EventType, Membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(workspace: Any, owner: Any, admin_user: Any, member: Any) -> dict[str, Any]:
    """The workspace's owner (who starts the runs), its admin Adam, a second admin Ada, and
    the member Mia."""
    ada = make_user(username="ada")
    services.membership_add(workspace=workspace, user=ada, role="admin", actor=Actor(user=owner))
    return {"owner": owner, "adam": admin_user, "ada": ada, "mia": member}


def capture(run: Any, title: str, actor: Actor | None = None) -> tuple[Any, int]:
    """An artifact and its `artifact.created` event, as a capture makes them."""
    artifact = make_artifact(run, title=title)
    event = record_event(artifact, EventType.ARTIFACT_CREATED, actor=actor)
    return artifact, event.pk


def recipients() -> list[str]:
    return sorted(address for message in mail.outbox for address in message.to)


def test_a_burst_of_captures_is_one_email_per_reviewer(people: Any, workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running", prompt="Write the Q3 summary")
    start = timezone.now()
    looks = []
    with time_machine.travel(start, tick=False) as clock:
        for title in ("a.txt", "b.txt", "c.txt"):
            looks.append(capture(run, title)[1])
            clock.shift(timedelta(seconds=5))
        clock.shift(timedelta(seconds=BATCH_S))
        outcomes = [reviewers_notify(run_id=run.pk, event_id=e) for e in looks]

    assert [o.sent for o in outcomes] == [0, 0, 2]  # the last capture's look sends
    assert recipients() == ["ada@example.com", "adam@example.com"]  # not the run's creator
    message = mail.outbox[0]
    assert message.subject == "[Airlock] 3 artifacts to review: Write the Q3 summary"
    assert f"/admin/sandboxes/sandboxrun/{run.pk}/change/" in message.body
    assert message.body.count("\n- ") == 3


def test_a_look_before_the_burst_is_quiet_comes_back_later(people: Any, workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running")
    _, event_id = capture(run, "a.txt")
    notice = reviewers_notify(run_id=run.pk, event_id=event_id)
    assert (notice.sent, 0 < notice.retry_in_s <= BATCH_S) == (0, True)
    assert mail.outbox == []


def test_a_later_burst_gets_its_own_email(people: Any, workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running")
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        _, first = capture(run, "a.txt")
        clock.shift(timedelta(seconds=BATCH_S + 1))
        assert reviewers_notify(run_id=run.pk, event_id=first).sent == 2
        clock.shift(timedelta(hours=1))
        _, second = capture(run, "b.txt")
        clock.shift(timedelta(seconds=BATCH_S + 1))
        assert reviewers_notify(run_id=run.pk, event_id=second).sent == 2
    assert len(mail.outbox) == 4
    latest = mail.outbox[-1].body
    assert "- b.txt" in latest and "- a.txt" not in latest  # the new burst is listed …
    assert "2 artifacts of this run are pending in all." in latest  # … and what still waits


def test_a_jobs_outputs_are_one_email_when_the_run_ends(people: Any, workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running", command="make report")
    job = Actor.system("execute_run_command")
    looks = [capture(run, title, actor=job)[1] for title in ("log", "out.csv", "plot.png")]
    run_services.run_transition(run.pk, lambda r: r.succeed(exit_code=0, by=job))

    assert [reviewers_notify(run_id=run.pk, event_id=e).sent for e in looks] == [0, 0, 0]
    assert reviewers_notify(run_id=run.pk, event_id=None).sent == 2
    assert len(mail.outbox) == 2
    assert mail.outbox[0].subject.startswith("[Airlock] 3 artifacts to review")


def test_opted_out_reviewers_and_members_are_not_emailed(people: Any, workspace: Any) -> None:
    Membership.objects.filter(user=people["ada"]).update(notify_reviews=False)
    run = make_run(workspace=workspace, status="running", created_by=people["mia"])
    capture(run, "a.txt")
    run_services.run_transition(run.pk, lambda r: r.cancel(by=Actor(user=people["mia"])))
    reviewers_notify(run_id=run.pk, event_id=None)
    # The owner reviews Mia's run; Ada opted out; Mia is a member.
    assert recipients() == ["adam@example.com", "olivia@example.com"]


def test_self_review_allowed_means_the_creator_is_told_too(
    people: Any, workspace: Any, settings: Any
) -> None:
    settings.ALLOW_SELF_REVIEW = True
    run = make_run(workspace=workspace, status="running")
    capture(run, "a.txt")
    run_services.run_transition(run.pk, lambda r: r.cancel(by=Actor(user=people["owner"])))
    reviewers_notify(run_id=run.pk, event_id=None)
    assert "olivia@example.com" in recipients()


def test_nothing_is_sent_when_nothing_of_the_burst_waits(
    people: Any, workspace: Any, admin_user: Any
) -> None:
    run = make_run(workspace=workspace, status="running")
    artifact, event_id = capture(run, "a.txt")
    review.artifact_review(artifact=artifact, actor=Actor(user=admin_user), decision="approve")
    with time_machine.travel(timezone.now() + timedelta(seconds=BATCH_S + 1), tick=False):
        notice = reviewers_notify(run_id=run.pk, event_id=event_id)
    assert (notice.sent, notice.why) == (0, "nothing of the burst is pending")


def test_a_hostile_prompt_stays_on_one_line_of_plain_text(people: Any, workspace: Any) -> None:
    run = make_run(workspace=workspace, status="running", prompt="Hi\r\nBcc: evil@example.com")
    capture(run, "<b>x</b>.txt")
    run_services.run_transition(run.pk, lambda r: r.cancel(by=Actor(user=people["owner"])))
    reviewers_notify(run_id=run.pk, event_id=None)
    message = mail.outbox[0]
    assert message.subject == "[Airlock] 1 artifact to review: Hi Bcc: evil@example.com"
    assert message.bcc == [] and message.content_subtype == "plain"


def test_the_hook_only_enqueues_once_the_write_commits(
    workspace: Any, django_capture_on_commit_callbacks: Any
) -> None:
    run = make_run(workspace=workspace, status="running")
    with django_capture_on_commit_callbacks() as callbacks:
        record_event(make_artifact(run), EventType.ARTIFACT_CREATED)
        record_event(run, EventType.RUN_SUCCEEDED)
        record_event(run, EventType.COMMAND_STARTED)
    notifying = [c for c in callbacks if c.__module__ == "artifacts.notifications"]
    assert len(notifying) == 2 and mail.outbox == []


def test_a_failing_mail_server_fails_the_task_not_the_capture(
    people: Any, workspace: Any, settings: Any
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    run = make_run(workspace=workspace, status="running")
    artifact, _ = capture(run, "a.txt")  # the capture stands
    run_services.run_transition(run.pk, lambda r: r.cancel(by=Actor(user=people["owner"])))
    with pytest.raises(OSError, match="refused"):  # the task's retry policy takes over
        reviewers_notify(run_id=run.pk, event_id=None)
    artifact.refresh_from_db()
    assert artifact.review_state == "pending"


def test_the_review_link_is_the_runs_admin_page(workspace: Any, settings: Any) -> None:
    settings.SITE_URL = "https://airlock.example.com"
    run = make_run(workspace=workspace, status="running")
    assert notifications.run_review_url(run) == (
        f"https://airlock.example.com/admin/sandboxes/sandboxrun/{run.pk}/change/"
    )

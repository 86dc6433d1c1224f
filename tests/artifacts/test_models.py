"""artifacts/models.py: the review state machine (pending → approved | rejected, decided is
final, the state never assigned directly), the database's own check, and what an artifact puts
on the trail: metadata, never its bytes or preview. The rules around a decision (roles,
self-review, comments) are artifacts/review.py's: test_review."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django_fsm import TransitionNotAllowed

from artifacts.models import Artifact, ReviewState
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import make_artifact
from tests.factories import transitions
from workspaces.access import Actor
from workspaces.models import Subject

pytestmark = pytest.mark.django_db

REVIEWER = Actor.system("test")


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_pending_artifact_can_be_decided_once(
    run: SandboxRun, admin_user: Any, decision: str
) -> None:
    artifact = make_artifact(run)
    assert artifact.is_pending
    with transaction.atomic():
        getattr(artifact, decision)(reviewer=admin_user, comment="why", by=REVIEWER)
        artifact.save()

    artifact.refresh_from_db()
    assert artifact.review_state == ("approved" if decision == "approve" else "rejected")
    assert (artifact.reviewed_by, artifact.review_comment) == (admin_user, "why")
    assert artifact.reviewed_at is not None and not artifact.is_pending
    for again in ("approve", "reject"):
        with pytest.raises(TransitionNotAllowed):
            getattr(artifact, again)(reviewer=admin_user, comment="again", by=REVIEWER)


def test_the_state_cannot_be_assigned_directly(run: SandboxRun) -> None:
    artifact = make_artifact(run)
    with pytest.raises(AttributeError):
        artifact.review_state = ReviewState.APPROVED


def test_a_decided_artifact_always_has_a_decision_time(run: SandboxRun) -> None:
    artifact = make_artifact(run)
    with pytest.raises(IntegrityError), transaction.atomic():
        Artifact.objects.filter(pk=artifact.pk).update(review_state=ReviewState.APPROVED)


def test_a_decision_is_on_the_trail_without_the_bytes_or_the_preview(
    run: SandboxRun, admin_user: Any
) -> None:
    artifact = make_artifact(run, title="notes.txt", data=b"secret-ish output\n")
    assert artifact.preview_text == "secret-ish output\n"
    with transaction.atomic():
        artifact.reject(reviewer=admin_user, comment="leaks a key", by=Actor(user=admin_user))
        artifact.save()

    [event] = transitions(artifact.pk)
    assert (event.type, event.actor) == ("artifact.rejected", "user:adam")
    assert (event.run_id, event.thread_id) == (run.pk, run.thread_id)
    assert event.data == {
        "transition": "reject", "from": "pending", "to": "rejected",
        "title": "notes.txt", "type": "file", "sandbox_path": "/home/user/artifacts/notes.txt",
        "size": 18, "sha256": artifact.sha256, "comment": "leaks a key",
    }  # fmt: skip
    assert "secret-ish" not in str(event.data)


def test_an_artifact_is_a_subject_of_its_run_and_thread(run: SandboxRun) -> None:
    artifact = make_artifact(run)
    assert artifact.trail_subject() == Subject(
        "artifact", artifact.pk, run.workspace_id, run_id=run.pk, thread_id=run.thread_id
    )
    assert "comment" not in artifact.trail_data()  # what artifact.created records

"""artifacts/review.py: the review rules, the trail they leave, and concurrency."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from artifacts import review
from artifacts.models import Artifact
from config.exceptions import Conflict, InvalidInput, NotFound, PermissionDenied
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import make_artifact
from tests.conftest import require_service
from tests.factories import make_api_key, make_run, transitions
from workspaces.access import Actor


def _log_rows(artifact: Artifact) -> list[Any]:
    return list(transitions(artifact.pk))


def _review(artifact: Artifact, who: Any, decision: str = "approve", comment: str = "") -> Artifact:
    return review.artifact_review(
        artifact=artifact, actor=Actor(user=who), decision=decision, comment=comment
    )


def test_an_approval_records_the_reviewer_and_logs_the_transition(
    sandbox_run: SandboxRun, admin_user: Any
) -> None:
    artifact = _review(make_artifact(sandbox_run), admin_user, comment="looks fine")

    artifact.refresh_from_db()
    assert artifact.review_state == "approved"
    assert (artifact.reviewed_by, artifact.review_comment) == (admin_user, "looks fine")
    assert artifact.reviewed_at is not None
    [row] = _log_rows(artifact)
    assert (row.data["transition"], row.data["from"], row.data["to"]) == (
        "approve",
        "pending",
        "approved",
    )
    assert (row.actor_user, row.actor) == (admin_user, "user:adam")


def test_a_reject_needs_a_comment(sandbox_run: SandboxRun, admin_user: Any) -> None:
    artifact = make_artifact(sandbox_run)
    for comment in ("", "   "):
        with pytest.raises(InvalidInput) as error:
            _review(artifact, admin_user, "reject", comment)
        assert error.value.code == "comment_required"

    _review(artifact, admin_user, "reject", "contains a credential")
    artifact.refresh_from_db()
    assert (artifact.review_state, artifact.review_comment) == (
        "rejected",
        "contains a credential",
    )


def test_a_decision_is_final(sandbox_run: SandboxRun, admin_user: Any, owner: Any) -> None:
    artifact = _review(make_artifact(sandbox_run), admin_user)
    for decision in ("approve", "reject"):
        with pytest.raises(Conflict) as error:
            _review(artifact, admin_user, decision, "again")
        assert error.value.code == "already_reviewed"
    assert len(_log_rows(artifact)) == 1


def test_a_stale_copy_loses_to_the_decision_already_saved(
    sandbox_run: SandboxRun, admin_user: Any, superuser: Any
) -> None:
    artifact = make_artifact(sandbox_run)
    stale = Artifact.objects.select_related("run").get(pk=artifact.pk)

    _review(artifact, admin_user, "reject", "no")
    with pytest.raises(Conflict) as error:
        _review(stale, superuser)  # ConcurrentTransitionMixin: the row is no longer pending

    assert "rejected" in error.value.detail
    assert stale.review_state == "rejected"  # refreshed: the caller sees the winner
    assert [row.data["to"] for row in _log_rows(artifact)] == ["rejected"]


def test_who_may_review(
    sandbox_run: SandboxRun, member: Any, outsider: Any, superuser: Any
) -> None:
    artifact = make_artifact(sandbox_run)
    with pytest.raises(PermissionDenied):
        _review(artifact, member)
    with pytest.raises(NotFound):
        _review(artifact, outsider)
    assert _review(artifact, superuser).review_state == "approved"


def test_self_review_is_refused_unless_allowed(
    sandbox_run: SandboxRun, owner: Any, settings: Any
) -> None:
    artifact = make_artifact(sandbox_run)  # the owner started this run
    with pytest.raises(PermissionDenied) as error:
        _review(artifact, owner)
    assert error.value.code == "self_review"

    settings.ALLOW_SELF_REVIEW = True
    assert _review(artifact, owner).review_state == "approved"


def test_an_admin_key_reviews_in_its_workspace_and_is_logged_as_the_key(
    workspace: Any, admin_user: Any
) -> None:
    # Keys act for whoever created them (the owner here): the run is someone else's.
    artifact = make_artifact(make_run(workspace=workspace, created_by=admin_user))
    key, _ = make_api_key(workspace=workspace, role="admin", name="ci")
    member_key, _ = make_api_key(workspace=workspace, role="member")
    with pytest.raises(PermissionDenied):
        review.artifact_review(
            artifact=artifact,
            actor=Actor(user=member_key.created_by, api_key=member_key),
            decision="approve",
        )

    review.artifact_review(
        artifact=artifact, actor=Actor(user=key.created_by, api_key=key), decision="approve"
    )

    [row] = _log_rows(artifact)
    assert row.actor == f"api_key:{key.prefix}"


def test_bulk_review_counts_what_it_did(
    sandbox_run: SandboxRun, admin_user: Any, owner: Any
) -> None:
    others = make_run(workspace=sandbox_run.workspace, created_by=admin_user)
    pending = [make_artifact(sandbox_run), make_artifact(sandbox_run)]
    decided = make_artifact(sandbox_run, state="approved")
    own = make_artifact(others)

    outcome = review.artifacts_review(
        artifacts=[*pending, decided, own], actor=Actor(user=admin_user), decision="approve"
    )

    assert (len(outcome.done), len(outcome.already_decided)) == (2, 1)
    assert [artifact for artifact, _ in outcome.refused] == [own]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_of_two_concurrent_reviewers_exactly_one_wins(
    workspace: Any, admin_user: Any, owner: Any, superuser: Any, media: Path
) -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    from django_fsm.signals import post_transition

    run = make_run(workspace=workspace, status="running", created_by=workspace.owner)
    artifact = make_artifact(run)
    # Both reviewers have moved the artifact in memory before either saves: the race the
    # optimistic lock exists for.
    barrier = threading.Barrier(2, timeout=10)

    def wait_for_the_other(**kwargs: Any) -> None:
        if kwargs["sender"] is Artifact:
            barrier.wait()

    outcomes: dict[str, str] = {}

    def review(name: str, who: Any, decision: str) -> None:
        try:
            copy = Artifact.objects.select_related("run").get(pk=artifact.pk)
            _review(copy, who, decision, "concurrent")
            outcomes[name] = "won"
        except Conflict:
            outcomes[name] = "409"
        finally:
            connection.close()

    post_transition.connect(wait_for_the_other)
    try:
        threads = [
            threading.Thread(target=review, args=("admin", admin_user, "approve")),
            threading.Thread(target=review, args=("superuser", superuser, "reject")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        post_transition.disconnect(wait_for_the_other)

    assert sorted(outcomes.values()) == ["409", "won"]
    artifact.refresh_from_db()
    winner = "approved" if outcomes["admin"] == "won" else "rejected"
    assert artifact.review_state == winner
    assert [row.data["to"] for row in _log_rows(artifact)] == [winner]


# --- two approvals (the workspace's review policy) -------------------------------------------


def _four_eyes(workspace: Any, **fields: Any) -> None:
    from artifacts import policy

    policy.review_policy_set(
        workspace=workspace, actor=Actor(user=workspace.owner), required_approvals=2, **fields
    )


def test_two_approvals_by_two_people(
    sandbox_run: SandboxRun, admin_user: Any, superuser: Any
) -> None:
    from workspaces.models import Event

    _four_eyes(sandbox_run.workspace)
    artifact = make_artifact(sandbox_run)

    first = _review(artifact, admin_user, comment="fine by me")
    assert (first.review_state, first.approvals.count()) == ("pending", 1)
    [recorded] = Event.objects.filter(subject_id=str(artifact.pk))
    assert (recorded.type, recorded.actor) == ("artifact.approval_recorded", "user:adam")
    assert (recorded.data["approvals"], recorded.data["required_approvals"]) == (1, 2)

    second = _review(artifact, superuser)
    assert (second.review_state, second.reviewed_by) == ("approved", superuser)
    assert [row.data["to"] for row in _log_rows(artifact)] == ["approved"]
    assert sorted(a.reviewer.username for a in artifact.approvals.all()) == ["adam", "root"]


def test_the_same_person_cannot_give_both_approvals(
    sandbox_run: SandboxRun, admin_user: Any
) -> None:
    _four_eyes(sandbox_run.workspace)
    artifact = _review(make_artifact(sandbox_run), admin_user)
    for decision, comment in (("approve", ""), ("reject", "changed my mind")):
        with pytest.raises(PermissionDenied) as error:
            _review(artifact, admin_user, decision, comment)
        assert error.value.code == "already_approved"
    assert artifact.review_state == "pending"


def test_the_runs_creator_gives_neither_approval_even_when_self_review_is_allowed(
    sandbox_run: SandboxRun, owner: Any, admin_user: Any, settings: Any
) -> None:
    settings.ALLOW_SELF_REVIEW = True
    _four_eyes(sandbox_run.workspace)
    artifact = make_artifact(sandbox_run)  # the owner started the run
    with pytest.raises(PermissionDenied) as error:
        _review(artifact, owner)
    assert error.value.code == "self_review"
    _review(artifact, admin_user)
    with pytest.raises(PermissionDenied):
        _review(artifact, owner)  # not as the second either
    assert artifact.approvals.count() == 1


def test_a_reject_needs_only_one_reviewer(sandbox_run: SandboxRun, admin_user: Any) -> None:
    _four_eyes(sandbox_run.workspace)
    artifact = _review(make_artifact(sandbox_run), admin_user, "reject", "leaks data")
    assert artifact.review_state == "rejected"


def test_the_second_approval_can_be_asked_only_for_artifacts_with_signals(
    sandbox_run: SandboxRun, admin_user: Any
) -> None:
    _four_eyes(sandbox_run.workspace, second_approval_only_with_signals=True)
    quiet = make_artifact(sandbox_run, title="notes.txt")
    flagged = make_artifact(
        sandbox_run,
        title="tool",
        signals=[{"code": "executable", "severity": "high", "message": "ELF executable"}],
        signal_codes="executable",
        risk="high",
    )
    assert _review(quiet, admin_user).review_state == "approved"
    assert _review(flagged, admin_user).review_state == "pending"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_reviewers_approving_at_once_record_two_approvals_and_one_final_state(
    workspace: Any, admin_user: Any, superuser: Any, media: Path
) -> None:
    require_service(connection.vendor == "postgresql", "needs PostgreSQL (DATABASE_URL)")
    from workspaces.models import Event

    _four_eyes(workspace)
    run = make_run(workspace=workspace, status="running", created_by=workspace.owner)
    artifact = make_artifact(run)
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def approve(who: Any) -> None:
        try:
            copy = Artifact.objects.select_related("run").get(pk=artifact.pk)
            barrier.wait()  # both read it pending, with no approval, before either writes
            _review(copy, who)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(who,)) for who in (admin_user, superuser)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    artifact.refresh_from_db()
    assert artifact.review_state == "approved"
    assert artifact.approvals.count() == 2
    types = list(Event.objects.filter(subject_id=str(artifact.pk)).values_list("type", flat=True))
    assert sorted(types) == ["artifact.approval_recorded", "artifact.approved"]

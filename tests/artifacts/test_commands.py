"""`manage.py review`: the queue, and decisions that follow the same rules as everywhere."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from artifacts.models import Artifact
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import make_artifact, review_state
from tests.conftest import run_command
from tests.factories import make_run, make_workspace, transitions
from workspaces.models import Event


def review(*args: str) -> tuple[str, str]:
    return run_command("review", *args)


def failing(*args: str) -> str:
    """Runs a review that must fail; returns its error output and the final error."""
    err = StringIO()
    with pytest.raises(CommandError) as error:
        call_command("review", *args, stdout=StringIO(), stderr=err)
    return f"{err.getvalue()}{error.value}"


@pytest.mark.django_db
def test_list_shows_the_pending_queue_oldest_first(run: SandboxRun, outsider: Any) -> None:
    newer = make_artifact(run, title="newer.txt")
    older = make_artifact(run, title="older.txt")
    Artifact.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=2))
    make_artifact(run, title="decided.txt", state="approved")
    other = make_run(workspace=make_workspace(owner=outsider, name="Other"))
    make_artifact(other, title="other.txt")

    out, _ = review("list")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == [
        str(older.pk),
        str(newer.pk),
        str(Artifact.objects.get(title="other.txt").pk),
    ]
    assert lines[-1] == "3 pending."

    out, _ = review("list", "--workspace", str(run.workspace_id), "--limit", "1")
    assert out.splitlines() == [out.splitlines()[0], "2 pending, 1 shown"]
    assert str(older.pk) in out
    assert review("list", "--workspace", run.workspace.name, "--limit", "1")[0] == out
    with pytest.raises(CommandError, match="No workspace 'Nowhere'"):
        review("list", "--workspace", "Nowhere")


@pytest.mark.django_db
def test_a_decision_is_a_dry_run_unless_told_otherwise(run: SandboxRun, admin_user: Any) -> None:
    first, decided = make_artifact(run), make_artifact(run, state="approved")
    before = Event.objects.count()

    out, _ = review("approve", str(first.pk), "--as", "adam")
    assert f"{first.pk}: would be approved" in out
    assert "dry run: nothing decided; --for-real does it" in out
    errors = failing("reject", str(first.pk), str(decided.pk), "--as", "adam", "--comment", "x")
    assert "already approved" in errors and "1 of 2 not rejected." in errors

    assert review_state(first) == "pending"
    assert not first.approvals.exists()
    assert Event.objects.count() == before  # nothing on the trail, nothing sent


@pytest.mark.django_db
def test_approve_and_reject_as_a_reviewer(run: SandboxRun, admin_user: Any) -> None:
    first, second = make_artifact(run), make_artifact(run)

    out, _ = review("approve", str(first.pk), "--as", "adam", "--for-real")
    assert f"{first.pk}: approved" in out
    out, _ = review("reject", str(second.pk), "--as", "adam", "--comment", "no", "--for-real")
    assert f"{second.pk}: rejected" in out

    assert (review_state(first), review_state(second)) == ("approved", "rejected")
    assert set(transitions(first.pk, second.pk).values_list("actor", flat=True)) == {"user:adam"}


@pytest.mark.django_db
def test_one_failure_does_not_stop_the_others_and_the_command_fails(
    run: SandboxRun, admin_user: Any
) -> None:
    good = make_artifact(run)
    decided = make_artifact(run, state="rejected")
    missing = "00000000-0000-0000-0000-000000000000"

    args = ["approve", str(decided.pk), "nope", str(good.pk), missing, "--as", "adam"]
    errors = failing(*args, "--for-real")

    assert "3 of 4 not approved." in errors
    assert "already rejected" in errors
    assert "nope: not an artifact id" in errors
    assert f"{missing}: No such artifact." in errors
    assert review_state(good) == "approved"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as", "nobody"], "No user named 'nobody'."),
        (["--as", "adam", "--comment", " "], "A reject needs a comment"),
    ],
)
def test_bad_invocations_are_clear_errors(
    run: SandboxRun, admin_user: Any, args: list[str], message: str
) -> None:
    artifact = make_artifact(run)
    with pytest.raises(CommandError, match=message):
        review("reject", str(artifact.pk), *args)
    assert review_state(artifact) == "pending"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("username", "error"),
    [
        ("mia", "needs the admin role"),  # a member
        ("oscar", "No such artifact."),  # an outsider
        ("olivia", "You started this run"),  # the owner, who started it
    ],
)
def test_the_service_rules_apply(
    run: SandboxRun, member: Any, outsider: Any, username: str, error: str
) -> None:
    artifact = make_artifact(run)
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError):
        call_command(
            "review", "approve", str(artifact.pk), "--as", username, "--for-real",
            stdout=out, stderr=err,
        )  # fmt: skip
    assert error in err.getvalue()
    assert review_state(artifact) == "pending"

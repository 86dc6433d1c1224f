"""artifacts/selectors.py: artifacts scoped to the caller, and whose content they may see (a
member only once approved, reviewers always); who may review; the review queue and the admin
index's counts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from artifacts import selectors
from artifacts.models import Artifact
from config.exceptions import NotFound, PermissionDenied
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import make_artifact
from tests.factories import key_actor, make_run, make_workspace
from workspaces.access import Actor
from workspaces.models import Role, Workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def beta(outsider: Any, admin_user: Any) -> Workspace:
    """The outsider's workspace, where Adam (admin of Lab) is a plain member."""
    return make_workspace(owner=outsider, name="Beta", members={admin_user: "member"})


@pytest.fixture
def artifacts(run: SandboxRun, beta: Workspace) -> dict[str, Artifact]:
    """In Lab: pending, approved and rejected artifacts of the owner's run; in Beta, a pending
    and an approved one."""
    beta_run = make_run(workspace=beta, status="running")
    return {
        "pending": make_artifact(run, title="pending"),
        "approved": make_artifact(run, title="approved", state="approved"),
        "rejected": make_artifact(run, title="rejected", state="rejected"),
        "beta_pending": make_artifact(beta_run, title="beta_pending"),
        "beta_approved": make_artifact(beta_run, title="beta_approved", state="approved"),
    }


def _visible(queryset: Any) -> dict[str, bool]:
    return {artifact.title: artifact.content_visible for artifact in queryset}


# --- artifact_list ---------------------------------------------------------------------------


def test_a_runs_artifacts_and_a_workspaces_artifacts(
    run: SandboxRun, workspace: Workspace, artifacts: dict[str, Artifact], member: Any
) -> None:
    other_run = make_run(workspace=workspace, status="running")
    make_artifact(other_run, title="other run")
    actor = Actor(user=member)
    assert {a.title for a in selectors.artifact_list(actor=actor, run=run)} == {
        "pending", "approved", "rejected",
    }  # fmt: skip
    assert {a.title for a in selectors.artifact_list(actor=actor, workspace=workspace)} == {
        "pending", "approved", "rejected", "other run",
    }  # fmt: skip


# Whose content each caller sees in the list: the artifacts they may read, and for each whether
# its content (the bytes, the preview) is theirs to see.
EVERYTHING = {
    "pending": True, "approved": True, "rejected": True,
    "beta_pending": True, "beta_approved": True,
}  # fmt: skip
SEEN_BY = {
    "member": {"pending": False, "approved": True, "rejected": False},
    "admin_user": {**EVERYTHING, "beta_pending": False},  # a plain member in Beta
    "outsider": {"beta_pending": True, "beta_approved": True},  # Beta's owner
    "superuser": EVERYTHING,
}


@pytest.mark.parametrize(("who", "expected"), SEEN_BY.items(), ids=SEEN_BY.keys())
def test_the_list_across_workspaces_says_whose_content_is_visible(
    artifacts: dict[str, Artifact], request: Any, who: str, expected: dict[str, bool]
) -> None:
    actor = Actor(user=request.getfixturevalue(who))
    assert _visible(selectors.artifact_list(actor=actor)) == expected


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("member", {"pending": False, "approved": True, "rejected": False}),
        ("admin", {"pending": True, "approved": True, "rejected": True}),
    ],
)
def test_a_key_sees_its_workspace_with_its_own_role(
    workspace: Workspace, artifacts: dict[str, Artifact], role: str, expected: dict[str, bool]
) -> None:
    # The keys are the owner's: a member key still sees what a member sees.
    assert (
        _visible(selectors.artifact_list(actor=key_actor(workspace=workspace, role=role)))
        == expected
    )


def test_the_list_needs_no_query_per_artifact(
    run: SandboxRun, member: Any, django_assert_num_queries: Any
) -> None:
    for _ in range(5):
        make_artifact(run)
    with django_assert_num_queries(1):
        listed: list[Any] = list(selectors.artifact_list(actor=Actor(user=member)))
        assert {(a.workspace.name, a.run.pk, a.content_visible) for a in listed} == {
            ("Lab", run.pk, False)
        }


# --- artifact_get ----------------------------------------------------------------------------


def test_get_gives_the_artifact_and_the_callers_role(
    artifacts: dict[str, Artifact], admin_user: Any
) -> None:
    artifact, role = selectors.artifact_get(
        actor=Actor(user=admin_user), artifact_id=str(artifacts["pending"].pk)
    )
    assert (artifact, role) == (artifacts["pending"], Role.ADMIN)
    assert selectors.content_visible(artifact=artifact, role=role) is True


def test_get_is_a_404_for_an_outsider_or_an_unknown_artifact(
    artifacts: dict[str, Artifact], outsider: Any, member: Any
) -> None:
    for actor, artifact_id in (
        (Actor(user=outsider), artifacts["approved"].pk),
        (Actor(user=member), artifacts["beta_approved"].pk),
        (Actor(user=member), uuid.uuid4()),
    ):
        with pytest.raises(NotFound) as raised:
            selectors.artifact_get(actor=actor, artifact_id=artifact_id)
        assert raised.value.detail == "No such artifact."


def test_get_is_a_403_below_the_minimum(artifacts: dict[str, Artifact], member: Any) -> None:
    with pytest.raises(PermissionDenied):
        selectors.artifact_get(
            actor=Actor(user=member), artifact_id=artifacts["pending"].pk, minimum=Role.ADMIN
        )


@pytest.mark.parametrize("state", ["pending", "rejected"])
def test_a_member_asking_for_undecided_or_rejected_content_is_not_told_it_exists(
    artifacts: dict[str, Artifact], member: Any, state: str
) -> None:
    actor = Actor(user=member)
    artifact, role = selectors.artifact_get(actor=actor, artifact_id=artifacts[state].pk)
    assert selectors.content_visible(artifact=artifact, role=role) is False  # the metadata, yes
    with pytest.raises(NotFound):
        selectors.artifact_get(actor=actor, artifact_id=artifacts[state].pk, content=True)


def test_content_is_for_members_once_approved_and_for_reviewers_always(
    artifacts: dict[str, Artifact], member: Any, admin_user: Any
) -> None:
    approved, role = selectors.artifact_get(
        actor=Actor(user=member), artifact_id=artifacts["approved"].pk, content=True
    )
    assert selectors.content_visible(artifact=approved, role=role) is True
    for name in ("pending", "rejected"):
        artifact, role = selectors.artifact_get(
            actor=Actor(user=admin_user), artifact_id=artifacts[name].pk, content=True
        )
        assert selectors.content_visible(artifact=artifact, role=role) is True


# --- who may review --------------------------------------------------------------------------


def test_who_may_review_and_why_not(
    workspace: Workspace,
    artifacts: dict[str, Artifact],
    owner: Any,
    admin_user: Any,
    member: Any,
    settings: Any,
) -> None:
    artifact = artifacts["pending"]  # of the owner's run

    def refusal(actor: Actor) -> str | None:
        role = selectors.artifact_role(actor=actor, artifact=artifact)
        return selectors.artifact_review_refusal(artifact=artifact, actor=actor, role=role)

    assert refusal(Actor(user=admin_user)) is None
    assert refusal(Actor(user=member)) == "role"
    assert refusal(key_actor(workspace=workspace, role="member")) == "role"
    assert refusal(Actor(user=owner)) == "self_review"
    assert refusal(key_actor(workspace=workspace, role="admin")) == "self_review"  # the owner's key
    settings.ALLOW_SELF_REVIEW = True
    assert refusal(Actor(user=owner)) is None


def test_an_outsider_may_not_review_and_is_not_told_why(
    artifacts: dict[str, Artifact], outsider: Any
) -> None:
    actor = Actor(user=outsider)
    artifact = artifacts["pending"]
    role = selectors.artifact_role(actor=actor, artifact=artifact)
    assert role is None
    assert selectors.artifact_review_refusal(artifact=artifact, actor=actor, role=role) == (
        "not_found"
    )


# --- the review queue and the admin index -----------------------------------------------------


def test_the_queue_is_pending_artifacts_oldest_first(
    run: SandboxRun, beta: Workspace, workspace: Workspace
) -> None:
    def aged(title: str, minutes: int, on: SandboxRun = run, **fields: Any) -> Artifact:
        artifact = make_artifact(on, title=title, **fields)
        Artifact.objects.filter(pk=artifact.pk).update(
            created_at=timezone.now() - timedelta(minutes=minutes)
        )
        return artifact

    aged("newest", 1)
    aged("oldest", 30)
    aged("decided", 60, state="approved")
    aged("beta", 10, on=make_run(workspace=beta))

    assert [a.title for a in selectors.review_queue()] == ["oldest", "beta", "newest"]
    assert [a.title for a in selectors.review_queue(workspace_ids=[workspace.pk])] == [
        "oldest",
        "newest",
    ]
    assert list(selectors.review_queue(workspace_ids=[])) == []


def test_the_console_counts_are_pending_reviews_and_running_sandboxes_in_scope(
    run: SandboxRun, beta: Workspace, workspace: Workspace
) -> None:
    make_artifact(run)
    make_artifact(run, state="approved")
    beta_run = make_run(workspace=beta, status="running")
    make_artifact(beta_run)
    make_artifact(beta_run)
    make_run(workspace=workspace, status="succeeded")
    make_run(workspace=workspace)  # booting: not a running sandbox yet

    assert selectors.review_console_counts(workspace_ids=[workspace.pk]) == {
        "pending_reviews": 1,
        "pending_for_me": 0,  # nobody asked
        "running_sandboxes": 1,
    }
    assert selectors.review_console_counts() == {
        "pending_reviews": 3,
        "pending_for_me": 0,
        "running_sandboxes": 2,
    }

"""artifacts/policy.py: the review policy's rules, auto-approval at capture (real sandbox and
storage), what blocks it, expiry by beat with frozen time, and the trail each leaves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from artifacts import policy
from artifacts.models import Artifact, ReviewPolicy
from config.exceptions import InvalidInput
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import capture_file, make_artifact, plant, review_state
from workspaces.access import Actor
from workspaces.models import Event

pytestmark = pytest.mark.django_db


def _set(workspace: Any, **fields: Any) -> ReviewPolicy:
    return policy.review_policy_set(
        workspace=workspace, actor=Actor(user=workspace.owner), **fields
    )


# --- the policy itself -------------------------------------------------------------------


def test_a_policy_replaces_the_whole_policy_and_is_on_the_trail(workspace: Any) -> None:
    _set(workspace, auto_approve=[{"type": "image"}], required_approvals=2, expire_after_h=48)
    saved = _set(workspace, required_approvals=2)  # what is left out takes its default

    assert saved.as_json() == {
        "auto_approve": [],
        "required_approvals": 2,
        "second_approval_only_with_signals": False,
        "expire_after_h": None,
    }
    changes = Event.objects.filter(type="review_policy.changed").order_by("id")
    assert [e.actor for e in changes] == ["user:olivia", "user:olivia"]
    assert changes[1].data["from"]["auto_approve"] == [{"type": "image"}]
    assert changes[1].data["to"]["expire_after_h"] is None
    _set(workspace, required_approvals=2)  # no change, no event
    assert changes.count() == 2


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"auto_approve": [{}]}, "at least one of"),
        ({"auto_approve": [{"type": "movie"}]}, "type"),
        ({"auto_approve": [{"max_size": -1}]}, "max_size"),
        ({"auto_approve": [{"path_glob": ""}]}, "path_glob"),
        ({"auto_approve": [{"colour": "red"}]}, "unknown field colour"),
        ({"auto_approve": [{"type": "log"}] * 51}, "at most 50"),
        ({"required_approvals": 3}, "1 or 2"),
        ({"expire_after_h": 0}, "expire_after_h"),
    ],
)
def test_bad_policies_are_refused(workspace: Any, fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        _set(workspace, **fields)
    assert not ReviewPolicy.objects.exists()


def test_a_rule_matches_when_every_field_it_gives_matches(run: SandboxRun) -> None:
    artifact = make_artifact(run, title="chart.csv", data=b"a,b\n" * 10)  # 40 bytes
    assert policy.rule_matches({"type": "file"}, artifact)
    assert policy.rule_matches({"path_glob": "/home/user/artifacts/*.csv"}, artifact)
    assert policy.rule_matches({"path_glob": "*.csv", "max_size": 40}, artifact)
    assert not policy.rule_matches({"path_glob": "*.csv", "max_size": 39}, artifact)
    assert not policy.rule_matches({"type": "image", "path_glob": "*.csv"}, artifact)
    assert not policy.rule_matches({"path_glob": "*.CSV"}, artifact)  # case counts


# --- at capture --------------------------------------------------------------------------


def test_a_rule_approves_at_capture_as_system_policy_with_the_rule(
    local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    rules = [{"type": "image"}, {"path_glob": "/home/user/artifacts/*.csv", "max_size": 100}]
    _set(sandbox_run.workspace, auto_approve=rules)
    small = capture_file(
        sandbox_run, plant(local_sandboxes, sandbox_run, "artifacts/a.csv", b"1,2\n")
    )
    big = capture_file(
        sandbox_run, plant(local_sandboxes, sandbox_run, "artifacts/b.csv", b"1,2\n" * 100)
    )

    assert (review_state(small), review_state(big)) == ("approved", "pending")
    [approved] = Event.objects.filter(subject_id=str(small.pk), type="artifact.approved")
    assert approved.actor == "system:policy"
    assert (approved.data["transition"], approved.data["rule_number"]) == ("auto_approve", 2)
    assert approved.data["rule"] == rules[1]
    assert small.review_comment == "Approved by review policy rule 2."
    assert small.reviewed_by is None


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("creds.csv", b"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"),
        ("page.csv", b'<html><body onload="x()"></body></html>'),
    ],
)
def test_a_secret_or_active_content_is_never_auto_approved(
    local_sandboxes: Any, sandbox_run: SandboxRun, name: str, data: bytes
) -> None:
    _set(sandbox_run.workspace, auto_approve=[{"path_glob": "*"}])
    artifact = capture_file(sandbox_run, plant(local_sandboxes, sandbox_run, name, data))
    assert artifact.signal_codes in ("secret", "active_content")
    assert review_state(artifact) == "pending"
    assert not Event.objects.filter(subject_id=str(artifact.pk), type="artifact.approved").exists()


def test_other_signals_do_not_block_a_rule(local_sandboxes: Any, sandbox_run: SandboxRun) -> None:
    _set(sandbox_run.workspace, auto_approve=[{"type": "other"}])
    artifact = capture_file(
        sandbox_run, plant(local_sandboxes, sandbox_run, "blob.bin", bytes(range(256)))
    )
    assert (artifact.signal_codes, review_state(artifact)) == ("binary", "approved")


# --- expiry --------------------------------------------------------------------------------


def test_pending_artifacts_expire_after_the_policy_s_hours(
    run: SandboxRun, time_machine: Any, workspace: Any
) -> None:
    start = timezone.now()
    time_machine.move_to(start, tick=False)
    _set(workspace, expire_after_h=24)
    old, decided = make_artifact(run, title="old"), make_artifact(run, state="approved")
    time_machine.move_to(start + timedelta(hours=23), tick=False)
    young = make_artifact(run, title="young")

    time_machine.move_to(start + timedelta(hours=24, seconds=1), tick=False)
    assert policy.artifacts_expire() == 1

    assert [review_state(a) for a in (old, decided, young)] == ["expired", "approved", "pending"]
    old.refresh_from_db()
    assert old.reviewed_at == start + timedelta(hours=24, seconds=1)
    assert old.review_comment == "Expired: pending for more than 24 h."
    [event] = Event.objects.filter(subject_id=str(old.pk), type="artifact.expired")
    assert (event.actor, event.data["expire_after_h"]) == ("system:policy", 24)
    assert policy.artifacts_expire() == 0  # a second beat finds nothing more


def test_without_an_expiry_nothing_expires(run: SandboxRun, time_machine: Any) -> None:
    artifact = make_artifact(run)
    time_machine.move_to(timezone.now() + timedelta(days=400), tick=False)
    assert policy.artifacts_expire() == 0
    assert review_state(artifact) == "pending"


def test_an_expired_artifact_is_final(run: SandboxRun, workspace: Any, admin_user: Any) -> None:
    from artifacts import review
    from config.exceptions import Conflict

    _set(workspace, expire_after_h=1)
    artifact = make_artifact(run)
    Artifact.objects.filter(pk=artifact.pk).update(created_at=timezone.now() - timedelta(hours=2))
    policy.artifacts_expire()
    with pytest.raises(Conflict):
        review.artifact_review(artifact=artifact, actor=Actor(user=admin_user), decision="approve")


def test_the_expiry_task_is_the_service(run: SandboxRun, workspace: Any) -> None:
    from artifacts.tasks import expire_pending_artifacts

    _set(workspace, expire_after_h=1)
    artifact = make_artifact(run)
    Artifact.objects.filter(pk=artifact.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert expire_pending_artifacts() == 1

"""Artifact routes: the airlock rules across roles and key roles, capture errors, downloads
that are always attachments, review rules, filters. Every JSON response is checked against
the OpenAPI schema by the `api` client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from artifacts.models import Artifact
from sandboxes.models import SandboxRun
from tests.artifacts.conftest import PNG, XSS, home_of, make_artifact, plant
from tests.conftest import client_as, streamed, table
from tests.factories import make_run, make_workspace

MEMBERS = dict(owner=200, admin=200, member=200, member_key=200, admin_key=200)
REVIEWERS = dict(owner=200, admin=200, admin_key=200, member=404, member_key=404)


# --- capture ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**{k: 201 for k in MEMBERS}))
def test_every_member_can_capture_and_the_artifact_waits_for_review(
    as_caller: Any, caller: str, status: int, local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "artifacts/out.txt", b"result\n")

    response = as_caller(caller).post(
        f"/api/v1/runs/{sandbox_run.pk}/artifacts/", {"path": path}, format="json"
    )

    assert response.status_code == status
    if status == 201:
        body = response.json()
        assert body["review_state"] == "pending"
        assert (body["title"], body["type"], body["size"]) == ("out.txt", "file", 7)
        # As in GET artifacts/{id}/: a member sees the preview once the artifact is approved.
        reviews_here = caller in ("owner", "admin", "admin_key")
        assert body["preview_text"] == ("result\n" if reviews_here else None)
    else:
        assert Artifact.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid"),
        ({"path": "a.txt"}, 400, "invalid_path"),
        ({"path": "/home/user/../etc/passwd"}, 400, "invalid_path"),
        ({"path": "/home/user/a\x00b"}, 400, "invalid"),
        ({"path": "/home/user/a.txt", "type": "movie"}, 400, "invalid"),
        ({"path": "/home/user/a.txt", "title": ""}, 400, "invalid"),
        ({"path": "/home/user/a.txt", "colour": "red"}, 400, "invalid"),
        ({"path": "/home/user/missing.txt"}, 404, "file_not_found"),
        ({"path": "/home/user/link"}, 400, "backend_error"),
        ({"path": "/home/user/big.bin"}, 413, "artifact_too_large"),
    ],
)
def test_bad_captures_are_clear_4xx_and_store_nothing(
    api: Any,
    member: Any,
    local_sandboxes: Any,
    sandbox_run: SandboxRun,
    settings: Any,
    body: dict[str, str],
    status: int,
    code: str,
) -> None:
    settings.ARTIFACT_MAX_BYTES = 100
    plant(local_sandboxes, sandbox_run, "a.txt", b"a")
    plant(local_sandboxes, sandbox_run, "big.bin", b"b" * 101)
    (home_of(local_sandboxes, sandbox_run) / "link").symlink_to("/etc/hostname")

    response = client_as(api, member).post(
        f"/api/v1/runs/{sandbox_run.pk}/artifacts/", body, format="json"
    )

    assert (response.status_code, response.json()["code"]) == (status, code)
    assert Artifact.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["booting", "succeeded", "canceled"])
def test_capture_needs_a_running_run(api: Any, member: Any, workspace: Any, status: str) -> None:
    run = make_run(workspace=workspace, status=status)
    response = client_as(api, member).post(
        f"/api/v1/runs/{run.pk}/artifacts/", {"path": "/home/user/a.txt"}, format="json"
    )
    assert (response.status_code, response.json()["code"]) == (409, "invalid_state")


@pytest.mark.django_db
def test_a_capture_is_activity_and_reading_artifacts_is_not(
    api: Any, member: Any, local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "a.txt", b"a")
    client = client_as(api, member)
    long_ago = timezone.now() - timedelta(minutes=10)

    SandboxRun.objects.filter(pk=sandbox_run.pk).update(last_activity_at=long_ago)
    capture = client.post(
        f"/api/v1/runs/{sandbox_run.pk}/artifacts/", {"path": path}, format="json"
    )
    assert capture.status_code == 201
    sandbox_run.refresh_from_db()
    assert sandbox_run.last_activity_at > long_ago

    # Reads (and waits) never keep a sandbox alive (SPEC §11).
    for call in (
        lambda: client.get(f"/api/v1/runs/{sandbox_run.pk}/artifacts/"),
        lambda: client.get(f"/api/v1/artifacts/{Artifact.objects.get().pk}/"),
        lambda: client.get(f"/api/v1/artifacts/{Artifact.objects.get().pk}/?wait_s=0.2"),
    ):
        SandboxRun.objects.filter(pk=sandbox_run.pk).update(last_activity_at=long_ago)
        assert call().status_code == 200
        sandbox_run.refresh_from_db()
        assert sandbox_run.last_activity_at == long_ago


# --- reading -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**MEMBERS))
def test_every_member_sees_artifact_metadata_and_outsiders_nothing(
    as_caller: Any, caller: str, status: int, sandbox_run: SandboxRun, outsider: Any
) -> None:
    artifact = make_artifact(sandbox_run)
    elsewhere = make_run(workspace=make_workspace(owner=outsider, name="Other"))
    make_artifact(elsewhere, title="not yours")
    client = as_caller(caller)

    assert client.get(f"/api/v1/artifacts/{artifact.pk}/").status_code == status
    assert client.get(f"/api/v1/runs/{sandbox_run.pk}/artifacts/").status_code == status
    mine = client.get("/api/v1/artifacts/")
    if caller in ("anonymous", "revoked_key"):
        assert mine.status_code == 401
    elif caller == "outsider":  # their own workspace's, nothing of ours
        assert [a["title"] for a in mine.json()["results"]] == ["not yours"]
    elif caller == "foreign_key":
        assert mine.json()["results"] == []
    else:
        assert [a["id"] for a in mine.json()["results"]] == [str(artifact.pk)]


@pytest.mark.django_db
def test_members_see_no_preview_until_approval_reviewers_always(
    api: Any, member: Any, admin_user: Any, sandbox_run: SandboxRun
) -> None:
    artifact = make_artifact(sandbox_run, data=b"secret-ish output")
    url = f"/api/v1/artifacts/{artifact.pk}/"

    assert client_as(api, member).get(url).json()["preview_text"] is None
    assert (
        client_as(api, member).get("/api/v1/artifacts/").json()["results"][0]["preview_text"]
        is None
    )
    assert client_as(api, admin_user).get(url).json()["preview_text"] == "secret-ish output"

    client_as(api, admin_user).post(f"{url}review/", {"decision": "approve"}, format="json")
    assert client_as(api, member).get(url).json()["preview_text"] == "secret-ish output"


@pytest.mark.django_db
def test_the_list_filters(api: Any, owner: Any, workspace: Any) -> None:
    first = make_run(workspace=workspace, thread_id="t-1")
    second = make_run(workspace=workspace, thread_id="t-2")
    text = make_artifact(first, title="a.txt")
    image = make_artifact(second, title="b.png", data=PNG, state="approved")
    client = client_as(api, owner)

    def titles(query: str) -> list[str]:
        response = client.get(f"/api/v1/artifacts/?{query}")
        assert response.status_code == 200
        return sorted(a["title"] for a in response.json()["results"])

    assert titles("") == ["a.txt", "b.png"]
    assert titles("review_state=pending") == [text.title]
    assert titles("review_state=approved") == [image.title]
    assert titles("type=image") == [image.title]
    assert titles("thread_id=t-1") == [text.title]
    assert titles(f"run={second.pk}") == [image.title]
    assert titles(f"workspace={workspace.pk}&type=file") == [text.title]
    for bad in ("review_state=maybe", "type=movie", "run=not-a-uuid", "thread_id=%00"):
        assert client.get(f"/api/v1/artifacts/?{bad}").status_code == 400
    per_run = client.get(f"/api/v1/runs/{first.pk}/artifacts/?review_state=approved").json()
    assert per_run["results"] == []


@pytest.mark.django_db
def test_artifact_lists_use_a_constant_number_of_queries(
    api: Any, member: Any, sandbox_run: SandboxRun, django_assert_max_num_queries: Any
) -> None:
    client = client_as(api, member)
    for _ in range(3):
        make_artifact(sandbox_run)
    with django_assert_max_num_queries(5):
        assert len(client.get("/api/v1/artifacts/").json()["results"]) == 3
    for _ in range(40):
        make_artifact(sandbox_run, state="approved")
    with django_assert_max_num_queries(5):
        assert len(client.get("/api/v1/artifacts/?page_size=100").json()["results"]) == 43


# --- the bytes -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**REVIEWERS))
def test_pending_bytes_are_for_reviewers_only(
    as_caller: Any, caller: str, status: int, sandbox_run: SandboxRun
) -> None:
    artifact = make_artifact(sandbox_run, data=b"pending bytes")
    response = as_caller(caller).get(f"/api/v1/artifacts/{artifact.pk}/content/")
    assert response.status_code == status
    if status == 200:
        assert streamed(response) == b"pending bytes"


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**MEMBERS))
def test_approved_bytes_are_for_every_member(
    as_caller: Any, caller: str, status: int, sandbox_run: SandboxRun
) -> None:
    artifact = make_artifact(sandbox_run, data=b"approved bytes", state="approved")
    response = as_caller(caller).get(f"/api/v1/artifacts/{artifact.pk}/content/")
    assert response.status_code == status
    if status == 200:
        assert streamed(response) == b"approved bytes"


@pytest.mark.django_db
def test_rejected_bytes_stay_with_reviewers(
    api: Any, member: Any, admin_user: Any, sandbox_run: SandboxRun
) -> None:
    artifact = make_artifact(sandbox_run, state="rejected")
    url = f"/api/v1/artifacts/{artifact.pk}/content/"
    assert client_as(api, member).get(url).status_code == 404
    assert client_as(api, admin_user).get(url).status_code == 200


@pytest.mark.django_db
def test_the_content_route_answers_with_the_download_headers(
    api: Any, owner: Any, sandbox_run: SandboxRun
) -> None:
    # What the headers mean for each kind of file is artifacts/downloads.py's (test_downloads).
    artifact = make_artifact(sandbox_run, title="page.html", data=f"<html>{XSS}</html>".encode())
    response = client_as(api, owner).get(f"/api/v1/artifacts/{artifact.pk}/content/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="page.html"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; img-src 'self'; sandbox"
    assert response["Cache-Control"] == "private, no-store"
    assert streamed(response) == f"<html>{XSS}</html>".encode()


@pytest.mark.django_db
def test_a_hostile_title_never_reaches_a_header(
    api: Any, owner: Any, sandbox_run: SandboxRun
) -> None:
    artifact = make_artifact(sandbox_run, title="a.txt")
    Artifact.objects.filter(pk=artifact.pk).update(title='x"\r\nSet-Cookie: a=b; <script>')
    response = client_as(api, owner).get(f"/api/v1/artifacts/{artifact.pk}/content/")
    assert response["Content-Disposition"] == 'attachment; filename="a.txt"'
    assert "Set-Cookie" not in response


# --- review ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("caller", "status"),
    table(owner=200, admin=200, admin_key=200, member=403, member_key=403),
)
def test_reviewing_needs_the_admin_role(
    as_caller: Any, caller: str, status: int, workspace: Any, member: Any
) -> None:
    artifact = make_artifact(make_run(workspace=workspace, created_by=member))

    response = as_caller(caller).post(
        f"/api/v1/artifacts/{artifact.pk}/review/", {"decision": "approve"}, format="json"
    )

    assert response.status_code == status
    artifact.refresh_from_db()
    assert artifact.review_state == ("approved" if status == 200 else "pending")


@pytest.mark.django_db
def test_review_rules(api: Any, admin_user: Any, owner: Any, sandbox_run: SandboxRun) -> None:
    artifact = make_artifact(sandbox_run)
    url = f"/api/v1/artifacts/{artifact.pk}/review/"
    client = client_as(api, admin_user)

    def review(body: dict[str, Any]) -> tuple[int, str]:
        response = client.post(url, body, format="json")
        return response.status_code, response.json().get("code", "")

    assert review({"decision": "reject"}) == (400, "comment_required")
    assert review({"decision": "reject", "comment": "  "}) == (400, "comment_required")
    assert review({"decision": "maybe"}) == (400, "invalid")
    assert review({"decision": "approve", "extra": 1}) == (400, "invalid")
    assert review({"decision": "approve", "comment": "x" * 2001}) == (400, "invalid")

    response = client.post(url, {"decision": "reject", "comment": "has a token"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["review_state"], body["review_comment"]) == ("rejected", "has a token")
    assert body["reviewed_by_id"] == admin_user.pk

    assert review({"decision": "approve"}) == (409, "already_reviewed")
    assert review({"decision": "reject", "comment": "again"}) == (409, "already_reviewed")


@pytest.mark.django_db
def test_self_review_is_a_403_unless_allowed(
    api: Any, owner: Any, admin_key: str, sandbox_run: SandboxRun, settings: Any
) -> None:
    artifact = make_artifact(sandbox_run)  # the owner started the run; the key is the owner's
    url = f"/api/v1/artifacts/{artifact.pk}/review/"

    for who in (owner, admin_key):
        response = client_as(api, who).post(url, {"decision": "approve"}, format="json")
        assert (response.status_code, response.json()["code"]) == (403, "self_review")

    settings.ALLOW_SELF_REVIEW = True
    response = client_as(api, owner).post(url, {"decision": "approve"}, format="json")
    assert response.status_code == 200


# --- signals and the secret ------------------------------------------------------------------

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_PAIR = f"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n".encode()


@pytest.mark.django_db
def test_signals_are_in_the_metadata_and_the_secret_in_no_response(
    api: Any, admin_user: Any, local_sandboxes: Any, sandbox_run: SandboxRun
) -> None:
    path = plant(local_sandboxes, sandbox_run, "artifacts/creds.env", AWS_PAIR)
    client = client_as(api, admin_user)

    captured = client.post(
        f"/api/v1/runs/{sandbox_run.pk}/artifacts/", {"path": path}, format="json"
    )
    assert captured.status_code == 201
    artifact_id = captured.json()["id"]
    responses = [
        captured,
        client.get(f"/api/v1/artifacts/{artifact_id}/"),
        client.get("/api/v1/artifacts/"),
        client.get(f"/api/v1/runs/{sandbox_run.pk}/artifacts/"),
        client.get(f"/api/v1/workspaces/{sandbox_run.workspace_id}/events/"),
    ]
    body = captured.json()
    assert [(s["code"], s["severity"], s["line"]) for s in body["signals"]] == [
        ("secret", "high", 1),
        ("secret", "high", 2),
    ]
    assert body["signals"][1]["message"] == "Secret Keyword on line 2"
    assert (body["required_approvals"], body["approvals"]) == (1, 0)
    for response in responses:
        assert response.status_code == 200 or response is captured
        assert AWS_SECRET.encode() not in response.content
        assert b"AKIAIOSFODNN7EXAMPLE" not in response.content
    # The bytes themselves are what a reviewer downloads to look at: unchanged.
    content = client.get(f"/api/v1/artifacts/{artifact_id}/content/")
    assert streamed(content) == AWS_PAIR


@pytest.mark.django_db
def test_two_approvals_through_the_api(
    api: Any, admin_user: Any, superuser: Any, sandbox_run: SandboxRun, admin_key: str
) -> None:
    policy_url = f"/api/v1/workspaces/{sandbox_run.workspace_id}/review-policy/"
    assert (
        client_as(api, admin_user)
        .put(policy_url, {"required_approvals": 2}, format="json")
        .status_code
        == 200
    )
    artifact = make_artifact(sandbox_run)
    url = f"/api/v1/artifacts/{artifact.pk}/review/"

    first = client_as(api, admin_user).post(url, {"decision": "approve"}, format="json")
    assert first.status_code == 200
    assert (first.json()["review_state"], first.json()["approvals"]) == ("pending", 1)
    assert first.json()["required_approvals"] == 2
    again = client_as(api, admin_user).post(url, {"decision": "approve"}, format="json")
    assert (again.status_code, again.json()["code"]) == (403, "already_approved")
    # The owner's admin key acts for the owner, who started the run: refused too.
    own = client_as(api, admin_key).post(url, {"decision": "approve"}, format="json")
    assert (own.status_code, own.json()["code"]) == (403, "self_review")
    second = client_as(api, superuser).post(url, {"decision": "approve"}, format="json")
    assert (second.json()["review_state"], second.json()["approvals"]) == ("approved", 2)


# --- the review policy -----------------------------------------------------------------------

POLICY_ADMINS = dict(owner=200, admin=200, admin_key=200, member=403, member_key=403)


@pytest.mark.django_db
@pytest.mark.parametrize(("caller", "status"), table(**POLICY_ADMINS))
def test_the_review_policy_is_for_admins_and_owners(
    as_caller: Any, caller: str, status: int, workspace: Any
) -> None:
    url = f"/api/v1/workspaces/{workspace.pk}/review-policy/"
    client = as_caller(caller)
    assert client.get(url).status_code == status
    assert client.put(url, {"expire_after_h": 12}, format="json").status_code == status


@pytest.mark.django_db
def test_a_put_replaces_the_whole_policy(api: Any, admin_user: Any, workspace: Any) -> None:
    url = f"/api/v1/workspaces/{workspace.pk}/review-policy/"
    client = client_as(api, admin_user)
    assert client.get(url).json() == {
        "auto_approve": [],
        "required_approvals": 1,
        "second_approval_only_with_signals": False,
        "expire_after_h": None,
    }
    full = {
        "auto_approve": [{"type": "image", "max_size": 1048576}, {"path_glob": "*.csv"}],
        "required_approvals": 2,
        "second_approval_only_with_signals": True,
        "expire_after_h": 72,
    }
    assert client.put(url, full, format="json").json() == full
    assert client.put(url, {"expire_after_h": 24}, format="json").json() == {
        "auto_approve": [],
        "required_approvals": 1,
        "second_approval_only_with_signals": False,
        "expire_after_h": 24,
    }
    assert client.get(url).json()["expire_after_h"] == 24


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"auto_approve": [{}]},
        {"auto_approve": [{"type": "movie"}]},
        {"auto_approve": [{"max_size": -5}]},
        {"auto_approve": [{"path_glob": "x", "color": "red"}]},
        {"required_approvals": 3},
        {"expire_after_h": 0},
        {"expire_after_h": "soon"},
        {"surprise": True},
    ],
)
def test_a_bad_policy_is_a_400(api: Any, admin_user: Any, workspace: Any, body: Any) -> None:
    url = f"/api/v1/workspaces/{workspace.pk}/review-policy/"
    response = client_as(api, admin_user).put(url, body, format="json")
    assert response.status_code == 400, response.content
    assert client_as(api, admin_user).get(url).json()["required_approvals"] == 1


# --- the archive -----------------------------------------------------------------------------


def _zip_members(response: Any) -> dict[str, bytes]:
    import io
    import zipfile

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith('attachment; filename="run-')
    with zipfile.ZipFile(io.BytesIO(streamed(response))) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.django_db
def test_the_archive_holds_what_the_caller_may_download(
    api: Any, member: Any, admin_user: Any, member_key: str, sandbox_run: SandboxRun
) -> None:
    make_artifact(sandbox_run, title="report.md", data=b"# Report\n", state="approved")
    make_artifact(sandbox_run, title="chart.png", data=PNG, state="approved")
    make_artifact(sandbox_run, title="draft.txt", data=b"not yet\n")
    make_artifact(sandbox_run, title="leak.txt", data=b"no\n", state="rejected")
    url = f"/api/v1/runs/{sandbox_run.pk}/artifacts/archive/"

    for caller in (member, member_key):
        assert _zip_members(client_as(api, caller).get(url)) == {
            "report.md": b"# Report\n",
            "chart.png": PNG,
        }
    assert _zip_members(client_as(api, admin_user).get(url)) == {
        "report.md": b"# Report\n",
        "chart.png": PNG,
        "draft.txt": b"not yet\n",
        "leak.txt": b"no\n",
    }


@pytest.mark.django_db
def test_archive_member_names_are_relative_and_unique(
    api: Any, admin_user: Any, sandbox_run: SandboxRun, outsider: Any
) -> None:
    paths = [
        "/home/user/artifacts/x/a.txt",
        "/home/user/artifacts/x/a.txt",
        "/home/user/../../etc/b",
    ]
    for number, path in enumerate(paths, start=1):
        artifact = make_artifact(sandbox_run, title="a.txt", data=str(number).encode())
        Artifact.objects.filter(pk=artifact.pk).update(
            sandbox_path=path, created_at=timezone.now() + timedelta(seconds=number)
        )
    url = f"/api/v1/runs/{sandbox_run.pk}/artifacts/archive/"

    members = _zip_members(client_as(api, admin_user).get(url))

    assert members == {"x/a.txt": b"1", "x/a (2).txt": b"2", "etc/b": b"3"}
    assert client_as(api, outsider).get(url).status_code == 404

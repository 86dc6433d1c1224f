"""workspaces/authentication.py: the credentials an API request may carry — workspace API keys
(`Bearer alk_…`) and tokens (`Token …`) — refused in the error shape when they are wrong, and
Django sessions for the browsable API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.conftest import assert_error, client_as
from tests.factories import make_api_key
from tests.workspaces.conftest import PASSWORD, keys_url, with_password
from workspaces import services
from workspaces.access import Actor
from workspaces.models import Workspace
from workspaces.services import API_KEY_TOUCH_INTERVAL

# --- tokens ----------------------------------------------------------------------------------


def test_a_bad_token_is_a_401(api: Any, owner: Any) -> None:
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = api.get("/api/v1/workspaces/")
    assert_error(response, 401)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("abc\x00def", id="nul"),
        pytest.param("not-a-token", id="garbage"),
        pytest.param("A" * 40, id="upper-case"),
        pytest.param("a" * 41, id="too-long"),
    ],
)
def test_a_malformed_token_is_refused_before_any_lookup(
    api: Any, db: Any, token: str, django_assert_num_queries: Any
) -> None:
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    with django_assert_num_queries(0):
        response = api.get("/api/v1/workspaces/")
    assert_error(response, 401)


def test_a_well_formed_but_unknown_token_is_a_401(api: Any, db: Any) -> None:
    api.credentials(HTTP_AUTHORIZATION=f"Token {'a' * 40}")
    assert assert_error(api.get("/api/v1/workspaces/"), 401)["code"] == "authentication_failed"


# --- API keys --------------------------------------------------------------------------------


def test_a_new_key_works_as_a_bearer_token(api: Any, workspace: Workspace, owner: Any) -> None:
    secret = (
        client_as(api, owner).post(keys_url(workspace), {"name": "ci"}, format="json").json()["key"]
    )
    api.force_authenticate(user=None)
    response = client_as(api, secret).get(f"/api/v1/workspaces/{workspace.pk}/")
    assert response.status_code == 200
    assert response.json()["role"] == "member"


def test_a_revoked_key_is_a_401_with_a_bearer_challenge(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert client_as(api, owner).delete(f"{keys_url(workspace)}{key.pk}/").status_code == 204
    api.force_authenticate(user=None)

    response = client_as(api, secret).get(f"/api/v1/workspaces/{workspace.pk}/")
    body = assert_error(response, 401)
    assert body["code"] == "authentication_failed"
    assert "revoked" in body["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer", id="no-key"),
        pytest.param("Bearer alk_abc def", id="two-parts"),
        pytest.param("Bearer garbage", id="garbage"),
        pytest.param("Bearer alk_deadbeef_not-the-secret", id="unknown-prefix"),
        pytest.param("Bearer sk_deadbeef_secret", id="wrong-scheme-prefix"),
        pytest.param("Bearer alk__", id="empty-parts"),
        pytest.param("Bearer alk_\x00\x00_x", id="nul-bytes"),
        pytest.param("Bearer alk_%s_x" % ("f" * 500), id="long-prefix"),
    ],
)
def test_a_malformed_or_unknown_bearer_key_is_a_401(
    api: Any, workspace: Workspace, header: str
) -> None:
    api.credentials(HTTP_AUTHORIZATION=header)
    response = api.get(f"/api/v1/workspaces/{workspace.pk}/")
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_key_with_the_right_prefix_and_a_wrong_secret_is_a_401(
    api: Any, workspace: Workspace
) -> None:
    _, secret = make_api_key(workspace=workspace)
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    response = client_as(api, forged).get(f"/api/v1/workspaces/{workspace.pk}/")
    assert_error(response, 401)


def test_a_non_ascii_bearer_header_is_a_401(api: Any, workspace: Workspace) -> None:
    api.credentials(HTTP_AUTHORIZATION="Bearer alk_é_x")
    assert_error(api.get(f"/api/v1/workspaces/{workspace.pk}/"), 401)


def test_anonymous_requests_get_a_bearer_challenge(api: Any) -> None:
    response = api.get("/api/v1/workspaces/")
    body = assert_error(response, 401)
    assert body["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_key_acts_for_its_creator_with_its_own_role(
    api: Any, workspace: Workspace, admin_user: Any
) -> None:
    # The creator is an admin; the key they made is a member key, and acts as one.
    key, secret = services.api_key_create(
        workspace=workspace, name="ci", role="member", actor=Actor(user=admin_user)
    )
    response = client_as(api, secret).get(f"/api/v1/workspaces/{workspace.pk}/")
    assert response.json()["role"] == "member"
    assert client_as(api, secret).get(keys_url(workspace)).status_code == 403
    created = client_as(api, secret).post(
        f"/api/v1/workspaces/{workspace.pk}/runs/", {"thread_id": "t", "prompt": "p"}, format="json"
    )
    assert (created.json()["created_by_id"], created.json()["api_key_id"]) == (
        admin_user.pk,
        str(key.pk),
    )


def test_a_key_whose_creator_is_deactivated_stops_working(
    api: Any, workspace: Workspace, owner: Any, member_key: str
) -> None:
    client = client_as(api, member_key)
    assert client.get(f"/api/v1/workspaces/{workspace.pk}/").status_code == 200
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    assert_error(client.get(f"/api/v1/workspaces/{workspace.pk}/"), 401)


def test_last_used_at_is_set_on_use_and_throttled(api: Any, workspace: Workspace) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert key.last_used_at is None
    client = client_as(api, secret)
    url = f"/api/v1/workspaces/{workspace.pk}/"
    start = timezone.now()

    with time_machine.travel(start, tick=False):
        assert client.get(url).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at == start

    with time_machine.travel(start + API_KEY_TOUCH_INTERVAL / 2, tick=False):
        assert client.get(url).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at == start

    later = start + API_KEY_TOUCH_INTERVAL + timedelta(seconds=1)
    with time_machine.travel(later, tick=False):
        assert client.get(url).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at == later


def test_a_throttled_request_costs_no_write(api: Any, workspace: Workspace) -> None:
    _, secret = make_api_key(workspace=workspace)
    client = client_as(api, secret)
    url = f"/api/v1/workspaces/{workspace.pk}/"
    assert client.get(url).status_code == 200
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    assert captured.captured_queries
    assert not any(q["sql"].lstrip().upper().startswith("UPDATE") for q in captured)


# --- sessions (DRF's, configured beside these in settings) ----------------------------------


def test_session_auth_works_for_the_browsable_api(client: Any, workspace: Workspace) -> None:
    with_password(workspace.owner)
    assert client.login(username="olivia", password=PASSWORD)
    response = client.get("/api/v1/workspaces/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "Lab" in response.content.decode()


def test_session_auth_enforces_csrf_on_writes(workspace: Workspace) -> None:
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    with_password(workspace.owner)
    assert csrf_client.login(username="olivia", password=PASSWORD)
    response = csrf_client.post(
        "/api/v1/workspaces/", {"name": "Via session"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Workspace.objects.filter(name="Via session").exists()

"""Authentication: username/password tokens, workspace API keys, and sessions."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.throttling import ScopedRateThrottle

from tests.conftest import client_as
from tests.factories import UserFactory, make_api_key, make_workspace
from workspaces import selectors
from workspaces.models import ApiKey, Workspace
from workspaces.services import API_KEY_TOUCH_INTERVAL

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Any:
    """The token endpoint is rate limited per address; earlier tests must not use up the quota."""
    cache.clear()
    yield
    cache.clear()


def _with_password(user: Any) -> Any:
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    return user


def _keys_url(workspace: Workspace) -> str:
    return f"/api/v1/workspaces/{workspace.pk}/api-keys/"


def _assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status
    body = response.json()
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert isinstance(body["code"], str)
    return body


# --- auth/token/ -----------------------------------------------------------------------------


def test_the_right_password_gets_a_token_that_works(api: Any, owner: Any) -> None:
    _with_password(owner)
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    token = response.json()["token"]

    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    listed = api.get("/api/v1/workspaces/")
    assert listed.status_code == 200


def test_a_token_can_be_had_with_a_form_encoded_body(api: Any, owner: Any) -> None:
    _with_password(owner)
    response = api.generic(
        "POST",
        "/api/v1/auth/token/",
        f"username=olivia&password={PASSWORD.replace(' ', '+')}",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert response.json()["token"]


def test_asking_twice_returns_the_same_token(api: Any, owner: Any) -> None:
    _with_password(owner)
    body = {"username": "olivia", "password": PASSWORD}
    first = api.post("/api/v1/auth/token/", body, format="json").json()["token"]
    second = api.post("/api/v1/auth/token/", body, format="json").json()["token"]
    assert first == second


def test_a_wrong_password_is_a_400_in_the_error_shape(api: Any, owner: Any) -> None:
    _with_password(owner)
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": "wrong"}, format="json"
    )
    body = _assert_error(response, 400)
    assert body["code"] == "invalid"
    assert "token" not in body


def test_an_inactive_user_gets_no_token(api: Any, owner: Any) -> None:
    _with_password(owner)
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
    )
    _assert_error(response, 400)


def test_a_token_request_without_a_password_names_the_field(api: Any, owner: Any) -> None:
    response = api.post("/api/v1/auth/token/", {"username": "olivia"}, format="json")
    body = _assert_error(response, 400)
    assert "password" in body["errors"]


def test_the_token_endpoint_is_rate_limited(
    api: Any, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DRF binds the rates to the class at import; lower this one for the test.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "2/min"})
    body = {"username": "olivia", "password": "wrong"}
    statuses = [api.post("/api/v1/auth/token/", body, format="json") for _ in range(3)]
    assert [r.status_code for r in statuses] == [400, 400, 429]
    assert statuses[-1].json()["code"] == "throttled"
    assert int(statuses[-1]["Retry-After"]) > 0


def test_a_bad_token_is_a_401(api: Any, owner: Any) -> None:
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = api.get("/api/v1/workspaces/")
    _assert_error(response, 401)


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
    _assert_error(response, 401)


# --- API keys: the secret --------------------------------------------------------------------


def test_the_secret_is_shown_once_at_create_and_never_in_lists(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    client = client_as(api, owner)
    created = client.post(_keys_url(workspace), {"name": "ci", "role": "admin"}, format="json")
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith(f"alk_{created.json()['prefix']}_")

    listed = client.get(_keys_url(workspace))
    assert listed.status_code == 200
    assert secret not in listed.content.decode()
    assert all("key" not in item for item in listed.json()["results"])


def test_only_the_sha256_of_the_secret_is_stored(workspace: Workspace) -> None:
    key, secret = make_api_key(workspace=workspace)
    stored = ApiKey.objects.filter(pk=key.pk).values()[0]
    assert secret not in {str(value) for value in stored.values()}
    assert stored["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()


def test_a_new_key_works_as_a_bearer_token(api: Any, workspace: Workspace, owner: Any) -> None:
    secret = (
        client_as(api, owner)
        .post(_keys_url(workspace), {"name": "ci"}, format="json")
        .json()["key"]
    )
    api.force_authenticate(user=None)
    response = client_as(api, secret).get(f"/api/v1/workspaces/{workspace.pk}/")
    assert response.status_code == 200
    assert response.json()["role"] == "member"


# --- API keys: refusals ----------------------------------------------------------------------


def test_a_revoked_key_is_a_401_with_a_bearer_challenge(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert client_as(api, owner).delete(f"{_keys_url(workspace)}{key.pk}/").status_code == 204
    api.force_authenticate(user=None)

    response = client_as(api, secret).get(f"/api/v1/workspaces/{workspace.pk}/")
    body = _assert_error(response, 401)
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
    _assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_key_with_the_right_prefix_and_a_wrong_secret_is_a_401(
    api: Any, workspace: Workspace
) -> None:
    _, secret = make_api_key(workspace=workspace)
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    response = client_as(api, forged).get(f"/api/v1/workspaces/{workspace.pk}/")
    _assert_error(response, 401)


def test_a_non_ascii_bearer_header_is_a_401(api: Any, workspace: Workspace) -> None:
    api.credentials(HTTP_AUTHORIZATION="Bearer alk_é_x")
    _assert_error(api.get(f"/api/v1/workspaces/{workspace.pk}/"), 401)


def test_anonymous_requests_get_a_bearer_challenge(api: Any) -> None:
    response = api.get("/api/v1/workspaces/")
    body = _assert_error(response, 401)
    assert body["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "alk_\x00\x00\x00\x00\x00\x00\x00\x00_secretsecretsecretsecret",
        "alk_DEADBEEF_secretsecretsecretsecret",
        "alk_deadbeef_short",
        "alk_deadbeef_secretsecretsecretsecret\n",
        "alk_deadbeef_secret secretsecretsecret",
        "xyz_deadbeef_secretsecretsecretsecret",
    ],
)
def test_a_string_not_shaped_like_a_key_is_refused_before_any_lookup(
    db: Any, raw: str, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        assert selectors.api_key_find(raw_key=raw) is None


def test_a_real_key_is_found_by_its_secret(workspace: Workspace) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert selectors.api_key_find(raw_key=secret) == key


# --- API keys: scope -------------------------------------------------------------------------


def test_a_key_acts_only_in_its_own_workspace(
    api: Any, workspace: Workspace, owner: Any, member_key: str
) -> None:
    elsewhere = make_workspace(owner=owner, name="Elsewhere")
    client = client_as(api, member_key)
    assert client.get(f"/api/v1/workspaces/{workspace.pk}/").status_code == 200
    # Its creator owns "Elsewhere", but the key was made for "Lab" only.
    for url in (
        f"/api/v1/workspaces/{elsewhere.pk}/",
        f"/api/v1/workspaces/{elsewhere.pk}/members/",
    ):
        _assert_error(client.get(url), 404)
    listed = client.get("/api/v1/workspaces/").json()["results"]
    assert [w["id"] for w in listed] == [str(workspace.pk)]


def test_an_admin_key_of_a_superuser_is_still_limited_to_its_workspace(
    api: Any, outsider: Any
) -> None:
    boss = UserFactory(username="boss", is_superuser=True, is_staff=True)
    own = make_workspace(owner=boss, name="Boss's")
    _, secret = make_api_key(workspace=own, role="admin")
    other = make_workspace(owner=outsider, name="Someone else's")
    client = client_as(api, secret)
    _assert_error(client.get(f"/api/v1/workspaces/{other.pk}/"), 404)
    _assert_error(client.delete(f"/api/v1/workspaces/{other.pk}/"), 404)
    assert Workspace.objects.filter(pk=other.pk).exists()


def test_a_member_key_cannot_do_admin_things(
    api: Any, workspace: Workspace, member: Any, member_key: str
) -> None:
    client = client_as(api, member_key)
    url = f"/api/v1/workspaces/{workspace.pk}"
    assert client.get(f"{url}/api-keys/").status_code == 403
    assert client.post(f"{url}/api-keys/", {"name": "x"}, format="json").status_code == 403
    newcomer: Any = UserFactory()
    body = {"user_id": newcomer.pk}
    assert client.post(f"{url}/members/", body, format="json").status_code == 403
    assert client.delete(f"{url}/members/{member.pk}/").status_code == 403
    assert client.patch(f"{url}/", {"name": "Renamed"}, format="json").status_code == 403


def test_an_admin_key_cannot_rename_or_delete_the_workspace(
    api: Any, workspace: Workspace, admin_key: str
) -> None:
    client = client_as(api, admin_key)
    url = f"/api/v1/workspaces/{workspace.pk}/"
    assert client.patch(url, {"name": "Renamed"}, format="json").status_code == 403
    assert client.delete(url).status_code == 403
    assert Workspace.objects.get(pk=workspace.pk).name == "Lab"


def test_a_key_cannot_create_workspaces(api: Any, admin_key: str) -> None:
    response = client_as(api, admin_key).post("/api/v1/workspaces/", {"name": "X"}, format="json")
    _assert_error(response, 403)


def test_a_key_whose_creator_is_deactivated_stops_working(
    api: Any, workspace: Workspace, owner: Any, member_key: str
) -> None:
    client = client_as(api, member_key)
    assert client.get(f"/api/v1/workspaces/{workspace.pk}/").status_code == 200
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    _assert_error(client.get(f"/api/v1/workspaces/{workspace.pk}/"), 401)


# --- API keys: last_used_at ------------------------------------------------------------------


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


# --- Sessions --------------------------------------------------------------------------------


def test_session_auth_works_for_the_browsable_api(client: Any, workspace: Workspace) -> None:
    _with_password(workspace.owner)
    assert client.login(username="olivia", password=PASSWORD)
    response = client.get("/api/v1/workspaces/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "Lab" in response.content.decode()


def test_session_auth_enforces_csrf_on_writes(workspace: Workspace) -> None:
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    _with_password(workspace.owner)
    assert csrf_client.login(username="olivia", password=PASSWORD)
    response = csrf_client.post(
        "/api/v1/workspaces/", {"name": "Via session"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Workspace.objects.filter(name="Via session").exists()

"""workspaces/auth_api.py: POST auth/token/ — username and password for a token, in JSON (one
body type), without credentials, in the error shape when refused, and rate limited per address."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

from tests.conftest import assert_error
from tests.workspaces.conftest import PASSWORD, with_password


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Any:
    """The token endpoint is rate limited per address; earlier tests must not use up the quota."""
    cache.clear()
    yield
    cache.clear()


def test_the_right_password_gets_a_token_that_works(api: Any, owner: Any) -> None:
    with_password(owner)
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    token = response.json()["token"]

    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    listed = api.get("/api/v1/workspaces/")
    assert listed.status_code == 200


def test_a_form_encoded_body_is_refused(api: Any, owner: Any) -> None:
    """One body type, JSON, as the schema says (a form used to be accepted too; a client
    generated from a schema declaring both could not log in)."""
    with_password(owner)
    response = api.generic(
        "POST",
        "/api/v1/auth/token/",
        f"username=olivia&password={PASSWORD.replace(' ', '+')}",
        content_type="application/x-www-form-urlencoded",
    )
    assert assert_error(response, 415)["code"] == "unsupported_media_type"


def test_credentials_sent_along_are_ignored(api: Any, owner: Any, member_key: str) -> None:
    """No authentication at all: a stale or foreign header never gets in the way of logging in."""
    with_password(owner)
    api.credentials(HTTP_AUTHORIZATION="Bearer alk_00000000_revoked")
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200


def test_an_unknown_field_is_refused(api: Any, owner: Any) -> None:
    body = {"username": "olivia", "password": PASSWORD, "remember": True}
    response = api.post("/api/v1/auth/token/", body, format="json")
    assert assert_error(response, 400)["errors"] == {"remember": ["Unknown field."]}


def test_asking_twice_returns_the_same_token(api: Any, owner: Any) -> None:
    with_password(owner)
    body = {"username": "olivia", "password": PASSWORD}
    first = api.post("/api/v1/auth/token/", body, format="json").json()["token"]
    second = api.post("/api/v1/auth/token/", body, format="json").json()["token"]
    assert first == second


def test_a_wrong_password_is_a_400_in_the_error_shape(api: Any, owner: Any) -> None:
    with_password(owner)
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": "wrong"}, format="json"
    )
    body = assert_error(response, 400)
    assert body["code"] == "invalid"
    assert "token" not in body


def test_an_inactive_user_gets_no_token(api: Any, owner: Any) -> None:
    with_password(owner)
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": PASSWORD}, format="json"
    )
    assert_error(response, 400)


def test_a_token_request_without_a_password_names_the_field(api: Any, owner: Any) -> None:
    response = api.post("/api/v1/auth/token/", {"username": "olivia"}, format="json")
    body = assert_error(response, 400)
    assert "password" in body["errors"]


def test_a_token_request_over_the_body_limit_is_a_413(api: Any, owner: Any, settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 100
    response = api.post(
        "/api/v1/auth/token/", {"username": "olivia", "password": "x" * 200}, format="json"
    )
    assert assert_error(response, 413)["code"] == "too_large"


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

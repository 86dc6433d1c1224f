"""config/api.py, the API plumbing every app's routes share (SPEC §9): strict input (unknown
fields, wrong types), JSON bodies and their size limit, the one error shape for 4xx and 500,
JSON 404s under /api/, and pagination. Driven through the workspace routes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

from tests.conftest import assert_error, client_as
from workspaces import selectors
from workspaces.models import Workspace


@pytest.fixture
def as_owner(api: Any, owner: Any) -> Any:
    return client_as(api, owner)


def _token_client(client: Any, user: Any) -> Any:
    """The plain Django client (for responses outside the documented schema), authenticated."""
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=user).key}"
    return client


def _post_raw(client: Any, url: str, body: bytes | str, content_type: str) -> Any:
    return client.generic("POST", url, body, content_type=content_type)


# --- Unknown fields and wrong types ----------------------------------------------------------


def test_an_unknown_field_is_named(as_owner: Any) -> None:
    response = as_owner.post(
        "/api/v1/workspaces/", {"name": "Lab", "owner_id": 7, "colour": "red"}, format="json"
    )
    body = assert_error(response, 400)
    assert body["code"] == "invalid"
    assert set(body["errors"]) == {"owner_id", "colour"}
    assert not Workspace.objects.exists()


def test_an_unknown_field_on_a_member_is_named(
    as_owner: Any, workspace: Workspace, outsider: Any
) -> None:
    response = as_owner.post(
        f"/api/v1/workspaces/{workspace.pk}/members/",
        {"user_id": outsider.pk, "is_superuser": True},
        format="json",
    )
    assert set(assert_error(response, 400)["errors"]) == {"is_superuser"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(123, id="number"),
        pytest.param(["Lab"], id="list"),
        pytest.param({"text": "Lab"}, id="object"),
        pytest.param(True, id="boolean"),
        pytest.param(None, id="null"),
        pytest.param(1.5, id="float"),
    ],
)
def test_a_name_of_the_wrong_type_is_refused(as_owner: Any, name: Any) -> None:
    response = as_owner.post("/api/v1/workspaces/", {"name": name}, format="json")
    body = assert_error(response, 400)
    assert "name" in body["errors"]
    assert not Workspace.objects.exists()


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("abc", id="text"),
        pytest.param([1], id="list"),
        pytest.param(True, id="boolean"),
        pytest.param(1.5, id="fraction"),
        pytest.param(0, id="zero"),
        pytest.param(10**30, id="huge"),
    ],
)
def test_a_user_id_of_the_wrong_type_is_refused(
    as_owner: Any, workspace: Workspace, user_id: Any
) -> None:
    response = as_owner.post(
        f"/api/v1/workspaces/{workspace.pk}/members/", {"user_id": user_id}, format="json"
    )
    assert "user_id" in assert_error(response, 400)["errors"]


def test_a_name_with_a_nul_byte_is_refused(as_owner: Any) -> None:
    response = as_owner.post("/api/v1/workspaces/", {"name": "La\x00b"}, format="json")
    assert "name" in assert_error(response, 400)["errors"]


# --- Bodies ----------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413(as_owner: Any, settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    response = as_owner.post("/api/v1/workspaces/", {"name": "x" * 2000}, format="json")
    assert assert_error(response, 413)["code"] == "too_large"
    assert not Workspace.objects.exists()


def test_a_body_just_under_the_limit_is_accepted(as_owner: Any, settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1024
    body = json.dumps({"name": "x" * 100})
    body += " " * (1024 - len(body))
    response = _post_raw(as_owner, "/api/v1/workspaces/", body, "application/json")
    assert response.status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"name": ', id="truncated"),
        pytest.param("{'name': 'Lab'}", id="single-quotes"),
        pytest.param(b'{"name": "\xff"}', id="not-utf8"),
        pytest.param('{"name": "Lab",}', id="trailing-comma"),
    ],
)
def test_malformed_json_is_a_400(as_owner: Any, body: Any) -> None:
    response = _post_raw(as_owner, "/api/v1/workspaces/", body, "application/json")
    assert assert_error(response, 400)["code"] == "parse_error"
    assert not Workspace.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('["Lab"]', id="list"),
        pytest.param('"Lab"', id="string"),
        pytest.param("42", id="number"),
        pytest.param("null", id="null"),
        pytest.param("true", id="boolean"),
    ],
)
def test_json_that_is_not_an_object_is_a_400(as_owner: Any, body: str) -> None:
    response = _post_raw(as_owner, "/api/v1/workspaces/", body, "application/json")
    assert assert_error(response, 400)["code"] == "not_an_object"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_a_400(as_owner: Any, constant: str) -> None:
    response = _post_raw(
        as_owner, "/api/v1/workspaces/", f'{{"name": "Lab", "x": {constant}}}', "application/json"
    )
    assert assert_error(response, 400)["code"] == "parse_error"


def test_an_unsupported_content_type_is_a_415(as_owner: Any) -> None:
    response = _post_raw(as_owner, "/api/v1/workspaces/", "name=Lab", "text/plain")
    assert assert_error(response, 415)["code"] == "unsupported_media_type"
    assert not Workspace.objects.exists()


def test_a_form_post_to_a_json_route_is_a_415(as_owner: Any) -> None:
    response = _post_raw(
        as_owner, "/api/v1/workspaces/", "name=Lab", "application/x-www-form-urlencoded"
    )
    assert assert_error(response, 415)["code"] == "unsupported_media_type"


# --- URLs and methods ------------------------------------------------------------------------


def test_a_bad_uuid_in_the_url_is_a_json_404(as_owner: Any) -> None:
    response = as_owner.get("/api/v1/workspaces/not-a-uuid/")
    assert assert_error(response, 404)["code"] == "not_found"


def test_an_unknown_workspace_is_a_json_404(as_owner: Any) -> None:
    response = as_owner.get("/api/v1/workspaces/00000000-0000-0000-0000-000000000000/")
    assert assert_error(response, 404)["code"] == "not_found"


def test_an_unknown_url_under_the_api_is_a_json_404(client: Any) -> None:
    # Not a documented route, so the plain client: the schema-checking one has no path to match.
    response = client.get("/api/v1/no-such-thing/")
    assert assert_error(response, 404) == {"detail": "Not found.", "code": "not_found"}


def test_an_unknown_url_outside_the_api_is_not_json(client: Any) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_a_wrong_method_is_a_405_in_the_shape(client: Any, owner: Any) -> None:
    _token_client(client, owner)
    # The plain client: PUT is not a documented operation of this path.
    response = client.put("/api/v1/workspaces/", {"name": "x"}, content_type="application/json")
    body = assert_error(response, 405)
    assert body["code"] == "method_not_allowed"
    assert "PUT" in body["detail"]


def test_a_wrong_method_on_a_workspace_is_a_405(
    client: Any, owner: Any, workspace: Workspace
) -> None:
    _token_client(client, owner)
    response = client.post(
        f"/api/v1/workspaces/{workspace.pk}/", {}, content_type="application/json"
    )
    assert assert_error(response, 405)["code"] == "method_not_allowed"


def test_anonymous_is_a_401(api: Any, workspace: Workspace) -> None:
    for response in (
        api.get("/api/v1/workspaces/"),
        api.post("/api/v1/workspaces/", {"name": "x"}, format="json"),
        api.get(f"/api/v1/workspaces/{workspace.pk}/members/"),
    ):
        assert assert_error(response, 401)["code"] == "not_authenticated"


def test_a_bad_pagination_cursor_is_a_404(as_owner: Any, workspace: Workspace) -> None:
    response = as_owner.get("/api/v1/workspaces/?cursor=not-a-cursor")
    assert assert_error(response, 404)["code"] == "not_found"


@pytest.mark.parametrize("size", ["abc", "-1", "0"])
def test_a_bad_page_size_falls_back_to_the_default(
    as_owner: Any, workspace: Workspace, size: str
) -> None:
    response = as_owner.get(f"/api/v1/workspaces/?page_size={size}")
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


# --- Server errors ---------------------------------------------------------------------------


def test_a_crash_in_an_api_view_is_a_json_500(
    client: Any, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(**kwargs: Any) -> Any:
        raise RuntimeError("simulated crash with a secret: hunter2")

    monkeypatch.setattr(selectors, "workspace_list", crash)
    client.raise_request_exception = False
    _token_client(client, owner)
    response = client.get("/api/v1/workspaces/")
    assert assert_error(response, 500) == {"detail": "Server error.", "code": "server_error"}
    assert b"hunter2" not in response.content


# --- Unknown query parameters, on every route ------------------------------------------------


def _operations() -> list[Any]:
    """Every documented (path, method), with its path parameters filled in with new ids."""
    import re
    import uuid

    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = []
    for path, item in schema["paths"].items():
        url = re.sub(r"\{user_id\}", "7", path)
        url = re.sub(r"\{[a-z_]+\}", lambda _: str(uuid.uuid4()), url)
        for method in item:
            operations.append(pytest.param(method, url, id=f"{method.upper()} {path}"))
    return operations


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "url"), _operations())
def test_every_route_refuses_an_unknown_query_parameter_naming_it(
    as_owner: Any, method: str, url: str
) -> None:
    response = as_owner.generic(
        method.upper(), f"{url}?bogus=1&also=2", "{}", content_type="application/json"
    )
    body = assert_error(response, 400)
    assert body["errors"] == {
        "also": ["Unknown query parameter."], "bogus": ["Unknown query parameter."],
    }  # fmt: skip


@pytest.mark.django_db
def test_list_parameters_and_filters_are_known(as_owner: Any, workspace: Workspace) -> None:
    runs = f"/api/v1/workspaces/{workspace.pk}/runs/"
    assert as_owner.get(f"{runs}?page_size=5&status=running&thread_id=t").status_code == 200
    assert as_owner.get(f"{runs}?format=json").status_code == 200  # DRF's own
    refused = as_owner.get(f"{runs}?statuses=running")
    assert assert_error(refused, 400)["errors"] == {"statuses": ["Unknown query parameter."]}
    assert assert_error(as_owner.get(f"{runs}?status=dancing"), 400)["errors"]["status"]

"""The OpenAPI document (config/schema.py post-processing included) and its docs page."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, cast

import pytest
from openapi_spec_validator import validate

from config.schema import ERROR_RESPONSES


@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    from django.test import Client

    with django_db_blocker.unblock():
        response = Client().get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    body: dict[str, Any] = response.json()
    return body


def test_the_schema_is_served_without_logging_in(client: Any) -> None:
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"openapi: 3." in response.content


def test_the_schema_is_valid_openapi_3(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    validate(cast("Mapping[Hashable, Any]", schema))


def test_the_schema_documents_the_workspace_routes(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    assert set(paths["/api/v1/workspaces/"]) >= {"get", "post"}
    assert set(paths["/api/v1/workspaces/{workspace_id}/"]) >= {"get", "patch", "delete"}
    assert set(paths["/api/v1/workspaces/{workspace_id}/members/{user_id}/"]) >= {
        "patch",
        "delete",
    }
    assert "post" in paths["/api/v1/auth/token/"]
    assert not any(path.startswith(("/api/v1/schema", "/api/v1/docs")) for path in paths)


def test_every_operation_documents_the_error_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            documented = set(operation["responses"])
            missing = set(ERROR_RESPONSES) - documented
            assert not missing, f"{method.upper()} {path} lacks {sorted(missing)}"


def test_the_api_key_secret_is_only_in_the_create_response(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    assert "key" in components["ApiKeyCreatedOut"]["properties"]
    assert "key" not in components["ApiKeyOut"]["properties"]
    assert not any("secret_hash" in c.get("properties", {}) for c in components.values())


def test_the_docs_page_renders(client: Any) -> None:
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger" in response.content.lower()

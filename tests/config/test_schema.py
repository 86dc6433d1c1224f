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


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_the_docs_load_nothing_from_elsewhere(client: Any, page: str) -> None:
    """Swagger UI and ReDoc come with the project (drf-spectacular-sidecar): offline, they
    still work."""
    import re

    html = client.get(f"/api/v1/{page}/").content.decode()
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets
    assert all(url.startswith("/static/") for url in assets), assets


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def test_logging_in_needs_no_credentials_and_takes_one_body_type(schema: dict[str, Any]) -> None:
    operation = schema["paths"]["/api/v1/auth/token/"]["post"]
    assert operation.get("security", []) == [] and "security" not in schema
    assert list(operation["requestBody"]["content"]) == ["application/json"]


def test_every_list_declares_its_cursor_page_size_and_filters(schema: dict[str, Any]) -> None:
    lists = {
        path: {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        for path, method, operation in _operations(schema)
        if method == "get" and "Paginated" in str(operation["responses"]["200"])
    }
    assert len(lists) == 8  # workspaces, members, keys, runs (2), artifacts (2), commands
    for path, names in lists.items():
        assert {"cursor", "page_size"} <= names, path
    assert lists["/api/v1/runs/"] >= {"status", "thread_id", "workspace"}
    assert lists["/api/v1/artifacts/"] >= {"review_state", "type", "thread_id", "run"}
    assert lists["/api/v1/runs/{run_id}/commands/"] >= {"kind", "status"}


def test_429s_declare_retry_after_and_downloads_their_attachment_headers(
    schema: dict[str, Any],
) -> None:
    downloads = 0
    for path, method, operation in _operations(schema):
        assert "Retry-After" in operation["responses"]["429"]["headers"], (method, path)
        ok = operation["responses"].get("200", {})
        if "application/octet-stream" in ok.get("content", {}):
            downloads += 1
            assert {"Content-Disposition", "X-Content-Type-Options"} <= set(ok["headers"])
    assert downloads == 2  # a sandbox file, an artifact's content


def test_no_docstring_of_the_code_leaks_into_the_schema(schema: dict[str, Any]) -> None:
    """Descriptions are written for API users (extend_schema, help_text); docstrings, for
    the code's readers, never show."""
    import inspect

    from artifacts import api as artifacts_api
    from sandboxes import api as sandboxes_api
    from workspaces import api as workspaces_api
    from workspaces import auth_api

    text = str(schema)
    for module in (artifacts_api, sandboxes_api, workspaces_api, auth_api):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            doc = inspect.getdoc(cls) if cls.__module__ == module.__name__ else None
            if doc and cls.__doc__:
                first_line = doc.splitlines()[0]
                assert first_line not in text, f"{module.__name__}.{name}: {first_line}"

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
    # workspaces, members, keys, runs (2), artifacts (2), commands, webhooks, deliveries
    assert len(lists) == 10
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
    assert downloads == 3  # a sandbox file, an artifact's content, a run's archive


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


# --- a client generated from the served schema runs the whole flow -----------------------------


@pytest.fixture
def generated_client(asgi_server: Any, tmp_path: Any) -> Any:
    """The package openapi-python-client generates from the schema the server serves, imported
    as it is (nothing edited)."""
    import importlib
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    schema_file = tmp_path / "schema.json"
    schema_file.write_bytes(httpx.get(f"{asgi_server.url}/api/v1/schema/?format=json").content)
    config = tmp_path / "generator.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run: the code is used as generated
    generator = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run(
        [str(generator), "generate", "--path", str(schema_file), "--meta", "none",
         "--output-path", str(tmp_path / "airlock_client"), "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("airlock_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "airlock_client"]:
            del sys.modules[name]


def _cursor(url: str | None) -> str:
    from urllib.parse import parse_qs, urlparse

    assert url
    return parse_qs(urlparse(url).query)["cursor"][0]


# Downloads are streamed as the server streams: never read into memory whole under ASGI.
@pytest.mark.filterwarnings("error:StreamingHttpResponse must consume")
def test_a_generated_client_runs_the_whole_flow_unmodified(
    asgi_server: Any, generated_client: Any, task_runner: Any, owner: Any, reviewer: Any
) -> None:
    """Token login, a workspace and a key, an interactive run (exec, upload, download,
    capture), a job with output_dir, a filtered list read page by page, a review, the
    download as a member, and usage: every call through the generated code."""
    import importlib
    import io

    from tests.workspaces.conftest import PASSWORD, with_password

    models = importlib.import_module("airlock_client.models")
    types = importlib.import_module("airlock_client.types")
    call = {
        module.split(".")[1]: importlib.import_module(f"airlock_client.api.{module}")
        for module in (
            "auth.auth_token_create", "workspaces.workspaces_create",
            "workspaces.workspaces_members_create", "workspaces.workspaces_api_keys_create",
            "workspaces.workspaces_runs_create", "workspaces.workspaces_usage_retrieve",
            "runs.runs_retrieve", "runs.runs_exec_create", "runs.runs_files_update",
            "runs.runs_files_retrieve", "runs.runs_artifacts_create", "runs.runs_list",
            "runs.runs_commands_list", "artifacts.artifacts_list",
            "artifacts.artifacts_review_create", "artifacts.artifacts_content_retrieve",
        )
    }  # fmt: skip
    Client = generated_client.Client
    AuthenticatedClient = generated_client.AuthenticatedClient
    url = asgi_server.url

    # A person logs in with a password; the token needs no credentials to get.
    with_password(owner)
    with_password(reviewer)
    login = call["auth_token_create"].sync(
        client=Client(base_url=url),
        body=models.TokenInRequest(username="olivia", password=PASSWORD),
    )
    olivia = AuthenticatedClient(base_url=url, token=login.token, prefix="Token")
    adam_login = call["auth_token_create"].sync(
        client=Client(base_url=url),
        body=models.TokenInRequest(username="adam", password=PASSWORD),
    )
    adam = AuthenticatedClient(base_url=url, token=adam_login.token, prefix="Token")

    workspace = call["workspaces_create"].sync(
        client=olivia, body=models.WorkspaceInRequest(name="Generated")
    )
    assert workspace.role == models.MembershipRoleEnum.OWNER
    added = call["workspaces_members_create"].sync(
        workspace.id,
        client=olivia,
        body=models.MemberAddInRequest(username="adam", role=models.ApiKeyRoleEnum.ADMIN),
    )
    assert added.username == "adam"
    key = call["workspaces_api_keys_create"].sync(
        workspace.id, client=olivia, body=models.ApiKeyInRequest(name="agent")
    )
    agent = AuthenticatedClient(base_url=url, token=key.key, prefix="Bearer", timeout=90)

    # An interactive run: exec, upload, download, capture.
    run = call["workspaces_runs_create"].sync(
        workspace.id,
        client=agent,
        body=models.RunCreateInRequest(thread_id="gen", prompt="explore"),
    )
    assert run.status == models.RunStatusEnum.BOOTING
    run = call["runs_retrieve"].sync(run.id, client=agent, wait_s=30, while_status="booting")
    assert run.status == models.RunStatusEnum.RUNNING
    result = call["runs_exec_create"].sync(
        run.id, client=agent, body=models.ExecInRequest(command="echo hello; exit 2")
    )
    assert (result.exit_code, result.stdout, result.timed_out) == (2, "hello\n", False)
    payload = bytes(range(256))
    uploaded = call["runs_files_update"].sync(
        run.id, client=agent, path="/home/user/out/data.bin",
        body=types.File(payload=io.BytesIO(payload)),
    )  # fmt: skip
    assert (uploaded.path, uploaded.size) == ("/home/user/out/data.bin", 256)
    downloaded = call["runs_files_retrieve"].sync_detailed(
        run.id, client=agent, path="/home/user/out/data.bin"
    )
    assert downloaded.parsed.payload.read() == payload
    assert downloaded.headers["content-disposition"] == 'attachment; filename="data.bin"'
    captured = call["runs_artifacts_create"].sync(
        run.id, client=agent, body=models.CaptureInRequest(path="/home/user/out/data.bin")
    )
    assert captured.review_state == models.ReviewStateEnum.PENDING
    history = call["runs_commands_list"].sync(run.id, client=agent)
    assert [c.command for c in history.results] == ["echo hello; exit 2"]

    # A job run: its command's files under output_dir become pending artifacts.
    job = call["workspaces_runs_create"].sync(
        workspace.id, client=agent, body=models.RunCreateInRequest(
            thread_id="gen", prompt="job", command="mkdir -p results && echo 42 > results/a.txt",
            output_dir="/home/user/results",
        ),
    )  # fmt: skip
    job = call["runs_retrieve"].sync(
        job.id, client=agent, wait_s=60, while_status="booting,running"
    )
    assert (job.status, job.exit_code) == (models.RunStatusEnum.SUCCEEDED, 0)

    # A filtered list, page by page with the cursor.
    pending_state = models.ArtifactsListReviewState.PENDING
    first = call["artifacts_list"].sync(client=agent, review_state=pending_state, page_size=2)
    assert len(first.results) == 2
    rest = call["artifacts_list"].sync(
        client=agent, review_state=pending_state, page_size=2, cursor=_cursor(first.next_)
    )
    pending = [a.id for a in first.results + rest.results]
    assert len(pending) == 3  # the capture, the job's log and its a.txt
    succeeded = models.RunsListStatus.SUCCEEDED
    runs = call["runs_list"].sync(client=agent, thread_id="gen", status=succeeded)
    assert [r.id for r in runs.results] == [job.id]

    # A reviewer approves; the member key may then download it.
    refused = call["artifacts_content_retrieve"].sync_detailed(captured.id, client=agent)
    assert refused.status_code == 404
    decided = call["artifacts_review_create"].sync(
        captured.id, client=adam, body=models.ReviewInRequest(decision=models.DecisionEnum.APPROVE)
    )
    assert decided.review_state == models.ReviewStateEnum.APPROVED
    content = call["artifacts_content_retrieve"].sync_detailed(captured.id, client=agent)
    assert content.parsed.payload.read() == payload
    assert content.headers["content-disposition"].startswith("attachment")

    # Usage, for the owner; a typed error for the member key.
    usage = call["workspaces_usage_retrieve"].sync(workspace.id, client=olivia)
    assert usage.runs == 2
    denied = call["workspaces_usage_retrieve"].sync(workspace.id, client=agent)
    assert isinstance(denied, models.Error) and denied.code == "permission_denied"


def test_the_schema_generates_without_a_warning(tmp_path: Any) -> None:
    """`manage.py spectacular --validate --fail-on-warn`: every route typed, no ambiguous
    enum names, valid OpenAPI."""
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml"))
    assert (tmp_path / "s.yml").read_text().startswith("openapi: 3.")

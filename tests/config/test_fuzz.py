"""No 500 anywhere in the API, whatever a client sends: a schema-driven fuzzer in the manner of
schemathesis, kept small and deterministic. Every operation of the OpenAPI schema is called with
hostile values for each of its body fields and query parameters, hostile whole bodies, and
OPTIONS; each answer must be below 500. Plus the 500s that were found by hand, as regressions."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from sandboxes.models import Command
from tests.factories import UserFactory, make_api_key, make_workspace
from tests.sandboxes.fake_backend import FakeBackend, fake_backend_fixture, start_run  # noqa: F401
from workspaces.models import Workspace

pytestmark = pytest.mark.django_db

HOSTILE_VALUES: list[Any] = [
    None, 0, -1, 2**63, 1.5, True, "", "x" * 5000, "\u0000nul", "../../etc/passwd",
    "2026-13-45T99:99:99", [], {}, [[["deep"]]], {"a": {"b": {}}},
]  # fmt: skip
HOSTILE_QUERY = ["", "x", "-1", "99999999999999999999", "\u0000", "2026-13-45", "a,b,,", "%00"]
HOSTILE_BODIES = ["[]", '"text"', "123", "null", "{", '{"a": 1}', "[" * 1000 + "]" * 1000]
# Long-lived streams and the deletion of the fixture's own workspace are left out.
SKIPPED = {("get", "/api/v1/workspaces/{workspace_id}/events/stream/")}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return dict(json.loads(json.dumps(generated, default=str)))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        node = schema["components"]["schemas"][name]
    return node


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete") and (
                (method, path) not in SKIPPED
            ):
                found.append((method, path, operation))
    # Deletions last: what they delete is what the other calls are made on.
    return sorted(found, key=lambda op: op[0] == "delete")


@pytest.fixture
def world(fake_backend: FakeBackend) -> dict[str, str]:
    """Real objects for the path parameters, so calls get past the lookups."""
    workspace: Workspace = make_workspace(owner=UserFactory())
    run = start_run(workspace=workspace)
    command = Command.objects.create(
        run=run, workspace=workspace, kind="exec", command="true", cwd="/home/user",
        actor="user:x", status="exited",
    )  # fmt: skip
    return {
        "workspace_id": str(workspace.pk),
        "run_id": str(run.pk),
        "command_id": str(command.pk),
        "user_id": str(workspace.owner.pk),
        "owner": workspace.owner,  # type: ignore[dict-item]
        "key": make_api_key(workspace=workspace, role="admin")[1],
    }


def _path(template: str, world: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(world.get(m.group(1), uuid.UUID(int=7))), template)


def _call(client: APIClient, method: str, path: str, **kwargs: Any) -> int:
    response = getattr(client, method)(path, **kwargs)
    if getattr(response, "streaming", False):
        response.close()
    return int(response.status_code)


def test_no_operation_answers_500_to_hostile_input(
    schema: dict[str, Any], world: dict[str, Any]
) -> None:
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world['key']}")
    failures: list[str] = []
    calls = 0

    def check(method: str, path: str, what: str, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        status = _call(client, method, path, **kwargs)
        if status >= 500:
            failures.append(f"{method.upper()} {path} {what}: {status}")

    for method, template, operation in _operations(schema):
        path = _path(template, world)
        check("options", path, "OPTIONS")
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "query":
                continue
            for value in HOSTILE_QUERY:
                check(method, path, f"?{parameter['name']}={value!r}",
                      data={parameter["name"]: value} if method == "get" else None,
                      QUERY_STRING=f"{parameter['name']}={value}")  # fmt: skip
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            body_schema = _resolve(schema, content["application/json"]["schema"])
            for name in body_schema.get("properties", {}):
                for value in HOSTILE_VALUES:
                    check(method, path, f"{{{name}: {str(value)[:20]!r}}}",
                          data={name: value}, format="json")  # fmt: skip
            for body in HOSTILE_BODIES:
                check(method, path, f"body {body[:20]!r}",
                      data=body, content_type="application/json")  # fmt: skip
        elif content:
            check(method, path, "raw body", data=b"\x00\xff" * 100,
                  content_type=next(iter(content)))  # fmt: skip

    assert failures == [], f"{len(failures)} of {calls} calls answered 5xx"
    assert calls > 500  # the fuzzer did reach the operations


def test_options_on_a_workspaces_runs_answers_what_the_route_takes(api: Any) -> None:
    workspace = make_workspace(owner=UserFactory())
    _, key = make_api_key(workspace=workspace)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    response = client.options(f"/api/v1/workspaces/{workspace.pk}/runs/")

    assert response.status_code == 200
    assert response.json()["parses"] == ["application/json"]


DEEP_LIST = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000


@pytest.mark.parametrize("body", [DEEP_LIST, DEEP_OBJECT], ids=["list", "object"])
@pytest.mark.parametrize("authenticated", [True, False], ids=["key", "anonymous"])
@pytest.mark.parametrize("route", ["auth/token/", "workspaces/{ws}/runs/"])
def test_json_nested_1000_deep_is_a_400(body: str, authenticated: bool, route: str) -> None:
    workspace = make_workspace(owner=UserFactory())
    client = APIClient(raise_request_exception=False)
    if authenticated:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(workspace=workspace)[1]}")

    response = client.post(
        "/api/v1/" + route.format(ws=workspace.pk), data=body, content_type="application/json"
    )

    if not authenticated and route != "auth/token/":
        assert response.status_code == 401  # before any parsing
    else:
        assert response.status_code == 400
        assert response.json()["code"] == "parse_error"
        assert "nested deeper than 64" in response.json()["detail"]


def test_json_within_the_depth_limit_is_parsed_and_brackets_in_strings_do_not_count(
    db: Any,
) -> None:
    workspace = make_workspace(owner=UserFactory())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(workspace=workspace)[1]}")
    runs = f"/api/v1/workspaces/{workspace.pk}/runs/"
    brackets = "[[[[{{{{" * 20  # 160 brackets, all inside a string

    created = client.post(runs, {"thread_id": "t", "prompt": brackets}, format="json")
    nested: Any = "leaf"
    for _ in range(60):
        nested = [nested]
    refused = client.post(runs, {"thread_id": "t", "prompt": "p", "metadata": {"a": nested}},
                          format="json")  # fmt: skip

    assert created.status_code == 201, created.content
    assert created.json()["prompt"] == brackets
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid"  # parsed, then refused by validation

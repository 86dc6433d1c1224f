"""artifacts/mcp.py: the MCP server at /mcp/, through the official SDK's own client over
streamable HTTP against a real uvicorn server, on real local sandboxes. An agent with a
member key and one with an admin key each list the tools and run start → exec → write →
submit → status (waiting for the human decision) → read, with the refusals the REST API would
answer (the same `detail` and `code`), and nothing without a valid key."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from artifacts import review
from artifacts.models import Artifact
from tests.factories import make_api_key, make_run, make_workspace
from workspaces.access import Actor

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = {
    "sandbox_start", "sandbox_exec", "sandbox_write_file", "sandbox_read_file",
    "sandbox_list_files", "sandbox_stop", "artifact_submit", "artifact_status", "artifact_read",
}  # fmt: skip


class Agent:
    """An MCP client session with one API key, driven from the test's thread."""

    def __init__(self, url: str, key: str):
        self.url = f"{url}/mcp/"
        self.key = key

    def run(self, calls: Any) -> Any:
        async def session() -> Any:
            headers = {"Authorization": f"Bearer {self.key}"}
            async with httpx2.AsyncClient(headers=headers, timeout=90) as http:
                transport = streamable_http_client(self.url, http_client=http)
                async with Client(transport) as client:
                    return await calls(client)

        return asyncio.run(session())

    def call(self, tool: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
        """(is_error, the JSON result) of one tool call."""

        async def one(client: Client) -> Any:
            return await client.call_tool(tool, arguments)

        result = self.run(one)
        [content] = result.content
        body = json.loads(content.text)
        assert result.structured_content == body
        return bool(result.is_error), body


def _decide_soon(artifact_id: str, reviewer: Any, decision: str = "approve") -> threading.Thread:
    """A human approves the artifact half a second from now, while the agent waits."""

    def decide() -> None:
        from django.db import connections

        time.sleep(0.5)
        artifact = Artifact.objects.get(pk=artifact_id)
        review.artifact_review(artifact=artifact, actor=Actor(user=reviewer), decision=decision)
        connections.close_all()

    thread = threading.Thread(target=decide, daemon=True)
    thread.start()
    return thread


def test_the_tools_are_listed_with_typed_inputs_and_descriptions(
    asgi_server: Any, member_key: str
) -> None:
    async def list_tools(client: Client) -> Any:
        return await client.list_tools()

    tools = {tool.name: tool for tool in Agent(asgi_server.url, member_key).run(list_tools).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        properties = tool.input_schema["properties"]
        assert "ctx" not in properties
        assert all(p.get("description") or "$ref" in str(p) for p in properties.values()), tool.name
    exec_input = tools["sandbox_exec"].input_schema
    assert set(exec_input["required"]) == {"run_id", "command"}
    assert exec_input["properties"]["run_id"]["format"] == "uuid"
    assert tools["artifact_read"].input_schema["properties"]["encoding"]["enum"] == [
        "utf-8", "base64",
    ]  # fmt: skip


@pytest.mark.parametrize("key_role", ["member", "admin"])
def test_an_agent_works_in_a_sandbox_and_waits_for_the_decision(
    asgi_server: Any, task_runner: Any, workspace: Any, reviewer: Any, key_role: str
) -> None:
    agent = Agent(asgi_server.url, make_api_key(workspace=workspace, role=key_role)[1])

    error, run = agent.call("sandbox_start", thread_id="t-mcp", prompt="Write a report")
    assert (error, run["status"]) == (False, "running")
    run_id = run["id"]

    error, result = agent.call("sandbox_exec", run_id=run_id, command="echo hi; exit 3")
    assert (error, result["exit_code"], result["stdout"]) == (False, 3, "hi\n")

    error, written = agent.call(
        "sandbox_write_file", run_id=run_id, path="/home/user/out/report.md", content="# Q3\n"
    )
    assert (error, written) == (False, {"path": "/home/user/out/report.md", "size": 5})
    error, listed = agent.call("sandbox_list_files", run_id=run_id, path="/home/user/out")
    assert [e["name"] for e in listed["entries"]] == ["report.md"]
    error, read = agent.call("sandbox_read_file", run_id=run_id, path="/home/user/out/report.md")
    assert read["content"] == "# Q3\n"

    error, artifact = agent.call(
        "artifact_submit", run_id=run_id, path="/home/user/out/report.md", title="Report"
    )
    assert (error, artifact["review_state"], artifact["title"]) == (False, "pending", "Report")

    # Until a reviewer approves it, a member key may not read it (as in REST: not found);
    # an admin key may.
    error, body = agent.call("artifact_read", artifact_id=artifact["id"])
    if key_role == "member":
        assert (error, body) == (True, {"detail": "No such artifact.", "code": "not_found",
                                        "status": 404})  # fmt: skip
    else:
        assert (error, body["content"]) == (False, "# Q3\n")

    decision = _decide_soon(artifact["id"], reviewer)
    error, status = agent.call("artifact_status", artifact_id=artifact["id"], wait_s=30)
    decision.join()
    assert (error, status["review_state"]) == (False, "approved")

    error, body = agent.call("artifact_read", artifact_id=artifact["id"], encoding="base64")
    assert (error, body["content"], body["size"]) == (False, "IyBRMwo=", 5)

    error, stopped = agent.call("sandbox_stop", run_id=run_id)
    assert (error, stopped["status"], stopped["end_reason"]) == (False, "succeeded", "completed")


def test_refusals_are_tool_errors_with_the_apis_detail_and_code(
    asgi_server: Any, workspace: Any, owner: Any, outsider: Any, local_sandboxes: Any
) -> None:
    info = local_sandboxes.create(template="", metadata={"app": "airlock"}, envs={}, timeout_s=600)
    owners_run = make_run(workspace=workspace, status="running", sandbox_id=info.sandbox_id)
    member = Agent(asgi_server.url, make_api_key(workspace=workspace, role="member")[1])
    run_id = str(owners_run.pk)

    refusals = {
        "timeout past the run": member.call(
            "sandbox_exec", run_id=run_id, command="true", timeout_s=10**7
        ),
        "unknown env name": member.call(
            "sandbox_exec", run_id=run_id, command="true", env={"1BAD": "x"}
        ),
        "path outside home": member.call(
            "sandbox_write_file", run_id=run_id, path="/etc/passwd", content="x"
        ),
        "missing file": member.call("artifact_submit", run_id=run_id, path="/home/user/nope"),
        "another's run": member.call("sandbox_stop", run_id=run_id),
        "wait too long": member.call(
            "artifact_status", artifact_id="00000000-0000-0000-0000-000000000000", wait_s=5
        ),
    }
    codes = {
        name: (error, body["status"], body["code"]) for name, (error, body) in refusals.items()
    }
    assert codes == {
        "timeout past the run": (True, 400, "timeout_too_long"),
        "unknown env name": (True, 400, "invalid"),
        "path outside home": (True, 400, "invalid_path"),
        "missing file": (True, 404, "file_not_found"),
        "another's run": (True, 403, "permission_denied"),
        "wait too long": (True, 404, "not_found"),
    }
    assert refusals["another's run"][1]["detail"] == "Members may only end their own runs."

    # A key acts only in its own workspace: another workspace's run does not exist for it.
    elsewhere = make_workspace(owner=outsider, name="Elsewhere")
    foreign = Agent(asgi_server.url, make_api_key(workspace=elsewhere, role="admin")[1])
    error, body = foreign.call("sandbox_exec", run_id=run_id, command="true")
    assert (error, body) == (True, {"detail": "No such run.", "code": "not_found", "status": 404})

    ended = make_run(workspace=workspace, status="succeeded")
    error, body = member.call("sandbox_exec", run_id=str(ended.pk), command="true")
    assert (error, body["status"], body["code"]) == (True, 409, "invalid_state")
    assert owners_run.commands.count() == 0  # nothing ran


@pytest.mark.parametrize(
    "header", ["", "Bearer alk_00000000_nope", "Token 0123456789abcdef0123456789abcdef01234567"]
)
def test_nothing_is_served_without_a_live_workspace_key(asgi_server: Any, header: str) -> None:
    headers = {"Authorization": header, "Accept": "application/json, text/event-stream"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = httpx2.post(f"{asgi_server.url}/mcp/", json=body, headers=headers, timeout=10)
    assert response.status_code == 401
    assert set(response.json()) == {"detail", "code"}


def test_a_revoked_key_is_refused_at_once(asgi_server: Any, workspace: Any) -> None:
    from workspaces import services as workspace_services

    key, secret = make_api_key(workspace=workspace, role="admin")
    agent = Agent(asgi_server.url, secret)
    assert agent.call("sandbox_list_files", run_id=str(make_run(workspace=workspace).pk))[0]
    workspace_services.api_key_revoke(api_key=key, actor=Actor(user=workspace.owner))
    with pytest.raises(Exception):  # noqa: B017, PT011  # the SDK's own error on a 401
        agent.call("sandbox_list_files", run_id=str(make_run(workspace=workspace).pk))


def test_an_agent_that_waits_has_its_sandbox_paused_and_its_next_call_resumes_it(
    asgi_server: Any, task_runner: Any, workspace: Any
) -> None:
    from sandboxes import services
    from sandboxes.models import SandboxRun
    from workspaces.access import Actor

    agent = Agent(asgi_server.url, make_api_key(workspace=workspace, role="member")[1])
    error, run = agent.call("sandbox_start", thread_id="t-wait", prompt="wait", on_idle="pause")
    assert (error, run["status"], run["on_idle"]) == (False, "running", "pause")
    agent.call("sandbox_exec", run_id=run["id"], command="echo kept > note")
    # What the sweep does once the run is idle for its idle timeout.
    services.run_pause(run=SandboxRun.objects.get(pk=run["id"]), actor=Actor.system("sweep"))

    error, result = agent.call("sandbox_exec", run_id=run["id"], command="cat note")

    assert (error, result["stdout"]) == (False, "kept\n")
    assert SandboxRun.objects.get(pk=run["id"]).status == "running"
    error, stopped = agent.call("sandbox_stop", run_id=run["id"])
    assert (error, stopped["status"]) == (False, "succeeded")

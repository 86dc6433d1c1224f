"""Shared fixtures: named people (owner, admin, member, outsider), their workspace, keys,
and an API client that checks every response against the OpenAPI schema."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import UserFactory, make_api_key, make_workspace
from tests.fakes.fixtures import *  # noqa: F403
from tests.fakes.receiver import receivers  # noqa: F401
from tests.sandboxes.backends.fixtures_local import *  # noqa: F403

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_service(available: bool, reason: str) -> None:
    """Skip locally when a service is missing; under CI=true a missing service is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required services must be present)")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _remove_sqlite_sidecars() -> Any:
    """pytest-django drops the file test database but not SQLite's WAL side files."""
    yield
    from django.db import connection

    if connection.vendor == "sqlite":
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(connection.settings_dict["TEST"]["NAME"]) + suffix)


@pytest.fixture(scope="session", autouse=True)
def _stop_the_trail_watch(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """The trail watch's poller holds a database connection while it runs: it stops before
    the test database is dropped."""
    yield
    from workspaces.watch import trail_watch

    trail_watch().shutdown()


@pytest.fixture(scope="session", autouse=True)
def celery_broker_env(tmp_path_factory: Any) -> dict[str, str]:
    """Keep the test process's task messages out of var/: the embedded filesystem broker
    moves to a temporary folder (Redis, when CELERY_BROKER_URL names it, stays). Returns the
    environment a worker subprocess needs to consume the same queue."""
    from config.celery import app

    if not app.conf.broker_url.startswith("filesystem://"):
        return {"CELERY_BROKER_URL": app.conf.broker_url}
    base = tmp_path_factory.mktemp("celery-broker")
    for sub in ("queue", "processed", "control"):
        (base / sub).mkdir()
    app.conf.broker_transport_options = {
        "data_folder_in": str(base / "queue"),
        "data_folder_out": str(base / "queue"),
        "processed_folder": str(base / "processed"),
        "control_folder": str(base / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
    return {"CELERY_BROKER_URL": "filesystem://localhost/", "CELERY_FILESYSTEM_DIR": str(base)}


def _reset_broker_pools() -> None:
    """Forget the Celery app's pooled broker connections: the next send connects to the
    broker_url configured now (what Celery does itself after a fork)."""
    from config.celery import app

    app._pool = None  # type: ignore[attr-defined]  # Celery's own, not in its stubs
    app.amqp._producer_pool = None  # type: ignore[attr-defined]


@pytest.fixture
def broker_down() -> Any:
    """The test process's Celery app sends to a broker on a port nobody listens on, until the
    test calls the fixture's result (the broker "comes back"), or it ends."""
    import socket

    from config.celery import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nobody listens once the socket is closed
    # Sends go to broker_write_url, and Celery lets the environment win over its settings.
    saved = os.environ.get("CELERY_BROKER_WRITE_URL")
    options = app.conf.broker_transport_options
    os.environ["CELERY_BROKER_WRITE_URL"] = f"redis://127.0.0.1:{port}/0"
    app.conf.broker_transport_options = {}
    _reset_broker_pools()

    def back() -> None:
        if saved is None:
            os.environ.pop("CELERY_BROKER_WRITE_URL", None)
        else:
            os.environ["CELERY_BROKER_WRITE_URL"] = saved
        app.conf.broker_transport_options = options
        _reset_broker_pools()

    yield back
    back()


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Any) -> Any:
    """Artifacts are stored under the test's own directory, never var/media."""
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    return root


@pytest.fixture(autouse=True)
def _own_cache(settings: Any) -> None:
    """Each test starts with an empty cache of its own (throttle counts included): the
    configured one (CACHE_URL, a file cache by default) is shared by every process on the
    machine, parallel test runs too. tests/config/test_cache.py tests the shared one."""
    import uuid

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"test-{uuid.uuid4()}",
        }
    }


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def openapi() -> Any:
    from drf_spectacular.generators import SchemaGenerator
    from openapi_core import OpenAPI

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return OpenAPI.from_dict(_jsonable(schema))


def _jsonable(value: Any) -> Any:
    import json

    from rest_framework.utils.encoders import JSONEncoder

    return json.loads(json.dumps(value, cls=JSONEncoder))


def _response_only_request(request: Any) -> Any:
    """openapi-core's request adapter reads the body, which the view already consumed; only
    the method and path matter for checking a response."""
    from openapi_core.contrib.django import DjangoOpenAPIRequest

    class _Request(DjangoOpenAPIRequest):
        @property
        def body(self) -> bytes:
            return b""

    return _Request(request)


class SchemaCheckingClient(APIClient):
    """Every /api/v1/ response must match the documented schema, errors included."""

    def __init__(self, openapi: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.openapi = openapi

    def request(self, **kwargs: Any) -> Any:
        from openapi_core.contrib.django import DjangoOpenAPIResponse

        response = super().request(**kwargs)
        path = kwargs.get("PATH_INFO", "")
        if path.startswith("/api/v1/") and not path.startswith(("/api/v1/schema", "/api/v1/docs")):
            if response.streaming:
                return response
            self.openapi.validate_response(
                _response_only_request(response.wsgi_request), DjangoOpenAPIResponse(response)
            )
        return response


@pytest.fixture
def api(openapi: Any) -> SchemaCheckingClient:
    return SchemaCheckingClient(openapi)


@pytest.fixture
def owner(db: Any) -> Any:
    return UserFactory(username="olivia")


@pytest.fixture
def admin_user(db: Any) -> Any:
    return UserFactory(username="adam")


@pytest.fixture
def member(db: Any) -> Any:
    return UserFactory(username="mia")


@pytest.fixture
def outsider(db: Any) -> Any:
    return UserFactory(username="oscar")


@pytest.fixture
def workspace(owner: Any, admin_user: Any, member: Any) -> Any:
    return make_workspace(owner=owner, members={admin_user: "admin", member: "member"})


@pytest.fixture
def member_key(workspace: Any) -> str:
    return make_api_key(workspace=workspace, role="member")[1]


@pytest.fixture
def admin_key(workspace: Any) -> str:
    return make_api_key(workspace=workspace, role="admin", name="ops")[1]


def client_as(api: SchemaCheckingClient, who: Any) -> SchemaCheckingClient:
    """Authenticate as a user (forced), as a raw API key string, or stay anonymous (None)."""
    api.force_authenticate(user=None)
    api.credentials()
    if isinstance(who, str):
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {who}")
    elif who is not None:
        api.force_authenticate(user=who)
    return api


@pytest.fixture
def local_sandboxes(settings: Any, local_backend: Any) -> Any:
    """Runs use real local bubblewrap sandboxes, configured the way production configures
    a backend: through settings. Returns the backend, to look inside."""
    settings.SANDBOX_BACKEND = "local"
    settings.SANDBOX_LOCAL_ROOT = local_backend.root
    settings.SANDBOX_LOCAL_CGROUP = local_backend.cgroup_parent  # the tests' own cgroups
    return local_backend


@pytest.fixture
def e2b_sandboxes(settings: Any, e2b_server: Any, e2b_backend: Any) -> Any:
    """Runs use the e2b backend (the real SDK) against the local E2B test double."""
    from tests.fakes.e2b import FAKE_API_KEY

    settings.SANDBOX_BACKEND = "e2b"
    settings.E2B_API_KEY = FAKE_API_KEY
    settings.E2B_API_URL = e2b_server.api_url
    settings.E2B_SANDBOX_URL = e2b_server.sandbox_url
    return e2b_backend


# --- the role matrix: every kind of caller of a workspace's routes --------------------------

CALLERS = [
    "owner", "admin", "member", "outsider", "anonymous",
    "member_key", "admin_key", "revoked_key", "foreign_key",
]  # fmt: skip


def table(**codes: int) -> list[Any]:
    """One pytest param per caller; outsiders 404, no credentials 401, unless overridden."""
    base = {"outsider": 404, "anonymous": 401, "revoked_key": 401, "foreign_key": 404}
    merged = {**base, **codes}
    return [pytest.param(name, merged[name], id=name) for name in CALLERS]


@pytest.fixture
def keys(workspace: Any, outsider: Any) -> dict[str, str]:
    """Raw API keys per caller kind. Keys are created by the owner, so they act for the owner
    (self-review included); the foreign key belongs to the outsider's own workspace."""
    from workspaces import services as workspace_services
    from workspaces.access import Actor

    revoked = make_api_key(workspace=workspace, role="admin", name="old")
    workspace_services.api_key_revoke(api_key=revoked[0], actor=Actor(user=workspace.owner))
    foreign = make_workspace(owner=outsider, name="Elsewhere")
    return {
        "member_key": make_api_key(workspace=workspace, role="member")[1],
        "admin_key": make_api_key(workspace=workspace, role="admin", name="ops")[1],
        "revoked_key": revoked[1],
        "foreign_key": make_api_key(workspace=foreign, role="admin")[1],
    }


@pytest.fixture
def as_caller(
    api: SchemaCheckingClient,
    owner: Any,
    admin_user: Any,
    member: Any,
    outsider: Any,
    keys: dict[str, str],
) -> Any:
    """as_caller("member_key") → the `api` client, authenticated as that caller."""
    people = {"owner": owner, "admin": admin_user, "member": member, "outsider": outsider}

    def login(name: str) -> SchemaCheckingClient:
        if name == "anonymous":
            return client_as(api, None)
        return client_as(api, people.get(name) or keys[name])

    return login


# --- shared by several apps' tests ----------------------------------------------------------


@pytest.fixture
def superuser(db: Any) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def reviewer(admin_user: Any) -> Any:
    """Adam: staff, admin of the workspace (whose runs the owner starts): in the admin he
    reviews its artifacts and manages its runs."""
    admin_user.is_staff = True
    admin_user.save(update_fields=["is_staff"])
    return admin_user


@pytest.fixture
def sandbox_run(local_sandboxes: Any, workspace: Any) -> Any:
    """A running run on a real local sandbox, started by the owner."""
    from tests.factories import make_run

    info = local_sandboxes.create(template="", metadata={"app": "airlock"}, envs={}, timeout_s=600)
    return make_run(workspace=workspace, status="running", sandbox_id=info.sandbox_id)


def assert_error(response: Any, status: int) -> dict[str, Any]:
    """The response is an API error in the one shape, {"detail", "code"}; returns its body."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("detail"), str)
    assert body["detail"]
    assert isinstance(body.get("code"), str)
    return body


def messages_of(response: Any) -> list[str]:
    """The admin's flash messages for a response."""
    from django.contrib.messages import get_messages

    return [str(m) for m in get_messages(response.wsgi_request)]


def run_command(*args: str) -> tuple[str, str]:
    """`manage.py <args>` in process: what it printed to stdout and to stderr."""
    from io import StringIO

    from django.core.management import call_command

    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def streamed(response: Any) -> bytes:
    """A streaming response's body, read to the end; then closed, as the server would (the
    test client's wrapper closes it once exhausted, with Django's connection cleanup held
    off; closing it again here would close the test's database connection)."""
    try:
        return b"".join(response.streaming_content)
    except BaseException:
        response.close()
        raise


# --- a real ASGI server ----------------------------------------------------------------------


class AsgiServer:
    """uvicorn serving config.asgi:application on a thread of the test process, on a free
    loopback port: for what only a real server shows (streams read as they are written, a
    client that disconnects, the MCP mount)."""

    def __init__(self) -> None:
        import socket

        import uvicorn

        from config.asgi import build_application

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(build_application(), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)

    def __enter__(self) -> AsgiServer:
        import threading
        import time

        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()


@pytest.fixture
def asgi_server(transactional_db: Any, settings: Any) -> Any:
    """A real uvicorn server in front of the test database (committed data: the server's
    threads have their own connections). Returns it; `.url` is its base URL."""
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    # No pool in tests: its idle connections would outlive the test database's teardown.
    settings.WEB_DATABASE_POOL_SIZE = 0
    with AsgiServer() as server:
        yield server


@pytest.fixture
def task_runner(local_sandboxes: Any) -> Any:
    """Does what the worker would, on a thread of the test process (the real worker is tested
    in tests/e2e): boots every booting run and runs every command job not yet started, by
    calling the services the tasks call. For tests that drive the API from outside."""
    import threading
    import time

    from django.db import connections

    from artifacts.jobs import run_execute_command
    from sandboxes import services
    from sandboxes.models import SandboxRun

    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                for run_id in SandboxRun.objects.filter(status="booting").values_list(
                    "pk", flat=True
                ):
                    services.run_boot(run_id=str(run_id))
                jobs = SandboxRun.objects.filter(status="running", command_started_at__isnull=True)
                for run_id in jobs.exclude(command="").values_list("pk", flat=True):
                    run_execute_command(run_id=str(run_id))
                time.sleep(0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


def live_backends() -> list[str]:
    """The sandbox fixtures of the backends whose sandboxes are live machines (background
    commands by handle, `run(cancel=)` killing what a command started): E2B, and the local
    backend once it is one (issue 12's live sandbox implements start_command; the first
    release's fresh bwrap per command did not)."""
    from sandboxes.backends.base import SandboxBackend
    from sandboxes.backends.local import LocalBackend

    live_local = LocalBackend.start_command is not SandboxBackend.start_command
    return ["e2b_sandboxes", *(["local_sandboxes"] if live_local else [])]


# --- migration tests: move the database to a past state and back ------------------------


def migrate_to(targets: list[tuple[str, str]]) -> Any:
    """Migrate the test database to `targets`; the apps (historical models) there."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def back_to_the_latest() -> Any:
    """Whatever the test did, the database ends at the latest migrations of every app."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

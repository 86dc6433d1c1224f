"""config/health.py: liveness, and readiness that names what is not ready."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from django.db import OperationalError

from config import health


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dead_broker(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the app's broker at a closed port. Celery lets CELERY_BROKER_URL in the environment
    win over its configuration (CI sets it), so the override goes there."""
    monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{closed_port}/0")


class _BrokenConnection:
    def cursor(self) -> Any:
        raise OperationalError("could not connect to server")


def test_healthz_is_ok(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_needs_no_database(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "connection", _BrokenConnection())
    assert client.get("/healthz").status_code == 200


def test_healthz_answers_only_get(client: Any) -> None:
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_readyz_is_ok_when_the_database_and_broker_are_up(client: Any) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_names_the_database_when_it_is_down(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "connection", _BrokenConnection())
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"] == "ok"
    assert body["checks"]["database"] == "unavailable (OperationalError)"


@pytest.mark.django_db
@pytest.mark.usefixtures("dead_broker")
def test_readyz_names_the_broker_when_it_is_down(client: Any) -> None:
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] != "ok"
    # A refused connection is known at once: the probe must not sleep for a retry first.
    assert elapsed < health.BROKER_CHECK_TIMEOUT_S


@pytest.mark.django_db
def test_readyz_answers_only_get(client: Any) -> None:
    assert client.post("/readyz").status_code == 405

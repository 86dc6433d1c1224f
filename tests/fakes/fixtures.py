"""Pytest fixtures for the E2B test double. ``tests/conftest.py`` re-exports them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sandboxes.backends.e2b import E2BBackend
from tests.fakes.e2b import FAKE_API_KEY, FakeE2BServer

__all__ = ["e2b_backend", "e2b_server", "e2b_server_session"]


@pytest.fixture(scope="session")
def e2b_server_session() -> Iterator[FakeE2BServer]:
    """One double for the whole session: starting servers per test would only cost time.

    The SDK's HTTPS transport trusts the double's CA (for the per-sandbox domain) through
    ``SSL_CERT_FILE``, which it reads when the transport is made: set before any SDK call of
    the session, restored after. The bundle holds certifi's roots too."""
    with FakeE2BServer() as server:
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(server.ca_bundle)
        try:
            yield server
        finally:
            if previous is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = previous


@pytest.fixture
def e2b_server(e2b_server_session: FakeE2BServer) -> Iterator[FakeE2BServer]:
    """The double with empty state: no sandboxes, requests or faults from other tests."""
    e2b_server_session.state.reset()
    yield e2b_server_session
    e2b_server_session.state.reset()  # kills what the test left running


@pytest.fixture
def e2b_backend(e2b_server: FakeE2BServer) -> E2BBackend:
    """An E2BBackend pointed at the double, with its valid API key, through the one sandbox
    URL (``E2B_SANDBOX_URL``)."""
    return E2BBackend(
        api_key=FAKE_API_KEY,
        api_url=e2b_server.api_url,
        sandbox_url=e2b_server.sandbox_url,
        template="base",
        request_timeout_s=10,
    )

"""workspaces/keycache.py: authentication reuses a key it looked up, and forgets it the moment
anything could stop it working — revocation, deletion, its creator's deactivation."""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.conftest import assert_error, client_as, require_service
from tests.factories import make_api_key
from workspaces import keycache, services
from workspaces.access import Actor
from workspaces.models import ApiKey, Workspace
from workspaces.selectors import api_key_find


@pytest.fixture(autouse=True)
def shared_cache(settings: Any) -> None:
    """Keys are cached only in a cache every process shares: the tests' Redis (the broker's,
    keys of their own prefix)."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    require_service(broker.startswith("redis://"), "a Redis CELERY_BROKER_URL (for CACHE_URL)")
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": broker}
    }
    # Entries expire by themselves (API_KEY_CACHE_S): a shared Redis is never cleared.


def test_a_process_local_cache_caches_no_key(workspace: Workspace, settings: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    _, secret = make_api_key(workspace=workspace)
    assert _queries(lambda: api_key_find(raw_key=secret)) == 1
    assert _queries(lambda: api_key_find(raw_key=secret)) == 1


def _queries(call: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        call()
    return len(queries)


def test_a_key_looked_up_once_is_found_again_without_a_query(workspace: Workspace) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert _queries(lambda: api_key_find(raw_key=secret)) == 1
    assert _queries(lambda: api_key_find(raw_key=secret)) == 0
    found = api_key_find(raw_key=secret)
    assert found is not None and found.pk == key.pk
    assert found.workspace.pk == workspace.pk and found.created_by.pk == key.created_by_id


def test_a_wrong_secret_with_a_cached_key_s_prefix_is_refused(workspace: Workspace) -> None:
    _, secret = make_api_key(workspace=workspace)
    api_key_find(raw_key=secret)
    assert api_key_find(raw_key=secret[:-2] + ("AA" if secret[-2:] != "AA" else "BB")) is None


def test_a_revoked_key_stops_working_on_the_next_request(
    api: Any, workspace: Workspace, owner: Any
) -> None:
    key, secret = make_api_key(workspace=workspace)
    client = client_as(api, secret)
    url = f"/api/v1/workspaces/{workspace.pk}/"
    assert client.get(url).status_code == 200  # cached now
    services.api_key_revoke(api_key=key, actor=Actor.for_user(owner))
    assert_error(client.get(url), 401)


def test_a_key_revoked_inside_a_longer_transaction_is_forgotten_at_its_commit(
    workspace: Workspace, owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    key, secret = make_api_key(workspace=workspace)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        services.api_key_revoke(api_key=key, actor=Actor.for_user(owner))
        # A request that read the key before the commit caches it as it was: live.
        stale = ApiKey.objects.get(pk=key.pk)
        stale.revoked_at = None
        keycache.put(stale)
    found = api_key_find(raw_key=secret)
    assert found is not None and found.revoked_at is not None


def test_a_deleted_workspace_s_keys_are_forgotten(workspace: Workspace, owner: Any) -> None:
    _, secret = make_api_key(workspace=workspace)
    assert api_key_find(raw_key=secret) is not None
    services.workspace_delete(workspace=workspace, actor=Actor.for_user(owner))
    assert api_key_find(raw_key=secret) is None


def test_a_creator_s_deactivation_is_seen_at_once(workspace: Workspace, owner: Any) -> None:
    key, secret = make_api_key(workspace=workspace)
    assert api_key_find(raw_key=secret) is not None
    creator = key.created_by
    creator.is_active = False
    creator.save()
    found = api_key_find(raw_key=secret)
    assert found is not None and not found.created_by.is_active


def test_with_no_cache_time_every_request_looks_the_key_up(
    workspace: Workspace, settings: Any
) -> None:
    settings.API_KEY_CACHE_S = 0
    _, secret = make_api_key(workspace=workspace)
    assert _queries(lambda: api_key_find(raw_key=secret)) == 1
    assert _queries(lambda: api_key_find(raw_key=secret)) == 1

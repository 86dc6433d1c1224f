"""API keys as authentication resolved them, cached by the SHA-256 of the raw key (what the
database stores as `secret_hash`), so a request presenting a key costs a cache read instead
of a query joining the key, its workspace and its creator.

The cache must never say a key works once it does not: every change that can stop a key
forgets it — revoking it (workspaces.services.api_key_revoke, once committed), deleting it
(with its workspace), deactivating or editing its creator, changing its workspace. These are
cache coherence only, not rules: the rules stay in workspaces.authentication. Entries also
expire after API_KEY_CACHE_S, the bound on anything that changes rows without `save()` (a
queryset `update()`). Keys are cached only in a cache every process shares (CACHE_URL): a
process-local one would forget a revoked key only in the process that revoked it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save

from workspaces.models import ApiKey, Workspace

PREFIX = "airlock:api-key:"
PROCESS_LOCAL = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


def _name(secret_hash: str) -> str:
    return PREFIX + secret_hash


def enabled() -> bool:
    """Only with a cache every process shares: a process-local one could not forget a revoked
    key in the other web processes."""
    backend = settings.CACHES["default"]["BACKEND"]
    return settings.API_KEY_CACHE_S > 0 and backend not in PROCESS_LOCAL


def get(secret_hash: str) -> ApiKey | None:
    if not enabled():
        return None
    key = cache.get(_name(secret_hash))
    return key if isinstance(key, ApiKey) else None


def put(key: ApiKey) -> None:
    if enabled():
        cache.set(_name(key.secret_hash), key, settings.API_KEY_CACHE_S)


def forget(secret_hashes: Iterable[str]) -> None:
    names = [_name(secret_hash) for secret_hash in secret_hashes]
    if names:
        cache.delete_many(names)


def claim_touch(key: ApiKey, interval: timedelta) -> bool:
    """True once per `interval` per key (across processes sharing the cache): the request
    that records the key's use."""
    return bool(cache.add(f"{PREFIX}touched:{key.pk}", True, interval.total_seconds()))


def _forget_key(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    forget([instance.secret_hash])


def _forget_creators_keys(sender: Any, instance: Any, update_fields: Any = None, **kw: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a sign-in: nothing a key depends on
    forget(ApiKey.objects.filter(created_by=instance).values_list("secret_hash", flat=True))


def _forget_workspaces_keys(sender: Any, instance: Workspace, created: bool, **kw: Any) -> None:
    if not created:
        forget(ApiKey.objects.filter(workspace=instance).values_list("secret_hash", flat=True))


def connect() -> None:
    """Called once, from WorkspacesConfig.ready."""
    post_save.connect(_forget_key, sender=ApiKey, dispatch_uid="keycache-key-saved")
    post_delete.connect(_forget_key, sender=ApiKey, dispatch_uid="keycache-key-deleted")
    post_save.connect(
        _forget_creators_keys, sender=get_user_model(), dispatch_uid="keycache-user-saved"
    )
    post_save.connect(
        _forget_workspaces_keys, sender=Workspace, dispatch_uid="keycache-workspace-saved"
    )

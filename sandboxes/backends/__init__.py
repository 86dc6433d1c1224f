"""Sandbox backends behind one interface (base.py), chosen by settings.SANDBOX_BACKEND."""

from __future__ import annotations

import functools

from django.conf import settings

from sandboxes.backends.base import (
    BackendError,
    CommandResult,
    CommandTimeout,
    FileEntry,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    TransientBackendError,
)

__all__ = [
    "BackendError",
    "CommandResult",
    "CommandTimeout",
    "FileEntry",
    "SandboxBackend",
    "SandboxFileNotFound",
    "SandboxInfo",
    "SandboxNotFound",
    "TransientBackendError",
    "get_backend",
]


_BACKEND_SETTINGS = {
    "e2b": (
        "E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_TEMPLATE", "E2B_REQUEST_TIMEOUT_S",
    ),
    "local": (
        "SANDBOX_LOCAL_ROOT", "SANDBOX_LOCAL_CPU_SECONDS", "SANDBOX_LOCAL_MEMORY_MB",
        "SANDBOX_LOCAL_MAX_PROCESSES", "SANDBOX_LOCAL_MAX_FILE_MB", "SANDBOX_LOCAL_TMP_MB",
        "SANDBOX_LOCAL_BWRAP", "SANDBOX_LOCAL_UID", "SANDBOX_LOCAL_GID",
    ),
}  # fmt: skip


def get_backend() -> SandboxBackend:
    """The configured backend. Backends hold only configuration (and what they learned
    about the host, e.g. bwrap's version), so one instance per configuration is reused."""
    name = settings.SANDBOX_BACKEND
    config = tuple(getattr(settings, key, None) for key in _BACKEND_SETTINGS[name])
    return _backend(name, config)


@functools.lru_cache(maxsize=8)
def _backend(name: str, config: tuple[object, ...]) -> SandboxBackend:
    if name == "e2b":
        from sandboxes.backends.e2b import E2BBackend

        return E2BBackend.from_settings()
    from sandboxes.backends.local import LocalBackend

    return LocalBackend.from_settings()


def sandbox_tags(*, run_id: str, workspace_id: str) -> dict[str, str]:
    """The metadata every sandbox carries, so reconcile can find it whatever happened."""
    return {
        "app": "airlock",
        "env": settings.DEPLOY_ENV,
        "run_id": run_id,
        "workspace_id": workspace_id,
    }

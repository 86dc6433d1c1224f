"""Sandbox backends behind one interface (base.py), chosen by settings.SANDBOX_BACKEND."""

from __future__ import annotations

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


def get_backend() -> SandboxBackend:
    if settings.SANDBOX_BACKEND == "e2b":
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

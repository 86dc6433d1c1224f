"""Sandbox backends behind one interface (base.py), chosen by settings.SANDBOX_BACKEND."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import TypeVar

from celery.signals import worker_ready
from django.conf import settings

from sandboxes.backends.base import (
    BackendError,
    CommandCanceled,
    CommandNotFound,
    CommandOutput,
    CommandResult,
    CommandTimeout,
    FileEntry,
    NetworkPolicy,
    SandboxBackend,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    SandboxPaused,
    TransientBackendError,
    UnsupportedOption,
)

__all__ = [
    "BackendError",
    "CommandCanceled",
    "CommandNotFound",
    "CommandOutput",
    "CommandResult",
    "CommandTimeout",
    "FileEntry",
    "NetworkPolicy",
    "SandboxBackend",
    "SandboxFileNotFound",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxPaused",
    "TransientBackendError",
    "UnsupportedOption",
    "app_tags",
    "get_backend",
    "kill_run_sandboxes",
    "override_backend",
    "run_sandboxes",
    "sandbox_tags",
]

B = TypeVar("B", bound=SandboxBackend)
# Set by override_backend (tests, benchmarks): every caller of get_backend gets this one.
_override: list[SandboxBackend] = []


_BACKEND_SETTINGS = {
    "e2b": (
        "E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_TEMPLATE", "E2B_REQUEST_TIMEOUT_S",
        "E2B_DOMAIN",
    ),
    "local": (
        "SANDBOX_LOCAL_ROOT", "SANDBOX_LOCAL_CPU_SECONDS", "SANDBOX_LOCAL_MEMORY_MB",
        "SANDBOX_LOCAL_MAX_PROCESSES", "SANDBOX_LOCAL_MAX_FILE_MB", "SANDBOX_LOCAL_TMP_MB",
        "SANDBOX_LOCAL_CPUS", "SANDBOX_LOCAL_DISK_MB", "SANDBOX_LOCAL_REQUIRE_LIMITS",
        "SANDBOX_LOCAL_CGROUP", "SANDBOX_LOCAL_BWRAP", "SANDBOX_LOCAL_UID", "SANDBOX_LOCAL_GID",
    ),
}  # fmt: skip


def get_backend() -> SandboxBackend:
    """The configured backend. Backends hold only configuration (and what they learned
    about the host, e.g. bwrap's version), so one instance per configuration is reused."""
    if _override:
        return _override[-1]
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


@contextlib.contextmanager
def override_backend(backend: B) -> Iterator[B]:
    """Within the block every service, task and command uses ``backend`` (a test double, a
    backend with injected faults, a benchmark's instance), whatever the settings say."""
    _override.append(backend)
    try:
        yield backend
    finally:
        _override.remove(backend)


def app_tags() -> dict[str, str]:
    """The tags of every sandbox this deployment owns; nothing else is ever touched."""
    return {"app": "airlock", "env": settings.DEPLOY_ENV}


def sandbox_tags(*, run_id: str, workspace_id: str) -> dict[str, str]:
    """The metadata every sandbox carries, so reconcile can find it whatever happened."""
    return {**app_tags(), "run_id": run_id, "workspace_id": workspace_id}


def run_sandboxes(backend: SandboxBackend, run_id: str) -> list[SandboxInfo]:
    """The live sandboxes made for a run, found by its tag (whether or not its id was saved)."""
    return backend.list_sandboxes({**app_tags(), "run_id": run_id})


def kill_run_sandboxes(backend: SandboxBackend, run_id: str) -> int:
    """Kill every sandbox made for a run; one already gone counts as killed."""
    found = run_sandboxes(backend, run_id)
    for info in found:
        with contextlib.suppress(SandboxNotFound):
            backend.kill(info.sandbox_id)
    return len(found)


@worker_ready.connect(weak=False)
def _log_local_limits(**_: object) -> None:
    """A worker says at startup which local sandbox limits this host enforces, and what
    happens instead of each one it cannot (the local backend only)."""
    if settings.SANDBOX_BACKEND != "local" or _override:
        return
    from sandboxes.backends.local import LocalBackend, log_limits

    try:
        backend = get_backend()
        if isinstance(backend, LocalBackend):
            log_limits(backend)
    except Exception:  # a report must never keep a worker from starting
        logging.getLogger(__name__).exception("could not report the local sandbox limits")

"""The ``local`` sandbox backend: bubblewrap on this machine, one live sandbox per run.

store.py    where sandboxes live on the host and what is recorded about each
jail.py     bubblewrap's command line, the generated /etc, the seccomp filter
limits.py   cgroups (v2 and v1) and the per-sandbox disk: limits the kernel enforces
init.py     the sandbox's init, which forks every command (runs inside the sandbox)
process.py  the worker's side of the init's control socket: run, pump, background
files.py    confined file I/O from the worker
backend.py  LocalBackend, which puts them together
"""

from __future__ import annotations

import logging

from sandboxes.backends.local.backend import LocalBackend
from sandboxes.backends.local.jail import BwrapCommand
from sandboxes.backends.local.limits import Limit

__all__ = ["BwrapCommand", "Limit", "LocalBackend", "log_limits"]

logger = logging.getLogger("sandboxes.backends.local")


def log_limits(backend: LocalBackend) -> None:
    """What the worker says at startup: each limit in force, and each it cannot enforce
    with what happens instead."""
    for limit in backend.limits():
        if limit.enforced:
            logger.info("local sandboxes: %s: %s", limit.name, limit.detail)
        else:
            logger.warning("local sandboxes: %s: %s", limit.name, limit.detail)
    if backend.require_limits and backend.missing_limits():
        logger.error(
            "local sandboxes: SANDBOX_LOCAL_REQUIRE_LIMITS is set, so this worker refuses to "
            "create sandboxes until the limits above can be enforced"
        )

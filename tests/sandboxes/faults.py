"""Fault injection through the backend interface: a real backend behind a wrapper that can
make any call fail, or run something of the test's own right after a call returns (a user who
cancels while the boot creates the sandbox, a worker that dies right after the provider made
one). Installed with `sandboxes.backends.override_backend`."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from sandboxes.backends import SandboxBackend


class FaultyBackend:
    """Every call goes to `inner`, unless a fault was planned for it."""

    def __init__(self, inner: SandboxBackend):
        self.inner = inner
        self.name = inner.name
        self._failures: dict[str, list[BaseException]] = {}
        self._after: dict[str, Callable[[Any], None]] = {}
        self._lock = threading.Lock()

    def fail_next(self, operation: str, error: BaseException, times: int = 1) -> None:
        """The next `times` calls of `operation` raise `error` without reaching the backend."""
        with self._lock:
            self._failures.setdefault(operation, []).extend([error] * times)

    def after(self, operation: str, hook: Callable[[Any], None]) -> None:
        """Once, right after the next `operation` returns: hook(result); what it raises is
        what the caller gets (the backend call has happened)."""
        with self._lock:
            self._after[operation] = hook

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        @functools.wraps(target)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                pending = self._failures.get(name)
                error = pending.pop(0) if pending else None
            if error is not None:
                raise error
            result = target(*args, **kwargs)
            with self._lock:
                hook = self._after.pop(name, None)
            if hook is not None:
                hook(result)
            return result

        return call

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandboxes.backends import BackendError, SandboxBackend, get_backend


class Command(BaseCommand):
    help = (
        "Say whether the configured sandbox backend works, and if not, why. For the local "
        "backend, also every limit in force and each one this host cannot enforce."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        backend = get_backend()
        try:
            summary = backend.check()
        except BackendError as exc:
            self._limits(backend)
            raise CommandError(
                f"SANDBOX_BACKEND={settings.SANDBOX_BACKEND} does not work: {exc}"
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"OK  {summary}"))
        self._limits(backend)

    def _limits(self, backend: SandboxBackend) -> None:
        # Imported here: the local package is only loaded where it is configured.
        from sandboxes.backends.local import LocalBackend

        if not isinstance(backend, LocalBackend):
            return
        for limit in backend.limits():
            line = f"{limit.name:<13} {limit.detail}"
            if limit.enforced:
                self.stdout.write(f"    in force  {line}")
            else:
                self.stdout.write(self.style.WARNING(f"    MISSING   {line}"))

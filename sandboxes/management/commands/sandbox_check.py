from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandboxes.backends import BackendError, get_backend


class Command(BaseCommand):
    help = "Say whether the configured sandbox backend works, and if not, why."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            summary = get_backend().check()
        except BackendError as exc:
            raise CommandError(
                f"SANDBOX_BACKEND={settings.SANDBOX_BACKEND} does not work: {exc}"
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"OK  {summary}"))

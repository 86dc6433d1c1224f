from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from config.exceptions import AirlockError
from workspaces import services
from workspaces.access import Actor
from workspaces.management.operator import WORKSPACE_HELP, workspace_arg
from workspaces.models import ApiKeyRole


class Command(BaseCommand):
    help = "Create a workspace API key and print its secret (shown this once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("workspace", help=WORKSPACE_HELP)
        parser.add_argument("--name", required=True)
        parser.add_argument("--role", choices=ApiKeyRole.values, default=ApiKeyRole.MEMBER)
        parser.add_argument("--as", dest="username", help="creator (default: the owner)")

    def handle(
        self, *args: Any, workspace: str, name: str, role: str, username: str | None, **options: Any
    ) -> None:
        ws = workspace_arg(workspace)
        user = ws.owner
        if username:
            named = get_user_model().objects.filter(username=username).first()
            if named is None:
                raise CommandError(f"No user {username!r}.")
            user = named
        try:
            key, secret = services.api_key_create(
                workspace=ws, name=name, role=role, actor=Actor.for_user(user)
            )
        except AirlockError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"API key {key.name} ({key.role}) for {ws.name}: {secret}")
        self.stdout.write("Store it now: the secret is not shown again.")

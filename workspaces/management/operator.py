"""What every operator command shares (they run with shell access: every workspace is theirs
to name): a workspace argument that takes an id or an exact name, and the one switch between
a dry run and doing it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from config.exceptions import NotFound
from workspaces import selectors
from workspaces.models import Workspace

WORKSPACE_HELP = "workspace id or exact name"


def workspace_arg(reference: str) -> Workspace:
    """The workspace an operator named, by id or exact name; one clear error otherwise."""
    try:
        return selectors.workspace_find(reference=reference)
    except NotFound as exc:
        raise CommandError(exc.detail) from exc


def add_for_real(parser: Any, what: str) -> None:
    """--for-real does `what`; without it (or with --dry-run) the command only says what it
    would do. Every destructive command takes these two."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--for-real", action="store_true", help=what)
    mode.add_argument("--dry-run", action="store_true", help="say what would happen (default)")

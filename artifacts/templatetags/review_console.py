"""The admin index's counts (templates/admin/index.html)."""

from __future__ import annotations

from typing import Any

from django import template

from artifacts.selectors import review_console_counts as counts_for
from workspaces.admin import admin_actor, administered_workspace_ids

register = template.Library()


@register.simple_tag(takes_context=True)
def review_console_counts(context: dict[str, Any]) -> dict[str, int]:
    """Pending reviews (all, and those this user may decide) and running sandboxes, in the
    workspaces this staff user administers."""
    request = context["request"]
    return counts_for(
        workspace_ids=administered_workspace_ids(request), decider=admin_actor(request)
    )

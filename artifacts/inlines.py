"""The artifacts inline of the run admin (sandboxes/admin.py). Its own module so the run admin
can import it without importing the artifact admin, which imports the run admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from artifacts.models import Artifact


class ArtifactInline(admin.TabularInline):
    model = Artifact
    extra = 0
    fields = ("artifact", "type", "review_state", "size_display", "created_at")
    readonly_fields = ("artifact", "type", "review_state", "size_display", "created_at")
    can_delete = False
    ordering = ["created_at"]

    # The parent admin scopes the run; artifacts are never edited here: reviews go through
    # the transitions on the artifact's own page.
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Artifact")
    def artifact(self, obj: Artifact) -> str:
        url = reverse("admin:artifacts_artifact_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.title)

    @admin.display(description="Size")
    def size_display(self, obj: Artifact) -> str:
        return filesizeformat(obj.size)

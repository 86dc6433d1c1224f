"""The artifacts inline of the run admin (sandboxes/admin.py). Its own module so the run admin
can import it without importing the artifact admin, which imports the run admin."""

from __future__ import annotations

from django.contrib import admin
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from artifacts.models import Artifact
from workspaces.admin import ReadOnlyInline


class ArtifactInline(ReadOnlyInline):
    # Reviews go through the transitions on the artifact's own page.
    model = Artifact
    fields = ("artifact", "type", "review_state", "size_display", "created_at")
    readonly_fields = ("artifact", "type", "review_state", "size_display", "created_at")
    ordering = ["created_at"]

    @admin.display(description="Artifact")
    def artifact(self, obj: Artifact) -> str:
        url = reverse("admin:artifacts_artifact_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.title)

    @admin.display(description="Size")
    def size_display(self, obj: Artifact) -> str:
        return filesizeformat(obj.size)

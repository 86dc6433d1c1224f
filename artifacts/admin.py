"""The review console (SPEC §7): the pending queue, bulk approve and reject, and a change page
with transition buttons, safe previews and the run's context.

Every decision goes through artifacts.review.artifact_review (role, self-review, final
states, the transition log with the actor). Non-superuser staff see and act only on the
workspaces they administer (WorkspaceScopedAdmin), here and in the image and download views.
Everything shown that a sandbox or an agent wrote is escaped."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince
from django_fsm.admin import FSMAdminMixin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from artifacts import downloads, review, selectors
from artifacts.forms import RejectForm
from artifacts.models import Artifact, ArtifactType, ReviewState
from config.exceptions import AirlockError
from sandboxes.admin import SandboxRunAdmin
from sandboxes.models import SandboxRun
from workspaces.admin import ReadOnlyInline, WorkspaceScopedAdmin, admin_actor, trail_panel

REVIEW_TRANSITIONS = ("approve", "reject")  # the decision names artifact_review takes
QUEUE = ReviewState.PENDING.value
ALL_STATES = "all"
_PENDING_FIRST = Case(
    When(review_state=ReviewState.PENDING, then=Value(0)),
    default=Value(1),
    output_field=IntegerField(),
)
_REFUSAL_NOTES = {
    "self_review": "You started this run: someone else must review its artifacts.",
    "role": "Reviewing needs the admin role in this workspace.",
    "not_found": "You are not a member of this workspace.",
}


class ReviewStateFilter(admin.SimpleListFilter):
    """The pending queue unless another state (or all) is asked for."""

    title = "review state"
    parameter_name = "review_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (QUEUE, "Pending (queue)"),
            (ReviewState.APPROVED, "Approved"),
            (ReviewState.REJECTED, "Rejected"),
            (ALL_STATES, "All"),
        ]

    def value(self) -> str:
        value = super().value()
        return value if value in {*ReviewState.values, ALL_STATES} else QUEUE

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        state = self.value()
        return queryset if state == ALL_STATES else queryset.filter(review_state=state)

    def choices(self, changelist: Any) -> Iterator[Any]:
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


@admin.register(Artifact)
class ArtifactAdmin(FSMAdminMixin, WorkspaceScopedAdmin):
    fsm_fields = ["review_state"]
    fsm_forms = {"reject": RejectForm}
    # Ours, not django-fsm-2's (django_fsm is not an installed app): same context, and the
    # buttons sit above the fields as well as below.
    change_form_template = "admin/artifacts/artifact/change_form.html"
    fsm_transition_form_template = "admin/artifacts/artifact/transition_form.html"
    save_on_top = True  # the top "submit row" shows the transition buttons, not save buttons
    list_display = [
        "title", "type", "review_state", "workspace", "thread_id", "size_display",
        "age", "reviewed_by",
    ]  # fmt: skip
    list_filter = [ReviewStateFilter, "type", ("workspace", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["title", "thread_id"]
    search_help_text = "Title or thread id; a run id or artifact id finds it exactly."
    list_per_page = 50
    actions = ["approve_selected", "reject_selected"]
    fieldsets = [
        ("Review", {"fields": ["review_state", "review_note", "reviewed_by", "reviewed_at",
                               "review_comment"]}),
        ("Content", {"fields": ["title", "type", "content_type", "size_display", "sha256",
                                "sandbox_path", "download", "preview"]}),
        ("Run", {"fields": ["run_link", "thread_id", "workspace", "run_prompt", "run_command",
                            "created_at"]}),
        ("History", {"fields": ["history"]}),
    ]  # fmt: skip
    readonly_fields = [
        "review_state", "review_note", "reviewed_by", "reviewed_at", "review_comment",
        "title", "type", "content_type", "size_display", "sha256", "sandbox_path",
        "download", "preview", "run_link", "thread_id", "workspace", "run_prompt",
        "run_command", "created_at", "history",
    ]  # fmt: skip

    # --- what staff may do: look, and decide through the transitions ----------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # artifacts come from sandboxes only

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)  # to decide; every field is read-only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # decided or not, an artifact is part of the run's record

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        pass  # nothing is editable; the transition buttons act in response_change

    # --- the queue ---------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Artifact]:
        # All at once: the changelist skips list_select_related for a queryset that already
        # has a select_related, and the actions and change page need the run.
        return super().get_queryset(request).select_related(*selectors.ARTIFACT_RELATED)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        state = request.GET.get(ReviewStateFilter.parameter_name)
        decided_or_all = {ReviewState.APPROVED, ReviewState.REJECTED, ALL_STATES}
        title = "Artifacts" if state in decided_or_all else "Review queue"
        return super().changelist_view(request, {"title": title, **(extra_context or {})})

    def get_ordering(self, request: HttpRequest) -> list[Any]:
        if request.GET.get(ReviewStateFilter.parameter_name) == ALL_STATES:
            return [_PENDING_FIRST, "created_at", "id"]
        return ["created_at", "id"]  # oldest first: the queue is worked in arrival order

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        try:
            exact = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(Q(run_id=exact) | Q(pk=exact)), False

    @admin.display(description="Size", ordering="size")
    def size_display(self, obj: Artifact) -> str:
        return filesizeformat(obj.size)

    @admin.display(description="Age", ordering="created_at")
    def age(self, obj: Artifact) -> str:
        return timesince(obj.created_at, timezone.now(), depth=1)

    # --- bulk decisions ----------------------------------------------------------------

    @admin.action(description="Approve selected artifacts")
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Artifact]) -> None:
        outcome = review.artifacts_review(
            artifacts=queryset, actor=admin_actor(request), decision="approve"
        )
        self._report(request, outcome, "approved")

    @admin.action(description="Reject selected artifacts (with a comment)")
    def reject_selected(
        self, request: HttpRequest, queryset: QuerySet[Artifact]
    ) -> TemplateResponse | None:
        form = RejectForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            outcome = review.artifacts_review(
                artifacts=queryset,
                actor=admin_actor(request),
                decision="reject",
                comment=form.cleaned_data["comment"],
            )
            self._report(request, outcome, "rejected")
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Reject artifacts",
            "subtitle": None,
            "opts": self.model._meta,
            "artifacts": queryset,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/artifacts/artifact/reject_selected.html", context)

    def _report(self, request: HttpRequest, outcome: review.BulkReview, verb: str) -> None:
        self.message_user(
            request,
            f"{len(outcome.done)} {verb}, {len(outcome.already_decided)} skipped "
            "(already decided).",
            messages.SUCCESS if outcome.done else messages.WARNING,
        )
        if outcome.refused:
            reasons = "; ".join(f"“{artifact}”: {why}" for artifact, why in outcome.refused)
            self.message_user(
                request, f"{len(outcome.refused)} refused — {reasons}", messages.ERROR
            )

    # --- transition buttons, through the service ----------------------------------------

    def _review_refusal(self, request: HttpRequest, obj: Artifact) -> str | None:
        actor = admin_actor(request)
        role = selectors.artifact_role(actor=actor, artifact=obj)
        return selectors.artifact_review_refusal(artifact=obj, actor=actor, role=role)

    # django-fsm-2 looks any posted name up as a method of the model: a name that is not one
    # of the review transitions would be a server error there, so it stops here.
    def response_change(self, request: HttpRequest, obj: Any) -> HttpResponse:
        name = request.POST.get(self.fsm_post_param)
        if name and name not in REVIEW_TRANSITIONS:
            self.message_user(request, "Unknown transition.", messages.ERROR)
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    def fsm_transition_view(
        self, request: HttpRequest, object_id: str, transition_name: str, **kwargs: Any
    ) -> HttpResponse:
        if transition_name not in REVIEW_TRANSITIONS:
            raise Http404("No such transition.")
        return super().fsm_transition_view(request, object_id, transition_name, **kwargs)

    def _get_fsm_extra_context(self, *, request: HttpRequest, obj: Any) -> Any:
        # No buttons for someone the service would refuse (their own run, too low a role).
        if obj is None or getattr(obj, "review_refusal", "unknown") is not None:
            return iter(())
        return super()._get_fsm_extra_context(request=request, obj=obj)

    def _apply_fsm_transition(
        self,
        *,
        obj: Any,
        transition_name: str,
        request: HttpRequest,
        kwargs: Any = None,
    ) -> bool:
        """django-fsm-2 would call the transition and save; the service does both, after its
        checks, with the actor in the transition log."""
        try:
            review.artifact_review(
                artifact=obj,
                actor=admin_actor(request),
                decision=transition_name,
                comment=(kwargs or {}).get("comment", ""),
            )
        except AirlockError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return False
        self.message_user(request, f"“{obj}” is {obj.review_state}.", messages.SUCCESS)
        return True

    # --- change page: context and safe previews -----------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Nothing is editable, so no save buttons: only the transitions change anything.
        no_save = {
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), **no_save}
        )

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        obj: Any = super().get_object(request, object_id, from_field)
        if obj is not None:
            # Kept on the object: review_note is called without the request, and this admin
            # instance is shared by every request thread.
            obj.review_refusal = self._review_refusal(request, obj)
        return obj

    @admin.display(description="Can I review it?")
    def review_note(self, obj: Artifact) -> str:
        if obj.review_state != ReviewState.PENDING:
            return "Decided: this is final."
        refusal = getattr(obj, "review_refusal", None)
        return _REFUSAL_NOTES.get(refusal or "", "Yes: use Approve or Reject below.")

    @admin.display(description="Download")
    def download(self, obj: Artifact) -> SafeString:
        url = reverse("admin:artifacts_artifact_download", args=[obj.pk])
        return format_html(
            '<a href="{}">{}</a> ({}, sha256 {}…)',
            url,
            downloads.download_filename(obj),
            filesizeformat(obj.size),
            obj.sha256[:12],
        )

    @admin.display(description="Preview")
    def preview(self, obj: Artifact) -> SafeString | str:
        if downloads.is_inline_image(obj):
            url = reverse("admin:artifacts_artifact_image", args=[obj.pk])
            return format_html(
                '<img src="{}" alt="{}" style="max-width: 100%; max-height: 32rem; '
                'border: 1px solid var(--hairline-color)">',
                url,
                obj.title,
            )
        if not obj.preview_text:
            return "No preview for this type of file; download it to look inside."
        more = (
            format_html("<p>The first {} characters are shown.</p>", len(obj.preview_text))
            if obj.size > len(obj.preview_text.encode())
            else ""
        )
        return format_html("{}{}", _highlighted(obj), more)

    @admin.display(description="Run")
    def run_link(self, obj: Artifact) -> SafeString:
        url = reverse("admin:sandboxes_sandboxrun_change", args=[obj.run_id])
        return format_html(
            '<a href="{}">{}</a> · {}', url, obj.run_id, obj.run.get_status_display()
        )

    @admin.display(description="Prompt")
    def run_prompt(self, obj: Artifact) -> SafeString:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.run.prompt)

    @admin.display(description="Command")
    def run_command(self, obj: Artifact) -> SafeString | str:
        if not obj.run.command:
            return "—"
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.run.command)

    @admin.display(description="History")
    def history(self, obj: Artifact) -> SafeString | str:
        return trail_panel("artifact", obj.pk)

    # --- bytes, for reviewers only (get_object is scoped) -------------------------------

    def get_urls(self) -> list[URLPattern]:
        image = self.admin_site.admin_view(self.image_view)
        download = self.admin_site.admin_view(self.download_view)
        return [
            path("<path:object_id>/image/", image, name="artifacts_artifact_image"),
            path("<path:object_id>/download/", download, name="artifacts_artifact_download"),
            *super().get_urls(),
        ]

    def _scoped_object(self, request: HttpRequest, object_id: str) -> Artifact:
        obj: Artifact | None = self.get_object(request, unquote(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404("No such artifact.")
        return obj

    def image_view(self, request: HttpRequest, object_id: str) -> StreamingHttpResponse:
        return downloads.inline_image_response(self._scoped_object(request, object_id))

    def download_view(self, request: HttpRequest, object_id: str) -> StreamingHttpResponse:
        return downloads.attachment_response(self._scoped_object(request, object_id))


def _highlighted(obj: Artifact) -> SafeString:
    """Pygments escapes every token it emits; the lexer is chosen by name, never run on
    anything but the preview text."""
    lexer: Any = TextLexer()
    if obj.type != ArtifactType.LOG:
        with contextlib.suppress(ClassNotFound):
            lexer = get_lexer_for_filename(obj.sandbox_path or obj.title, stripnl=False)
    formatter = HtmlFormatter(noclasses=True, wrapcode=True)
    return mark_safe(highlight(obj.preview_text, lexer, formatter))  # noqa: S308


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


class SandboxRunWithArtifactsAdmin(SandboxRunAdmin):
    """The run admin (sandboxes.admin) with the run's artifacts inline."""

    inlines = [*SandboxRunAdmin.inlines, ArtifactInline]


admin.site.unregister(SandboxRun)
admin.site.register(SandboxRun, SandboxRunWithArtifactsAdmin)

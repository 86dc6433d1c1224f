"""The review console (SPEC §7, §13): the review queue (runs with pending artifacts), the run
review page (the run's admin page: its timeline and every artifact with preview, signals and
decisions, keyboard first), the per-artifact list with bulk approve and reject, an artifact's
own page with transition buttons, and the review policy.

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
from django.db.models.functions import Left
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
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince
from django_fsm.admin import FSMAdminMixin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from artifacts import console, content, downloads, policy, review, selectors
from artifacts.forms import RejectForm, ReviewPolicyForm
from artifacts.models import (
    DECIDED_STATES,
    Artifact,
    ArtifactType,
    ReviewPolicy,
    ReviewQueueRun,
    ReviewState,
)
from config.exceptions import AirlockError, InvalidInput
from sandboxes.admin import SandboxRunAdmin, run_started_by
from sandboxes.models import SandboxRun
from workspaces import access
from workspaces.admin import (
    NO_SAVE_BUTTONS,
    AdministeredWorkspaceFilter,
    LargeListAdmin,
    ReadOnlyInline,
    WorkspaceScopedAdmin,
    admin_actor,
    first_line,
    short_id,
    trail_panel,
)

REVIEW_TRANSITIONS = ("approve", "reject")  # the decision names artifact_review takes
QUEUE = ReviewState.PENDING.value
ALL_STATES = "all"
_PENDING_FIRST = Case(
    When(review_state=ReviewState.PENDING, then=Value(0)),
    default=Value(1),
    output_field=IntegerField(),
)
_REFUSAL_NOTES = console.REFUSAL_NOTES


class ReviewStateFilter(admin.SimpleListFilter):
    """The pending queue unless another state (or all) is asked for."""

    title = "review state"
    parameter_name = "review_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (QUEUE, "Pending (queue)"),
            (ReviewState.APPROVED, "Approved"),
            (ReviewState.REJECTED, "Rejected"),
            (ReviewState.EXPIRED, "Expired"),
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


class ConsoleMedia:
    css = {"all": ["artifacts/review.css"]}


@admin.register(Artifact)
class ArtifactAdmin(LargeListAdmin, FSMAdminMixin, WorkspaceScopedAdmin):
    Media = ConsoleMedia
    fsm_fields = ["review_state"]
    fsm_forms = {"reject": RejectForm}
    # Ours, not django-fsm-2's (django_fsm is not an installed app): same context, and the
    # buttons sit above the fields as well as below.
    change_form_template = "admin/artifacts/artifact/change_form.html"
    fsm_transition_form_template = "admin/artifacts/artifact/transition_form.html"
    save_on_top = True  # the top "submit row" shows the transition buttons, not save buttons
    list_display = [
        "title", "type", "review_state", "signals_column", "run_column", "workspace",
        "size_display", "age", "reviewed_by",
    ]  # fmt: skip
    list_filter = [ReviewStateFilter, "type", AdministeredWorkspaceFilter]
    search_fields = ["title", "thread_id"]
    search_help_text = "Title or thread id; a run id or artifact id finds it exactly."
    list_per_page = 50
    actions = ["approve_selected", "reject_selected"]
    fieldsets = [
        ("Review", {"fields": ["review_state", "review_note", "signals_display",
                               "reviewed_by", "reviewed_at", "review_comment"]}),
        ("Content", {"fields": ["title", "type", "content_type", "size_display", "sha256",
                                "sandbox_path", "download", "preview"]}),
        ("Run", {"fields": ["run_link", "thread_id", "workspace", "run_started_by",
                            "run_prompt", "run_command", "created_at"]}),
        ("History", {"fields": ["history"]}),
    ]  # fmt: skip
    readonly_fields = [
        "review_state", "review_note", "signals_display", "reviewed_by", "reviewed_at",
        "review_comment", "title", "type", "content_type", "size_display", "sha256",
        "sandbox_path", "download", "preview", "run_link", "thread_id", "workspace",
        "run_started_by", "run_prompt", "run_command", "created_at", "history",
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
        decided_or_all = {*DECIDED_STATES, ALL_STATES}
        title = "Artifacts" if state in decided_or_all else "Pending artifacts"
        context = {"title": title, "queue_url": reverse(QUEUE_URL), **(extra_context or {})}
        return super().changelist_view(request, context)

    def get_list_display(self, request: HttpRequest) -> Any:
        # In the pending list the state is the same on every row and nobody reviewed them
        # yet: those columns would only push the table wider than the page.
        state = request.GET.get(ReviewStateFilter.parameter_name)
        if state in {*DECIDED_STATES, ALL_STATES}:
            return self.list_display
        return [n for n in self.list_display if n not in ("review_state", "reviewed_by")]

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

    @admin.display(description="Signals", ordering="risk")
    def signals_column(self, obj: Artifact) -> SafeString:
        return console.signal_badges((code, 1) for code in obj.signal_summary())

    @admin.display(description="Run")
    def run_column(self, obj: Artifact) -> SafeString:
        url = reverse("admin:sandboxes_sandboxrun_change", args=[obj.run_id])
        return format_html(
            '<a href="{}"><code>{}</code></a> {}',
            url,
            short_id(obj.run_id),
            first_line(obj.run.prompt, 50),
        )

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
        return selectors.artifact_review_refusal(
            artifact=obj,
            actor=actor,
            role=role,
            needed=selectors.approvals_needed(obj),
            approver_ids=set(obj.approvals.values_list("reviewer_id", flat=True)),
        )

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
        context = {"title": "Review artifact", **NO_SAVE_BUTTONS, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

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
        if refusal is None and selectors.approvals_needed(obj) > 1:
            have = obj.approvals.count()
            return f"Yes: it needs two approvals from two reviewers ({have} so far)."
        return _REFUSAL_NOTES.get(refusal or "", "Yes: use the Approve and Reject buttons.")

    @admin.display(description="Signals")
    def signals_display(self, obj: Artifact) -> SafeString | str:
        if not obj.signals:
            return "None found."
        return format_html_join(
            "",
            '<div class="airlock-signal-line airlock-severity-{}"><strong>{}</strong> {}</div>',
            ((s["severity"], s["code"].replace("_", " "), s["message"]) for s in obj.signals),
        )

    @admin.display(description="Started by")
    def run_started_by(self, obj: Artifact) -> str:
        return run_started_by(obj.run)

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
        if content.base_content_type(obj.content_type) in console.MARKDOWN_TYPES:
            return format_html(
                '<div class="airlock-markdown-pair"><div class="airlock-markdown">{}</div>'
                "<div>{}</div></div>{}",
                console.render_markdown(obj.preview_text),
                _highlighted(obj),
                more,
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


QUEUE_URL = "admin:artifacts_reviewqueuerun_changelist"


class ArtifactInline(ReadOnlyInline):
    # The base run admin's list of artifacts (the review page shows them as cards instead).
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


# --- the run review page ------------------------------------------------------------------


class SandboxRunReviewAdmin(SandboxRunAdmin):
    """The run admin (sandboxes.admin) whose page is the run review page: what the run was
    asked and did, and every artifact it made with its preview and signals beside the
    decision controls. Decisions post to `<run>/review/` and go through
    artifacts.review.artifacts_review, one result per artifact."""

    review_template = "admin/sandboxes/sandboxrun/review.html"

    def get_urls(self) -> list[URLPattern]:
        decide = self.admin_site.admin_view(self.decide_view)
        return [
            path("<path:object_id>/review/", decide, name="sandboxes_sandboxrun_review"),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        run = self.get_object(request, unquote(object_id))
        if run is None or not self.has_view_permission(request, run):
            # As Django's own change view answers: back to the index, saying so.
            self.message_user(request, "No such run (or not one you review).", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:index"))
        return TemplateResponse(request, self.review_template, self._review_context(request, run))

    def _review_context(self, request: HttpRequest, run: SandboxRun) -> dict[str, Any]:
        """Five queries for the run's rows (selectors.run_review) and one for the role."""
        actor = admin_actor(request)
        role = access.role_in(actor, run.workspace_id)
        data = selectors.run_review(run=run)
        for artifact in data.artifacts:
            artifact.run = run  # one run for all: no query per card
            artifact.workspace = run.workspace
        cards = [
            console.artifact_card(
                artifact=artifact,
                policy=data.policy,
                approvals=data.approvals.get(artifact.pk, []),
                refusal=selectors.artifact_review_refusal(
                    artifact=artifact,
                    actor=actor,
                    role=role,
                    needed=data.policy.approvals_needed(artifact),
                    approver_ids={a.reviewer_id for a in data.approvals.get(artifact.pk, [])},
                ),
            )
            for artifact in data.artifacts
        ]
        timeline = console.run_timeline(
            run=run,
            events=data.events,
            commands=data.commands,
            titles={str(a.pk): a.title for a in data.artifacts},
        )
        return {
            **self.admin_site.each_context(request),
            "title": f"Review run {short_id(run.pk)}",
            "subtitle": first_line(run.prompt),
            "opts": self.opts,
            "run": run,
            "started_by": run_started_by(run),
            "duration": self.duration(run),
            "cost": self.cost(run),
            "limits": self.limits(run),
            "network": self.network_access(run),
            "timeline": timeline,
            "timeline_html": console.timeline_html(timeline),
            "command_count": len(data.commands),
            "cards": cards,
            "pending": [card for card in cards if card.pending],
            "decidable": [card for card in cards if card.decidable],
            # "Approve all" never sweeps a secret out with the rest: those are decided alone.
            "bulk_approvable": [c for c in cards if c.decidable and c.artifact.risk != "high"],
            "is_nav_sidebar_enabled": False,  # the page needs the width for previews
            "policy": data.policy,
            "decide_url": reverse("admin:sandboxes_sandboxrun_review", args=[run.pk]),
            "queue_url": reverse(QUEUE_URL),
            "reject_form": RejectForm(),
            "media": self.media,
        }

    def decide_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST decision=approve|reject, artifact=<id> (repeatable) or all=pending, comment.
        Every result is a message; back to the page, on the next artifact to decide."""
        run = self.get_object(request, unquote(object_id))
        if run is None or request.method != "POST":
            raise Http404("No such run.")
        back = reverse("admin:sandboxes_sandboxrun_change", args=[run.pk])
        chosen = Artifact.objects.filter(run=run, review_state=ReviewState.PENDING)
        if request.POST.get("all") != "pending":
            chosen = chosen.filter(pk__in=_uuids(request.POST.getlist("artifact")))
        artifacts = list(chosen.select_related(*selectors.ARTIFACT_RELATED).order_by("created_at"))
        if not artifacts:
            self.message_user(request, "Nothing pending was selected.", messages.WARNING)
            return HttpResponseRedirect(back)
        decision = request.POST.get("decision", "")
        try:
            outcome = review.artifacts_review(
                artifacts=artifacts,
                actor=admin_actor(request),
                decision=decision,
                comment=request.POST.get("comment", ""),
            )
        except InvalidInput as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            focus = artifacts[0].pk
            return HttpResponseRedirect(f"{back}?focus={focus}#artifact-{focus}")
        self._report_each(request, outcome)
        return HttpResponseRedirect(_next_pending(back, run, after=artifacts[-1]))

    def _report_each(self, request: HttpRequest, outcome: review.BulkReview) -> None:
        for artifact in outcome.done:
            if artifact.review_state == ReviewState.PENDING:
                text = f"“{artifact}”: first approval recorded; a second reviewer must approve."
            else:
                text = f"“{artifact}” is {artifact.review_state}."
            self.message_user(request, text, messages.SUCCESS)
        for artifact in outcome.already_decided:
            self.message_user(request, f"“{artifact}” was already decided.", messages.WARNING)
        for artifact, why in outcome.refused:
            self.message_user(request, f"“{artifact}”: {why}", messages.ERROR)


def _uuids(values: list[str]) -> list[uuid.UUID]:
    ids = []
    for value in values:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            continue
    return ids


def _next_pending(back: str, run: SandboxRun, *, after: Artifact) -> str:
    """The review page, on the next pending artifact after the one just decided (or the
    first still pending)."""
    pending = Artifact.objects.filter(run=run, review_state=ReviewState.PENDING).order_by(
        "created_at", "id"
    )
    following = pending.filter(created_at__gte=after.created_at).exclude(pk=after.pk).first()
    target = following or pending.first()
    return f"{back}?focus={target.pk}#artifact-{target.pk}" if target else back


admin.site.unregister(SandboxRun)
admin.site.register(SandboxRun, SandboxRunReviewAdmin)


# --- the review queue: runs with pending work ------------------------------------------------

MINE = "mine"
QUEUE_RUN_FIELDS = (
    "id", "workspace", "thread_id", "created_by", "api_key", "status", "created_at",
    "workspace__name", "created_by__username", "api_key__name", "api_key__prefix",
)  # fmt: skip


class DecisionFilter(admin.SimpleListFilter):
    title = "decisions"
    parameter_name = "decide"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(MINE, "What I may decide")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset  # applied in ReviewQueueAdmin.get_queryset: it changes the counts


@admin.register(ReviewQueueRun)
class ReviewQueueAdmin(WorkspaceScopedAdmin):
    """Runs with pending artifacts, oldest waiting first, with counts and signals; each row
    opens the run review page. "What I may decide" leaves out your own runs and what you
    already approved."""

    list_display = [
        "run", "workspace", "thread_id", "started_by", "pending", "signals", "waiting",
    ]  # fmt: skip
    list_display_links = None
    list_filter = [DecisionFilter, AdministeredWorkspaceFilter]
    Media = ConsoleMedia
    search_fields = ["=id", "thread_id", "prompt"]
    search_help_text = "Prompt or thread id; a run id finds it exactly."
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        mine = request.GET.get(DecisionFilter.parameter_name) == MINE
        runs = selectors.runs_awaiting_review(
            workspace_ids=access.administered_workspaces(admin_actor(request)),
            decider=admin_actor(request) if mine else None,
        )
        # Only what the columns show: the grouped rows stay narrow (a prompt may be 100 KB).
        return (
            runs.only(*QUEUE_RUN_FIELDS)
            .annotate(prompt_start=Left("prompt", 200))
            .select_related("workspace", "created_by", "api_key")
        )

    def get_ordering(self, request: HttpRequest) -> list[Any]:
        return ["oldest_pending", "id"]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            "title": "Review queue",
            "artifacts_url": reverse("admin:artifacts_artifact_changelist"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    @admin.display(description="Run")
    def run(self, obj: Any) -> SafeString:
        url = reverse("admin:sandboxes_sandboxrun_change", args=[obj.pk])
        return format_html(
            '<a href="{}"><code>{}</code> {}</a>',
            url,
            short_id(obj.pk),
            first_line(obj.prompt_start, 70) or "—",
        )

    @admin.display(description="Started by")
    def started_by(self, obj: SandboxRun) -> str:
        return run_started_by(obj)

    @admin.display(description="Pending", ordering="pending_count")
    def pending(self, obj: Any) -> int:
        return int(obj.pending_count)

    @admin.display(description="Signals")
    def signals(self, obj: Any) -> SafeString:
        return console.signal_badges(
            (code, getattr(obj, f"signal_{code}")) for code in selectors.SIGNAL_CODES
        )

    @admin.display(description="Waiting", ordering="oldest_pending")
    def waiting(self, obj: Any) -> str:
        return timesince(obj.oldest_pending, timezone.now(), depth=1)


# --- the review policy ----------------------------------------------------------------------


@admin.register(ReviewPolicy)
class ReviewPolicyAdmin(WorkspaceScopedAdmin):
    """One policy per workspace, written through artifacts.policy (checked, on the trail)."""

    form = ReviewPolicyForm
    list_display = [
        "workspace", "required_approvals", "second_approval_only_with_signals",
        "expire_after_h", "rules", "updated_at", "updated_by",
    ]  # fmt: skip
    list_filter = [AdministeredWorkspaceFilter]
    readonly_fields = ["updated_at", "updated_by", "history"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = ("auto_approve", "required_approvals", "second_approval_only_with_signals",
                  "expire_after_h")  # fmt: skip
        return ("workspace", *fields) if obj is None else (*fields, *self.readonly_fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # set the defaults instead: the change stays on the trail

    @admin.display(description="Auto-approve rules")
    def rules(self, obj: ReviewPolicy) -> int:
        return len(obj.auto_approve)

    @admin.display(description="History")
    def history(self, obj: ReviewPolicy) -> SafeString | str:
        return trail_panel("review_policy", obj.workspace_id)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        saved = policy.review_policy_set(
            workspace=obj.workspace,
            actor=admin_actor(request),
            **{name: form.cleaned_data.get(name) for name in policy.POLICY_FIELDS},
        )
        obj.pk = saved.pk
        obj._state.adding = False

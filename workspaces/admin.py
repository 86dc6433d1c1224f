"""Workspaces with members inline, and API keys whose secret is shown once on create; and what
every admin of the project shares: the scoping base class, the workspace filter, the trail
panel, and how money, durations and ids are shown.

Who gets in: Django's admin admits only users with the staff flag (`is_staff`). In Airlock
the flag is the operator's explicit "may use the review console" switch and grants nothing
by itself: a staff user who is not a superuser sees and acts only in the workspaces where
they are admin or owner (WorkspaceScopedAdmin). See README, "The review console"."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from config.exceptions import AirlockError
from workspaces import access, selectors, services, webhooks
from workspaces.access import Actor
from workspaces.models import (
    ApiKey,
    Event,
    Membership,
    WebhookDelivery,
    WebhookEndpoint,
    Workspace,
)


def admin_actor(request: HttpRequest) -> Actor:
    """The signed-in staff user acting in the admin."""
    return Actor.for_user(request.user)


def administered_workspace_ids(request: HttpRequest) -> Any:
    """Ids of the workspaces the staff user administers; None for a superuser (all).

    A list, read once per request: as a subquery, PostgreSQL cannot tell that one workspace
    holds most of a million runs, and sorts them all for a page of a hundred."""
    cached = getattr(request, "_administered_workspace_ids", False)
    if cached is not False:
        return cached
    ids = access.administered_workspaces(admin_actor(request))
    if ids is not None and not isinstance(ids, list):
        ids = [row["workspace_id"] for row in ids]
    request._administered_workspace_ids = ids  # type: ignore[attr-defined]
    return ids


def trail_panel(kind: str, subject_id: Any) -> SafeString | str:
    """An object's history from the trail, oldest first, as escaped HTML (every admin's
    history panel)."""
    return events_panel(selectors.subject_events(kind=kind, subject_id=subject_id))


def events_panel(events: Iterable[Event]) -> SafeString | str:
    rows = list(events)
    if not rows:
        return "—"
    return format_html_join("", "<div>{} · {} by {}</div>", (_trail_line(e) for e in rows))


def _trail_line(event: Event) -> tuple[str, SafeString, str]:
    when = event.created_at.strftime("%Y-%m-%d %H:%M:%S")
    if "transition" in event.data:  # a state change: from → to · the transition
        what = format_html(
            "{} → {} · <code>{}</code>",
            event.data.get("from") or "∅",
            event.data.get("to"),
            event.data["transition"],
        )
    else:
        what = format_html("<code>{}</code>", event.type)
    return when, what, event.actor


def dollars(amount: Decimal | float | None) -> str:
    """US dollars, at least to the cent and up to the micro-dollar costs are kept in:
    $1.234567, $0.50, $0.00042."""
    if amount is None:
        return "—"
    text = f"{Decimal(amount):,.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def human_duration(ms: float | None) -> str:
    """85 ms, 4.2 s, 3 min 20 s, 1 h 5 min; "—" when unknown."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{int(ms)} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(int(ms // 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def short_id(value: Any) -> str:
    """The first 8 characters of a UUID: enough to tell rows apart in a list."""
    return str(value)[:8]


def first_line(text: str, limit: int = 80) -> str:
    line = (text or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


NO_SAVE_BUTTONS = {
    "show_save": False,
    "show_save_and_continue": False,
    "show_save_and_add_another": False,
    "show_delete": False,
}


class AdministeredWorkspaceFilter(admin.SimpleListFilter):
    """ "By workspace", naming only the workspaces the user administers (every workspace for
    a superuser), never one they would see no rows in. Subclasses say which field holds
    the workspace (`field_path`)."""

    title = "workspace"
    parameter_name = "workspace__id__exact"
    field_path = "workspace"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        workspaces = Workspace.objects.order_by("name", "pk")
        ids = administered_workspace_ids(request)
        if ids is not None:
            workspaces = workspaces.filter(pk__in=ids)
        return [(str(pk), name) for pk, name in workspaces.values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(**{f"{self.field_path}__id": value})
        except (ValueError, ValidationError):
            return queryset.none()


class BoundedCountPaginator(Paginator[Any]):
    """A changelist paginator that counts at most COUNT_LIMIT rows: counting a million runs
    on every page load cost more than the page. Past the limit the list says "more than" it
    and links the pages up to it; a filter or a search narrows the rest."""

    COUNT_LIMIT = 10_000

    @cached_property
    def count(self) -> int:
        rows: Any = self.object_list
        return int(rows.order_by()[: self.COUNT_LIMIT + 1].count())

    @property
    def capped(self) -> bool:
        return self.count > self.COUNT_LIMIT

    @property
    def limit_text(self) -> str:
        return f"{self.COUNT_LIMIT:,}"


class LargeListAdmin(admin.ModelAdmin[Any]):
    """For lists that grow without bound (runs, artifacts): a bounded count, and no second
    count of the unfiltered table (`show_full_result_count`). The pagination template
    (templates/admin/pagination.html) says "more than" past the bound."""

    paginator = BoundedCountPaginator
    show_full_result_count = False


class WorkspaceScopedAdmin(admin.ModelAdmin[Any]):
    """Limits lists, change pages and actions to administered workspaces."""

    workspace_field = "workspace"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        ids = administered_workspace_ids(request)
        if ids is None:
            return queryset
        return queryset.filter(**{f"{self.workspace_field}__in": ids})

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        ids = administered_workspace_ids(request)
        if db_field.name == "workspace" and ids is not None:
            kwargs["queryset"] = Workspace.objects.filter(pk__in=ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ReadOnlyInline(admin.TabularInline[Any, Any]):
    """Rows shown to every staff user who may see the parent (the parent admin scopes that)
    but never edited inline: changes go through the services and state machines."""

    extra = 0
    can_delete = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(ReadOnlyInline):
    # Membership changes go through the services (owner protections), i.e. the API.
    model = Membership
    fields = ["user", "role", "joined_at", "notify_reviews"]
    readonly_fields = ["user", "role", "joined_at", "notify_reviews"]


@admin.register(Workspace)
class WorkspaceAdmin(WorkspaceScopedAdmin):
    workspace_field = "pk"
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "owner__username"]
    readonly_fields = ["id", "owner", "created_at"]
    fields = ["id", "name", "owner", "created_at"]
    inlines = [MembershipInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Renaming is the owner's (SPEC §3): an admin sees the workspace read-only.
        if obj is None or request.user.is_superuser:
            return self.has_module_permission(request)
        return self._is_owner(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None or request.user.is_superuser:
            return bool(request.user.is_superuser)
        return self._is_owner(request, obj)

    @staticmethod
    def _is_owner(request: HttpRequest, obj: Workspace) -> bool:
        return bool(request.user.is_active and request.user.is_staff) and (
            obj.owner_id == request.user.pk
        )

    # Apps built on workspaces add read-only panels here (sandboxes: usage) by subclassing
    # this admin and registering the subclass in its place.
    detail_fields: tuple[str, ...] = ("id", "name", "owner", "created_at", "history")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("id", "created_at")
        return tuple(name for name in self.detail_fields if name != "name")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("name",) if obj is None else self.detail_fields

    @admin.display(description="History")
    def history(self, obj: Workspace) -> SafeString | str:
        return events_panel(selectors.workspace_history(workspace=obj))

    def save_model(self, request: HttpRequest, obj: Workspace, form: Any, change: bool) -> None:
        actor = admin_actor(request)
        if change:
            services.workspace_rename(workspace=obj, name=obj.name, actor=actor)
        else:
            assert actor.user is not None
            created = services.workspace_create(name=obj.name, owner=actor.user)
            obj.pk, obj.owner, obj.created_at = created.pk, created.owner, created.created_at
            obj._state.adding = False

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # A workspace takes its memberships and keys with it, as in the API. That the key
        # admin never deletes a key on its own (keys are revoked) must not block this.
        # Nor that memberships and delivery logs are never deleted on their own.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        cascaded = {str(m._meta.verbose_name) for m in (ApiKey, Membership, WebhookDelivery)}
        return deleted, counts, perms_needed - cascaded, protected

    def delete_model(self, request: HttpRequest, obj: Workspace) -> None:
        services.workspace_delete(workspace=obj, actor=admin_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Workspace]) -> None:
        for workspace in queryset:
            self.delete_model(request, workspace)


@admin.register(ApiKey)
class ApiKeyAdmin(WorkspaceScopedAdmin):
    list_display = [
        "name",
        "workspace",
        "role",
        "prefix",
        "created_by",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["role", AdministeredWorkspaceFilter, ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "workspace__name"]
    list_select_related = ["workspace", "created_by"]
    actions = ["revoke_keys"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are revoked, never deleted: their runs keep pointing at them

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("workspace", "name", "role")
        return (
            "workspace", "name", "role", "prefix", "created_by",
            "created_at", "last_used_at", "revoked_at",
        )  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if obj is None else self.get_fields(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        key, secret = services.api_key_create(
            workspace=obj.workspace,
            name=obj.name,
            role=obj.role,
            actor=admin_actor(request),
        )
        obj.pk, obj.prefix = key.pk, key.prefix
        obj._state.adding = False
        messages.warning(
            request,
            f"The secret of API key “{key.name}” is {secret} — copy it now, it is not shown again.",
        )

    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        actor = admin_actor(request)
        revoked = 0
        for key in queryset:
            if key.revoked_at is None:
                services.api_key_revoke(api_key=key, actor=actor)
                revoked += 1
        self.message_user(
            request, f"{revoked} revoked, {queryset.count() - revoked} already revoked."
        )


# --- webhooks and review emails ---------------------------------------------------------


class _Editable(WorkspaceScopedAdmin):
    """Staff act within the workspaces they administer (get_queryset and the workspace
    choices are scoped); every change goes through the services."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)


class DeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = ("event_type", "status", "attempts", "response_code", "next_attempt_at",
              "last_error", "created_at")  # fmt: skip
    readonly_fields = fields
    ordering = ("-created_at",)
    max_num = 0
    verbose_name_plural = "recent deliveries (all in Webhook deliveries)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        recent = queryset.order_by("-created_at").values("pk")[:20]
        return queryset.filter(pk__in=recent)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(_Editable):
    list_display = ["url", "workspace", "active", "subscribed", "failing_since", "disabled_at"]
    list_filter = ["active"]
    search_fields = ["url", "description", "workspace__name"]
    list_select_related = ["workspace"]
    inlines = [DeliveryInline]
    actions = ["send_test_event"]

    @admin.display(description="Events")
    def subscribed(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        editable = ("url", "event_types", "description", "active")
        if obj is None:
            return ("workspace", *editable)
        return ("workspace", *editable, "created_at", "failing_since", "disabled_at", "history")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("workspace", "created_at", "failing_since", "disabled_at", "history")

    @admin.display(description="History")
    def history(self, obj: WebhookEndpoint) -> SafeString | str:
        return trail_panel("webhook", obj.pk)

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        actor = admin_actor(request)
        fields: dict[str, Any] = {
            "url": obj.url,
            "event_types": obj.event_types or [],
            "description": obj.description,
            "active": obj.active,
        }
        # The form has checked the URL and the event types by the services' own rules.
        if change:
            webhooks.webhook_update(endpoint=obj, actor=actor, **fields)
            return
        endpoint, secret = webhooks.webhook_create(workspace=obj.workspace, actor=actor, **fields)
        obj.pk, obj.sealed_secret = endpoint.pk, endpoint.sealed_secret
        obj.created_at = endpoint.created_at
        obj._state.adding = False
        messages.warning(
            request,
            f"The signing secret of {endpoint.url} is {secret} — copy it now, it is not shown "
            "again.",
        )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        return _checked_by_the_service(form)

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        webhooks.webhook_delete(endpoint=obj, actor=admin_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            self.delete_model(request, endpoint)

    @admin.action(description="Send a test event to the selected endpoints")
    def send_test_event(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        actor, sent, refused = admin_actor(request), 0, 0
        for endpoint in queryset:
            try:
                webhooks.webhook_test(endpoint=endpoint, actor=actor)
                sent += 1
            except AirlockError:
                refused += 1
        self.message_user(request, f"{sent} test events sent, {refused} refused (disabled).")


def _checked_by_the_service(form: Any) -> Any:
    """The endpoint form, its URL checked by the service's own rules (shape, SSRF guard)."""

    class Form(form):  # type: ignore[misc]
        def clean_url(self) -> str:
            try:
                return webhooks.check_url(self.cleaned_data["url"]).url
            except AirlockError as exc:
                raise ValidationError(exc.detail) from exc

        def clean_event_types(self) -> list[str]:
            chosen = self.cleaned_data.get("event_types") or []
            if not isinstance(chosen, list) or not all(isinstance(t, str) for t in chosen):
                raise ValidationError('A list of event types, e.g. ["artifact.approved"].')
            try:
                return webhooks.clean_event_types(chosen)
            except AirlockError as exc:
                raise ValidationError(exc.detail) from exc

    return Form


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(WorkspaceScopedAdmin):
    """The delivery log: read-only, with a retry through the service."""

    list_display = ["event_type", "endpoint", "status", "attempts", "response_code",
                    "next_attempt_at", "last_error", "created_at"]  # fmt: skip
    list_filter = ["status", "event_type"]
    search_fields = ["endpoint__url", "event_type", "last_error"]
    list_select_related = ["endpoint"]
    actions = ["retry_deliveries"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Retry the selected deliveries now")
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        actor, retried, refused = admin_actor(request), 0, 0
        for delivery in queryset.select_related("endpoint"):
            try:
                webhooks.delivery_retry(delivery=delivery, actor=actor)
                retried += 1
            except AirlockError:
                refused += 1
        self.message_user(request, f"{retried} retried, {refused} refused (endpoint disabled).")


@admin.register(Membership)
class MembershipAdmin(WorkspaceScopedAdmin):
    """Who is emailed about pending reviews; roles and members change through the API."""

    list_display = ["user", "workspace", "role", "notify_reviews"]
    list_editable = ["notify_reviews"]
    list_filter = ["role", "notify_reviews"]
    search_fields = ["user__username", "workspace__name"]
    list_select_related = ["user", "workspace"]
    fields = ["user", "workspace", "role", "joined_at", "notify_reviews"]
    readonly_fields = ["user", "workspace", "role", "joined_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        services.membership_set_notify_reviews(
            membership=obj, notify_reviews=obj.notify_reviews, actor=admin_actor(request)
        )

"""Workspace, member and API key routes (SPEC §4). Thin: validate → service/selector → serialize."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import (
    CommaSeparatedChoices,
    CursorPagination,
    StrictQueryMixin,
    StrictSerializer,
    paginate,
    validated,
)
from config.exceptions import PermissionDenied
from workspaces import access, events, selectors, services, webhooks
from workspaces.access import Actor
from workspaces.models import (
    ApiKeyRole,
    DeliveryStatus,
    Event,
    EventType,
    Role,
    WebhookDelivery,
    WebhookEndpoint,
    Workspace,
)

User = get_user_model()


class WorkspaceScopedView(StrictQueryMixin, APIView):
    """Base of every route under `workspaces/{ws}/`: resolves the workspace from the URL once
    and checks the caller's role against `minimum_role` for the method. Subclasses read
    `self.workspace`, `self.role` and `self.actor` and never look the workspace up themselves."""

    minimum_role: ClassVar[dict[str, Role]] = {}
    workspace: Workspace
    role: Role
    actor: Actor

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.actor = Actor.from_request(request)
        self.workspace, self.role = selectors.workspace_get(
            actor=self.actor,
            workspace_id=kwargs["workspace_id"],
            minimum=self.minimum_role.get(request.method or "GET", Role.MEMBER),
        )


# --- Workspaces --------------------------------------------------------------------------


class WorkspaceOut(serializers.ModelSerializer[Workspace]):
    """A workspace and the caller's role in it: `role` in the context for one workspace, the
    selector's `my_role` annotation for a list."""

    role = serializers.SerializerMethodField()
    owner_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Workspace
        fields = ["id", "name", "owner_id", "role", "created_at"]

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_role(self, workspace: Workspace) -> str | None:
        role = self.context.get("role", getattr(workspace, "my_role", None))
        return str(role) if role is not None else None


class WorkspaceIn(StrictSerializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)


class WorkspaceListView(StrictQueryMixin, APIView):
    pagination_class = CursorPagination

    @extend_schema(responses=WorkspaceOut(many=True), operation_id="workspaces_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.workspace_list(actor=Actor.from_request(request))
        return paginate(self, request, queryset, WorkspaceOut, "-created_at")

    @extend_schema(request=WorkspaceIn, responses={201: WorkspaceOut})
    def post(self, request: Request) -> Response:
        actor = Actor.from_request(request)
        if actor.api_key is not None:
            raise PermissionDenied("API keys cannot create workspaces.")
        assert actor.user is not None  # IsAuthenticated let the request in
        data = validated(WorkspaceIn, request)
        workspace = services.workspace_create(name=data["name"], owner=actor.user)
        body = WorkspaceOut(workspace, context={"role": Role.OWNER}).data
        return Response(body, status=status.HTTP_201_CREATED)


class WorkspaceDetailView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"PATCH": Role.OWNER, "DELETE": Role.OWNER}

    @extend_schema(responses=WorkspaceOut)
    def get(self, request: Request, workspace_id: str) -> Response:
        return Response(WorkspaceOut(self.workspace, context={"role": self.role}).data)

    @extend_schema(request=WorkspaceIn, responses=WorkspaceOut)
    def patch(self, request: Request, workspace_id: str) -> Response:
        data = validated(WorkspaceIn, request)
        services.workspace_rename(workspace=self.workspace, name=data["name"], actor=self.actor)
        return Response(WorkspaceOut(self.workspace, context={"role": self.role}).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, workspace_id: str) -> Response:
        services.workspace_delete(workspace=self.workspace, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Members -----------------------------------------------------------------------------


class MemberOut(serializers.Serializer[Any]):
    user_id = serializers.IntegerField()
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Role.choices)
    joined_at = serializers.DateTimeField()
    notify_reviews = serializers.BooleanField(
        help_text="Admins and owners: emailed when a run's artifacts wait for review."
    )


class MemberAddIn(StrictSerializer):
    user_id = serializers.IntegerField(required=False, min_value=1)
    username = serializers.CharField(required=False, max_length=150)
    role = serializers.ChoiceField(choices=ApiKeyRole.choices, default=Role.MEMBER)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("user_id" in attrs) == ("username" in attrs):
            raise serializers.ValidationError("Give exactly one of user_id or username.")
        lookup = {"pk": attrs["user_id"]} if "user_id" in attrs else {"username": attrs["username"]}
        user = User.objects.filter(is_active=True, **lookup).first()
        if user is None:
            field = "user_id" if "user_id" in attrs else "username"
            raise serializers.ValidationError({field: ["No such user."]})
        attrs["user"] = user
        return attrs


class MemberChangeIn(StrictSerializer):
    role = serializers.ChoiceField(choices=ApiKeyRole.choices, required=False)
    notify_reviews = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Give role, notify_reviews or both.")
        return attrs


class MemberListView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"POST": Role.ADMIN}
    pagination_class = CursorPagination

    @extend_schema(responses=MemberOut(many=True), operation_id="workspaces_members_list")
    def get(self, request: Request, workspace_id: str) -> Response:
        queryset = selectors.membership_list(workspace=self.workspace)
        return paginate(self, request, queryset, MemberOut, "joined_at")

    @extend_schema(request=MemberAddIn, responses={201: MemberOut})
    def post(self, request: Request, workspace_id: str) -> Response:
        data = validated(MemberAddIn, request)
        membership = services.membership_add(
            workspace=self.workspace, user=data["user"], role=data["role"], actor=self.actor
        )
        return Response(MemberOut(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(WorkspaceScopedView):
    @extend_schema(
        request=MemberChangeIn,
        responses=MemberOut,
        description="Change a member's role (admins and owners), or whether they are emailed "
        "about pending reviews (their own choice; admins and owners may change anyone's).",
    )
    def patch(self, request: Request, workspace_id: str, user_id: int) -> Response:
        data = validated(MemberChangeIn, request)
        if "role" in data or not self._is_self(user_id):
            access.require(self.role, Role.ADMIN)
        membership = selectors.membership_get(workspace=self.workspace, user_id=user_id)
        if "role" in data:
            services.membership_change_role(
                membership=membership, role=data["role"], actor=self.actor
            )
        if "notify_reviews" in data:
            services.membership_set_notify_reviews(
                membership=membership, notify_reviews=data["notify_reviews"], actor=self.actor
            )
        return Response(MemberOut(membership).data)

    def _is_self(self, user_id: int) -> bool:
        return (
            self.actor.is_person and self.actor.user is not None and (user_id == self.actor.user.pk)
        )

    @extend_schema(responses={204: None})
    def delete(self, request: Request, workspace_id: str, user_id: int) -> Response:
        leaving = self._is_self(user_id)
        if not leaving:
            access.require(self.role, Role.ADMIN)
        membership = selectors.membership_get(workspace=self.workspace, user_id=user_id)
        services.membership_remove(membership=membership, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- API keys ----------------------------------------------------------------------------


class ApiKeyOut(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=ApiKeyRole.choices)
    prefix = serializers.CharField()
    created_by_id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(help_text="The secret. Shown this once; store it now.")


class ApiKeyIn(StrictSerializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)
    role = serializers.ChoiceField(choices=ApiKeyRole.choices, default=ApiKeyRole.MEMBER)


class ApiKeyListView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"GET": Role.ADMIN, "POST": Role.ADMIN}
    pagination_class = CursorPagination

    @extend_schema(responses=ApiKeyOut(many=True), operation_id="workspaces_api_keys_list")
    def get(self, request: Request, workspace_id: str) -> Response:
        queryset = selectors.api_key_list(workspace=self.workspace)
        return paginate(self, request, queryset, ApiKeyOut, "-created_at")

    @extend_schema(request=ApiKeyIn, responses={201: ApiKeyCreatedOut})
    def post(self, request: Request, workspace_id: str) -> Response:
        data = validated(ApiKeyIn, request)
        key, secret = services.api_key_create(
            workspace=self.workspace, name=data["name"], role=data["role"], actor=self.actor
        )
        body = {**ApiKeyOut(key).data, "key": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"DELETE": Role.ADMIN}

    @extend_schema(responses={204: None})
    def delete(self, request: Request, workspace_id: str, key_id: str) -> Response:
        key = selectors.api_key_get(workspace=self.workspace, key_id=key_id)  # type: ignore[arg-type]
        services.api_key_revoke(api_key=key, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- The trail ---------------------------------------------------------------------------

EVENTS_PAGE_SIZE = 100
EVENTS_MAX_PAGE_SIZE = 500


class SubjectOut(serializers.Serializer[Any]):
    type = serializers.CharField(source="subject_type")
    id = serializers.CharField(source="subject_id")


class EventOut(serializers.Serializer[Any]):
    id = serializers.IntegerField(help_text="The cursor: pass it as `after` to read on.")
    workspace_id = serializers.UUIDField()
    type = serializers.ChoiceField(choices=EventType.choices)
    actor = serializers.CharField(help_text="`user:<name>`, `api_key:<prefix>` or `system:<task>`")
    subject = SubjectOut(source="*")
    run_id = serializers.UUIDField(allow_null=True)
    thread_id = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # `data` cannot be a class attribute: it would shadow Serializer.data.
        fields = super().get_fields()
        fields["data"] = serializers.JSONField(
            help_text="Metadata only: never file contents or secrets."
        )
        return fields

    def to_representation(self, instance: Event) -> dict[str, Any]:
        # The fields above document the shape; events.as_json is the one that makes it, for
        # this route, the stream and webhooks alike.
        return events.as_json(instance)


class EventPageOut(serializers.Serializer[Any]):
    next = serializers.URLField(
        allow_null=True, help_text="The next page (`after` = the last id here), or null."
    )
    results = EventOut(many=True)


class EventQuery(StrictSerializer):
    after = serializers.IntegerField(min_value=0, required=False)
    type = CommaSeparatedChoices(
        choices=EventType.values,
        required=False,
        help_text="One event type, or several separated by commas.",
    )
    run_id = serializers.UUIDField(required=False)
    thread_id = serializers.CharField(max_length=255, required=False)
    page_size = serializers.IntegerField(
        min_value=1, max_value=EVENTS_MAX_PAGE_SIZE, required=False, default=EVENTS_PAGE_SIZE
    )


class EventListView(WorkspaceScopedView):
    query = {"GET": EventQuery}

    @extend_schema(
        parameters=[EventQuery],
        responses=EventPageOut,
        operation_id="workspaces_events_list",
        description="The workspace's trail, oldest first, after the cursor `after`. Members "
        "and up.",
    )
    def get(self, request: Request, workspace_id: str) -> Response:
        query = dict(self.query_data)
        size = query.pop("page_size")
        events = list(
            selectors.event_list(
                workspace=self.workspace,
                after=query.get("after"),
                types=query.get("type"),
                run_id=query.get("run_id"),
                thread_id=query.get("thread_id"),
            )[: size + 1]
        )
        return Response(
            {
                "next": _next_page(request, events[:size]) if len(events) > size else None,
                "results": EventOut(events[:size], many=True).data,
            }
        )


def _next_page(request: Request, page: list[Event]) -> str:
    params = request.query_params.copy()
    params["after"] = str(page[-1].pk)
    return request.build_absolute_uri(f"{request.path}?{params.urlencode()}")


# --- Webhooks ----------------------------------------------------------------------------


class WebhookOut(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    url = serializers.CharField()
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        help_text="The event types sent; empty means every event.",
    )
    description = serializers.CharField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    failing_since = serializers.DateTimeField(
        allow_null=True, help_text="Every attempt has failed since then (null: healthy)."
    )
    disabled_at = serializers.DateTimeField(
        allow_null=True, help_text="When it was disabled for failing too long, if it was."
    )


class WebhookCreatedOut(WebhookOut):
    secret = serializers.CharField(
        help_text="The signing secret (`whsec_…`), for Standard Webhooks verification. Shown "
        "this once; store it now."
    )


class WebhookIn(StrictSerializer):
    url = serializers.CharField(max_length=webhooks.URL_MAX_LENGTH)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices), required=False, max_length=64
    )
    description = serializers.CharField(
        max_length=webhooks.DESCRIPTION_MAX_LENGTH, required=False, allow_blank=True
    )
    active = serializers.BooleanField(required=False)


class WebhookPatchIn(WebhookIn):
    url = serializers.CharField(max_length=webhooks.URL_MAX_LENGTH, required=False)


class DeliveryOut(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    webhook_id = serializers.UUIDField(source="endpoint_id")
    event_id = serializers.IntegerField()
    event_type = serializers.ChoiceField(choices=EventType.choices)
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attempts = serializers.IntegerField()
    response_code = serializers.IntegerField(
        allow_null=True, help_text="The last attempt's HTTP status."
    )
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)


ADMINS: dict[str, Role] = {m: Role.ADMIN for m in ("GET", "POST", "PATCH", "DELETE")}


class WebhookListView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = ADMINS
    pagination_class = CursorPagination

    @extend_schema(responses=WebhookOut(many=True), operation_id="workspaces_webhooks_list")
    def get(self, request: Request, workspace_id: str) -> Response:
        queryset = selectors.webhook_list(workspace=self.workspace)
        return paginate(self, request, queryset, WebhookOut, "created_at")

    @extend_schema(
        request=WebhookIn,
        responses={201: WebhookCreatedOut},
        description="A new endpoint. The URL must be https:// and resolve to public "
        "addresses only (see WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOW_PRIVATE). The signing secret is "
        "in this answer only.",
    )
    def post(self, request: Request, workspace_id: str) -> Response:
        data = validated(WebhookIn, request)
        endpoint, secret = webhooks.webhook_create(
            workspace=self.workspace, actor=self.actor, **data
        )
        body = {**WebhookOut(endpoint).data, "secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class WebhookScopedView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = ADMINS
    endpoint: WebhookEndpoint

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.endpoint = selectors.webhook_get(
            workspace=self.workspace, webhook_id=kwargs["webhook_id"]
        )


class WebhookDetailView(WebhookScopedView):
    @extend_schema(responses=WebhookOut)
    def get(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        return Response(WebhookOut(self.endpoint).data)

    @extend_schema(request=WebhookPatchIn, responses=WebhookOut)
    def patch(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        data = validated(WebhookPatchIn, request)
        endpoint = webhooks.webhook_update(endpoint=self.endpoint, actor=self.actor, **data)
        return Response(WebhookOut(endpoint).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        webhooks.webhook_delete(endpoint=self.endpoint, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookTestView(WebhookScopedView):
    @extend_schema(
        request=None,
        responses={202: DeliveryOut},
        description="Record a `webhook.test` event and send it to this endpoint only.",
    )
    def post(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        delivery = webhooks.webhook_test(endpoint=self.endpoint, actor=self.actor)
        return Response(DeliveryOut(delivery).data, status=status.HTTP_202_ACCEPTED)


class DeliveryListView(WebhookScopedView):
    pagination_class = CursorPagination

    @extend_schema(
        responses=DeliveryOut(many=True),
        operation_id="workspaces_webhooks_deliveries_list",
        description="The endpoint's delivery log, newest first.",
    )
    def get(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        queryset = selectors.delivery_list(endpoint=self.endpoint)
        return paginate(self, request, queryset, DeliveryOut, "-created_at")


class DeliveryRetryView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = ADMINS

    @extend_schema(
        request=None,
        responses={202: DeliveryOut},
        description="Send this delivery again now, whatever its status.",
    )
    def post(self, request: Request, workspace_id: str, delivery_id: str) -> Response:
        delivery: WebhookDelivery = selectors.delivery_get(
            workspace=self.workspace,
            delivery_id=delivery_id,  # type: ignore[arg-type]
        )
        delivery = webhooks.delivery_retry(delivery=delivery, actor=self.actor)
        return Response(DeliveryOut(delivery).data, status=status.HTTP_202_ACCEPTED)

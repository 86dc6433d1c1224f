from django.urls import path

from workspaces import api, stream

urlpatterns = [
    path("workspaces/", api.WorkspaceListView.as_view(), name="workspace-list"),
    path(
        "workspaces/<uuid:workspace_id>/",
        api.WorkspaceDetailView.as_view(),
        name="workspace-detail",
    ),
    path(
        "workspaces/<uuid:workspace_id>/members/", api.MemberListView.as_view(), name="member-list"
    ),
    path(
        "workspaces/<uuid:workspace_id>/members/<int:user_id>/",
        api.MemberDetailView.as_view(),
        name="member-detail",
    ),
    path(
        "workspaces/<uuid:workspace_id>/api-keys/",
        api.ApiKeyListView.as_view(),
        name="api-key-list",
    ),
    path(
        "workspaces/<uuid:workspace_id>/events/",
        api.EventListView.as_view(),
        name="event-list",
    ),
    path(
        "workspaces/<uuid:workspace_id>/api-keys/<uuid:key_id>/",
        api.ApiKeyDetailView.as_view(),
        name="api-key-detail",
    ),
    path(
        "workspaces/<uuid:workspace_id>/events/stream/",
        stream.EventStreamView.as_view(),
        name="event-stream",
    ),
    path(
        "workspaces/<uuid:workspace_id>/webhooks/",
        api.WebhookListView.as_view(),
        name="webhook-list",
    ),
    path(
        "workspaces/<uuid:workspace_id>/webhooks/deliveries/<uuid:delivery_id>/retry/",
        api.DeliveryRetryView.as_view(),
        name="webhook-delivery-retry",
    ),
    path(
        "workspaces/<uuid:workspace_id>/webhooks/<uuid:webhook_id>/",
        api.WebhookDetailView.as_view(),
        name="webhook-detail",
    ),
    path(
        "workspaces/<uuid:workspace_id>/webhooks/<uuid:webhook_id>/deliveries/",
        api.DeliveryListView.as_view(),
        name="webhook-deliveries",
    ),
    path(
        "workspaces/<uuid:workspace_id>/webhooks/<uuid:webhook_id>/test/",
        api.WebhookTestView.as_view(),
        name="webhook-test",
    ),
]

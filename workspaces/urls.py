from django.urls import path

from workspaces import api

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
]

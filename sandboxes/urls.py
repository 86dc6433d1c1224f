from django.urls import path

from sandboxes import api

urlpatterns = [
    path(
        "workspaces/<uuid:workspace_id>/runs/",
        api.WorkspaceRunsView.as_view(),
        name="workspace-runs",
    ),
    path(
        "workspaces/<uuid:workspace_id>/usage/",
        api.WorkspaceUsageView.as_view(),
        name="workspace-usage",
    ),
    path("runs/", api.RunListView.as_view(), name="run-list"),
    path("runs/<uuid:run_id>/", api.RunDetailView.as_view(), name="run-detail"),
    path("runs/<uuid:run_id>/exec/", api.RunExecView.as_view(), name="run-exec"),
    path("runs/<uuid:run_id>/commands/", api.RunCommandsView.as_view(), name="run-commands"),
    path(
        "runs/<uuid:run_id>/commands/<uuid:command_id>/",
        api.RunCommandDetailView.as_view(),
        name="run-command-detail",
    ),
    path(
        "runs/<uuid:run_id>/commands/<uuid:command_id>/kill/",
        api.RunCommandKillView.as_view(),
        name="run-command-kill",
    ),
    path("runs/<uuid:run_id>/files/", api.RunFilesView.as_view(), name="run-files"),
    path("runs/<uuid:run_id>/files/list/", api.RunFileListView.as_view(), name="run-file-list"),
    path("runs/<uuid:run_id>/complete/", api.RunCompleteView.as_view(), name="run-complete"),
    path("runs/<uuid:run_id>/cancel/", api.RunCancelView.as_view(), name="run-cancel"),
    path("runs/<uuid:run_id>/pause/", api.RunPauseView.as_view(), name="run-pause"),
    path("runs/<uuid:run_id>/resume/", api.RunResumeView.as_view(), name="run-resume"),
]

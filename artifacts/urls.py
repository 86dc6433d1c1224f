from django.urls import path

from artifacts import api

urlpatterns = [
    path("runs/<uuid:run_id>/artifacts/", api.RunArtifactsView.as_view(), name="run-artifacts"),
    path(
        "runs/<uuid:run_id>/artifacts/archive/",
        api.RunArtifactsArchiveView.as_view(),
        name="run-artifacts-archive",
    ),
    path(
        "workspaces/<uuid:workspace_id>/review-policy/",
        api.ReviewPolicyView.as_view(),
        name="workspace-review-policy",
    ),
    path("artifacts/", api.ArtifactListView.as_view(), name="artifact-list"),
    path("artifacts/<uuid:artifact_id>/", api.ArtifactDetailView.as_view(), name="artifact-detail"),
    path(
        "artifacts/<uuid:artifact_id>/content/",
        api.ArtifactContentView.as_view(),
        name="artifact-content",
    ),
    path(
        "artifacts/<uuid:artifact_id>/review/",
        api.ArtifactReviewView.as_view(),
        name="artifact-review",
    ),
]

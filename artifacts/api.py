"""Artifact routes (SPEC §4): capture, list, read, download, review.

Thin: validate → service/selector → serialize. Every call that names a run or an artifact
records activity on its run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import django_filters
from django.db.models import Q
from django.http import StreamingHttpResponse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from artifacts import capture, downloads, policy, review, risk, selectors
from artifacts.models import (
    MAX_AUTO_APPROVE_RULES,
    REVIEW_COMMENT_MAX_CHARS,
    Artifact,
    ArtifactType,
    ReviewState,
)
from config.api import (
    CommaSeparatedChoices,
    StrictQueryMixin,
    StrictSerializer,
    paginate,
    served_chunks,
    validated,
)
from sandboxes.api import RunScopedView
from sandboxes.validation import PATH_MAX_LENGTH
from workspaces.access import Actor
from workspaces.api import WorkspaceScopedView
from workspaces.models import Role


class SignalOut(serializers.Serializer[Any]):
    code = serializers.ChoiceField(choices=list(risk.CODES))
    severity = serializers.ChoiceField(choices=["high", "warning", "info"])
    message = serializers.CharField(help_text="Names the kind and the line; never the secret.")
    line = serializers.IntegerField(required=False, help_text="1-based, when it is one line.")


class ArtifactOut(serializers.ModelSerializer[Artifact]):
    signals = SignalOut(many=True, read_only=True, help_text="Risk signals found at capture.")
    approvals = serializers.SerializerMethodField(
        help_text="Approvals given so far (1 while the second of two is awaited)."
    )
    required_approvals = serializers.SerializerMethodField(
        help_text="Distinct approvals this artifact needs (the workspace's review policy)."
    )
    run_id = serializers.UUIDField(read_only=True)
    workspace_id = serializers.UUIDField(read_only=True)
    reviewed_by_id = serializers.IntegerField(read_only=True, allow_null=True)
    preview_text = serializers.SerializerMethodField(
        help_text="The start of a text file; null until approved unless you review here."
    )

    class Meta:
        model = Artifact
        fields = [
            "id", "run_id", "workspace_id", "thread_id", "type", "title", "content_type",
            "size", "sha256", "sandbox_path", "preview_text", "signals", "review_state",
            "required_approvals", "approvals", "reviewed_by_id", "reviewed_at",
            "review_comment", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_required_approvals(self, artifact: Artifact) -> int:
        return selectors.approvals_needed(artifact)

    def get_approvals(self, artifact: Artifact) -> int:
        # Annotated by the selectors; a just-decided artifact counts its rows.
        count = getattr(artifact, "approval_count", None)
        return int(count) if count is not None else artifact.approvals.count()

    def get_preview_text(self, artifact: Artifact) -> str | None:
        # Set by every selector: a member sees what is in the airlock only once it is out.
        # One artifact: the view says (from selectors.content_visible); a list: the selector's
        # per-row annotation.
        visible = self.context.get("content_visible", getattr(artifact, "content_visible", False))
        return artifact.preview_text if visible else None


class CaptureIn(StrictSerializer):
    path = serializers.CharField(max_length=PATH_MAX_LENGTH, trim_whitespace=False)
    type = serializers.ChoiceField(choices=ArtifactType.choices, required=False)
    title = serializers.CharField(max_length=capture.TITLE_MAX_CHARS, required=False)


class ReviewIn(StrictSerializer):
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    comment = serializers.CharField(
        max_length=REVIEW_COMMENT_MAX_CHARS,
        required=False,
        allow_blank=True,
        help_text="Required to reject.",
    )


class ArtifactFilter(django_filters.FilterSet):
    review_state = django_filters.ChoiceFilter(choices=ReviewState.choices)
    type = django_filters.ChoiceFilter(choices=ArtifactType.choices)
    thread_id = django_filters.CharFilter()
    run = django_filters.UUIDFilter(field_name="run_id")
    workspace = django_filters.UUIDFilter(field_name="workspace_id")

    class Meta:
        model = Artifact
        fields = ["review_state", "type", "thread_id", "run", "workspace"]


class RunArtifactsView(RunScopedView, generics.GenericAPIView[Artifact]):
    filter_backends = [DjangoFilterBackend]
    filterset_class = ArtifactFilter
    queryset = Artifact.objects.none()

    @extend_schema(responses=ArtifactOut(many=True), operation_id="runs_artifacts_list")
    def get(self, request: Request, run_id: str) -> Response:
        artifacts = selectors.artifact_list(actor=self.actor, run=self.run)
        return paginate(self, request, self.filter_queryset(artifacts), ArtifactOut, "-created_at")

    @extend_schema(
        request=CaptureIn,
        responses={201: ArtifactOut},
        description="Copy a file of the running sandbox into storage as a pending artifact. "
        "409 unless the run is running, 413 past ARTIFACT_MAX_BYTES.",
    )
    def post(self, request: Request, run_id: str) -> Response:
        data = validated(CaptureIn, request)
        artifact = capture.artifact_capture(run=self.run, actor=self.actor, **data)
        # As in GET artifacts/{id}/: a member sees the preview once it is approved.
        visible = selectors.content_visible(artifact=artifact, role=self.role)
        body = ArtifactOut(artifact, context={"content_visible": visible}).data
        return Response(body, status=status.HTTP_201_CREATED)


class ArtifactListView(StrictQueryMixin, generics.GenericAPIView[Artifact]):
    filter_backends = [DjangoFilterBackend]
    filterset_class = ArtifactFilter
    queryset = Artifact.objects.none()

    @extend_schema(responses=ArtifactOut(many=True), operation_id="artifacts_list")
    def get(self, request: Request) -> Response:
        artifacts = selectors.artifact_list(actor=Actor.from_request(request))
        return paginate(self, request, self.filter_queryset(artifacts), ArtifactOut, "-created_at")


class ArtifactScopedView(StrictQueryMixin, APIView):
    """Base of every `artifacts/{id}/…` route: resolves the artifact once (404 for outsiders)
    and checks the role for the method. Reading an artifact is not activity on its run."""

    minimum_role: ClassVar[dict[str, Role]] = {}
    needs_content = False  # the bytes: members only once approved
    artifact: Artifact
    role: Role
    actor: Actor

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.actor = Actor.from_request(request)
        self.artifact, self.role = selectors.artifact_get(
            actor=self.actor,
            artifact_id=kwargs["artifact_id"],
            minimum=self.minimum_role.get(request.method or "GET", Role.MEMBER),
            content=self.needs_content,
        )

    def serializer_context(self) -> dict[str, Any]:
        return {
            "content_visible": selectors.content_visible(artifact=self.artifact, role=self.role)
        }


class ArtifactWaitQuery(StrictSerializer):
    wait_s = serializers.FloatField(
        min_value=0,
        max_value=selectors.WAIT_MAX_S,
        required=False,
        help_text="Wait up to this many seconds for the artifact to leave `while_state`.",
    )
    while_state = CommaSeparatedChoices(
        choices=ReviewState.values,
        required=False,
        help_text="With wait_s: the review states to wait through (default: pending).",
    )


class ArtifactDetailView(ArtifactScopedView):
    query = {"GET": ArtifactWaitQuery}

    @extend_schema(
        parameters=[ArtifactWaitQuery],
        responses=ArtifactOut,
        description="One artifact's metadata; `preview_text` is null for members until it is "
        "approved. With `wait_s` (how an agent waits for a human decision), the answer comes "
        "as soon as the review state is none of `while_state` (default `pending`), or after "
        f"`wait_s` seconds (at most {selectors.WAIT_MAX_S}) with the artifact as it is then.",
    )
    def get(self, request: Request, artifact_id: str) -> Response:
        query = self.query_data
        if query.get("wait_s"):
            self.artifact = selectors.artifact_wait(
                artifact=self.artifact,
                while_state=set(query.get("while_state") or [ReviewState.PENDING]),
                wait_s=query["wait_s"],
            )
        return Response(ArtifactOut(self.artifact, context=self.serializer_context()).data)


class ArtifactContentView(ArtifactScopedView):
    needs_content = True

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
        description="The artifact's bytes, always as an attachment with nosniff; HTML, SVG, "
        "XML and scripts leave as application/octet-stream. Members get 404 until it is "
        "approved; admins and owners get any.",
    )
    def get(self, request: Request, artifact_id: str) -> StreamingHttpResponse:
        response = downloads.attachment_response(self.artifact)
        chunks = response.streaming_content
        assert not isinstance(chunks, AsyncIterator)  # downloads streams from storage, in sync
        response.streaming_content = served_chunks(request, chunks)
        return response


class ArtifactReviewView(ArtifactScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"POST": Role.ADMIN}

    @extend_schema(
        request=ReviewIn,
        responses=ArtifactOut,
        description="Approve or reject a pending artifact (admin or owner). A reject needs a "
        "comment; reviewing artifacts of your own run is refused unless ALLOW_SELF_REVIEW; "
        "a decided artifact is final (409). Where the workspace's review policy needs two "
        "approvals, the first leaves the artifact pending (`approvals: 1`) and the second "
        "must come from someone else (403 `already_approved`); neither may have started the "
        "run.",
    )
    def post(self, request: Request, artifact_id: str) -> Response:
        data = validated(ReviewIn, request)
        review.artifact_review(
            artifact=self.artifact,
            actor=self.actor,
            decision=data["decision"],
            comment=data.get("comment", ""),
        )
        # Read again: the decision may have added an approval the first read did not count.
        self.artifact, self.role = selectors.artifact_get(actor=self.actor, artifact_id=artifact_id)
        return Response(ArtifactOut(self.artifact, context=self.serializer_context()).data)


class RunArtifactsArchiveView(RunScopedView):
    @extend_schema(
        operation_id="runs_artifacts_archive",
        responses={
            # application/octet-stream like every download: generated clients (and
            # openapi-python-client) read it as bytes; the file name says it is a zip.
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="A zip of the artifacts, streamed, as an attachment named "
                '"run-<id>-artifacts.zip".',
            )
        },
        description="The run's artifacts you may download, as one zip streamed as it is "
        "made: for members only the approved ones, for admins and owners all of them. Each "
        "member is named by its path under the run's output folder (or the sandbox home).",
    )
    def get(self, request: Request, run_id: str) -> StreamingHttpResponse:
        # The rows are read now, while the request's database connection is certainly open;
        # the stream then only reads storage. Rows are small: memory follows their count,
        # never the files' sizes.
        artifacts = list(
            selectors.artifact_list(actor=self.actor, run=self.run)
            .filter(Q(content_visible=True))  # the selector's annotation
            .order_by("created_at", "id")
        )
        # served_chunks: under ASGI a plain iterator would be read whole before sending.
        chunks = downloads.archive_chunks(artifacts, output_dir=self.run.output_dir)
        response = StreamingHttpResponse(
            served_chunks(request, chunks), content_type="application/octet-stream"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="run-{self.run.pk.hex[:8]}-artifacts.zip"'
        )
        response["X-Content-Type-Options"] = "nosniff"
        response["Cache-Control"] = "private, no-store"
        return response


# --- the review policy -------------------------------------------------------------------


class RuleSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=ArtifactType.choices, required=False)
    path_glob = serializers.CharField(
        max_length=policy.PATH_GLOB_MAX_CHARS,
        required=False,
        trim_whitespace=False,
        help_text="Shell glob on the sandbox path; `*` also matches `/`.",
    )
    max_size = serializers.IntegerField(min_value=0, required=False, help_text="Bytes.")


class ReviewPolicySerializer(StrictSerializer):
    auto_approve = serializers.ListField(
        child=RuleSerializer(),
        required=False,
        max_length=MAX_AUTO_APPROVE_RULES,
        help_text="A rule approves an artifact at capture when every field it gives matches; "
        "never one with a `secret` or `active_content` signal.",
    )
    required_approvals = serializers.ChoiceField(choices=[1, 2], required=False, default=1)
    second_approval_only_with_signals = serializers.BooleanField(required=False, default=False)
    expire_after_h = serializers.IntegerField(
        min_value=1,
        max_value=policy.EXPIRE_AFTER_MAX_H,
        required=False,
        allow_null=True,
        default=None,
        help_text="Pending longer than this many hours → expired (final). null: never.",
    )


class ReviewPolicyView(WorkspaceScopedView):
    minimum_role: ClassVar[dict[str, Role]] = {"GET": Role.ADMIN, "PUT": Role.ADMIN}

    @extend_schema(responses=ReviewPolicySerializer, description="Admins and owners.")
    def get(self, request: Request, workspace_id: str) -> Response:
        found = selectors.review_policy_for(workspace_id=self.workspace.pk)
        return Response(ReviewPolicySerializer(found.as_json()).data)

    @extend_schema(
        request=ReviewPolicySerializer,
        responses=ReviewPolicySerializer,
        description="Replace the whole policy (admins and owners): a field left out takes "
        "its default. Recorded on the trail as `review_policy.changed`.",
    )
    def put(self, request: Request, workspace_id: str) -> Response:
        data = validated(ReviewPolicySerializer, request)
        data["auto_approve"] = [dict(rule) for rule in data.get("auto_approve", [])]
        saved = policy.review_policy_set(workspace=self.workspace, actor=self.actor, **data)
        return Response(ReviewPolicySerializer(saved.as_json()).data)

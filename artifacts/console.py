"""The run review page (SPEC §13), built from what its selector loaded: the run's timeline
from the trail and the command history, and one card per artifact with its preview, its
signals and what the signed-in reviewer may do with it. Pure functions over loaded rows: no
query here, so the page costs the same few queries whatever the run holds.

Everything a sandbox or an agent wrote is escaped; Markdown is rendered by markdown-it-py
with raw HTML off and then sanitised by nh3 (no images: a remote image in a file under
review would tell its author who looked, and when)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString, mark_safe

from artifacts import content, downloads, markdown, risk
from artifacts.models import PREVIEW_MAX_CHARS, Approval, Artifact, ReviewPolicy, ReviewState
from sandboxes.models import Command, CommandStatus, SandboxRun
from workspaces.admin import human_duration
from workspaces.models import Event

EXCERPT_LINES = 6
EXCERPT_CHARS = 600  # of each stream's tail, loaded for the excerpt (selectors)
MARKDOWN_TYPES = markdown.MARKDOWN_TYPES
REFUSAL_NOTES = {
    "self_review": "You started this run: someone else must review its artifacts.",
    "role": "Reviewing needs the admin role in this workspace.",
    "not_found": "You are not a member of this workspace.",
    "already_approved": "You gave the first approval: a second reviewer must decide.",
}


def render_markdown(text: str) -> SafeString:
    return markdown.safe(markdown.render(text))


def excerpt(stdout_tail: str, stderr_tail: str) -> str:
    """The last lines a command printed (stdout, then stderr), secrets removed."""
    parts = []
    for text in (stdout_tail, stderr_tail):
        lines = text.rstrip("\n").split("\n")[-EXCERPT_LINES:]
        if any(line.strip() for line in lines):
            parts.append("\n".join(lines))
    return risk.redact_text("\n".join(parts)) if parts else ""


# --- the timeline ---------------------------------------------------------------------


@dataclass
class TimelineRow:
    at: datetime
    kind: str  # boot, command, upload, capture, decision, run, other
    title: str
    actor: str
    detail: str = ""
    status: str = ""  # ok, failed, pending: the row's colour
    output: str = ""  # a command's excerpt
    anchor: str = ""  # the artifact card it refers to


def _command_row(event: Event, command: Command | None) -> TimelineRow:
    data = event.data
    if command is None:  # the row is gone (or older than the history): what the trail says
        return TimelineRow(event.created_at, "command", f"$ {data.get('command', '')}", event.actor)
    if command.status == CommandStatus.RUNNING:
        detail, status = "running", "pending"
    elif command.status == CommandStatus.EXITED:
        detail = f"exit {command.exit_code} · {human_duration(command.duration_ms)}"
        status = "ok" if command.exit_code == 0 else "failed"
    else:
        detail = f"{command.get_status_display().lower()} · {human_duration(command.duration_ms)}"
        status = "failed"
    if command.kind != "exec":
        detail = f"{command.get_kind_display().lower()} · {detail}"
    return TimelineRow(
        event.created_at,
        "command",
        f"$ {command.command}",
        event.actor,
        detail=detail,
        status=status,
        output=excerpt(getattr(command, "stdout_end", ""), getattr(command, "stderr_end", "")),
    )


def _artifact_row(event: Event, titles: dict[str, str]) -> TimelineRow:
    data, kind = event.data, event.type.removeprefix("artifact.")
    title = titles.get(event.subject_id) or data.get("title", "artifact")
    anchor = f"artifact-{event.subject_id}"
    if kind == "created":
        size = filesizeformat(data.get("size") or 0)
        signals = ", ".join(data.get("signals") or [])
        return TimelineRow(
            event.created_at,
            "capture",
            f"Captured {title}",
            event.actor,
            detail=f"{size}" + (f" · signals: {signals}" if signals else ""),
            anchor=anchor,
        )
    verbs = {
        "approval_recorded": ("First approval of", "pending"),
        "approved": ("Approved", "ok"),
        "rejected": ("Rejected", "failed"),
        "expired": ("Expired", "failed"),
    }
    verb, status = verbs.get(kind, (kind, ""))
    if data.get("transition") == "auto_approve":
        verb = f"Approved by policy rule {data.get('rule_number')}:"
    return TimelineRow(
        event.created_at,
        "decision",
        f"{verb} {title}",
        event.actor,
        detail=data.get("comment", ""),
        status=status,
        anchor=anchor,
    )


def _run_row(event: Event, run: SandboxRun) -> TimelineRow:
    data, kind = event.data, event.type.removeprefix("run.")
    if kind == "created":
        return TimelineRow(event.created_at, "run", "Run created", event.actor)
    if kind == "running":
        booted = human_duration((event.created_at - run.created_at).total_seconds() * 1000)
        return TimelineRow(
            event.created_at,
            "boot",
            "Sandbox booted",
            event.actor,
            detail=f"{data.get('sandbox_id', '')} · after {booted}",
            status="ok",
        )
    details = [str(data.get(k)) for k in ("end_reason", "exit_code") if data.get(k) is not None]
    if (data.get("error") or {}).get("message"):
        details.append(data["error"]["message"])
    status = "ok" if kind in ("succeeded", "resumed") else ("" if kind == "paused" else "failed")
    return TimelineRow(
        event.created_at,
        "run",
        f"Run {kind}",
        event.actor,
        detail=" · ".join(details),
        status=status,
    )


def run_timeline(
    *,
    run: SandboxRun,
    events: Iterable[Event],
    commands: dict[str, Command],
    titles: dict[str, str],
) -> list[TimelineRow]:
    """The run's trail as the reviewer reads it: a command is one row (its start event, with
    the exit code, duration and output excerpt of its history row), an upload names its
    file, a capture and a decision link to the artifact's card."""
    rows = []
    for event in events:
        if event.type == "command.started":
            rows.append(_command_row(event, commands.get(event.subject_id)))
        elif event.type == "command.finished":
            continue  # folded into the command's row
        elif event.type == "file.uploaded":
            size = filesizeformat(event.data.get("size") or 0)
            rows.append(
                TimelineRow(
                    event.created_at,
                    "upload",
                    f"Uploaded {event.data.get('path', '')}",
                    event.actor,
                    detail=size,
                )
            )
        elif event.subject_type == "artifact":
            rows.append(_artifact_row(event, titles))
        elif event.subject_type == "run":
            rows.append(_run_row(event, run))
        else:
            rows.append(TimelineRow(event.created_at, "other", event.type, event.actor))
    return rows


def timeline_html(rows: list[TimelineRow]) -> SafeString:
    """The timeline's list items, every value escaped (format_html). Built here rather than in
    the template: a run with 500 commands has a thousand rows, and the template engine costs
    ten times more per row."""
    items = []
    for row in rows:
        classes = f"airlock-event airlock-event-{row.kind}" + (
            f" airlock-event-{row.status}" if row.status else ""
        )
        if row.anchor:
            what = format_html('<a href="#{}">{}</a>', row.anchor, row.title)
        elif row.kind == "command":
            what = format_html("<code>{}</code>", row.title)
        else:
            what = conditional_escape(row.title)
        output = (
            format_html('<pre class="airlock-output">{}</pre>', row.output) if row.output else ""
        )
        items.append(
            format_html(
                '<li class="{}"><time datetime="{}" title="{}">{}</time>'
                '<span class="airlock-event-what">{}</span>'
                '<span class="airlock-event-detail">{}</span>'
                '<span class="airlock-event-actor">{}</span>{}</li>',
                classes,
                row.at.isoformat(),
                row.at.strftime("%Y-%m-%d %H:%M:%S %Z"),
                row.at.strftime("%H:%M:%S"),
                what,
                row.detail,
                row.actor,
                output,
            )
        )
    return mark_safe("".join(items))  # noqa: S308 (each item escaped by format_html)


# --- the artifacts --------------------------------------------------------------------


@dataclass
class ArtifactCard:
    artifact: Artifact
    needed: int
    approvals: list[Approval]
    refusal: str | None  # why this reviewer may not decide it (None: they may)
    signals: list[dict[str, Any]] = field(default_factory=list)
    preview: SafeString | str = ""
    markdown: SafeString | str = ""
    image_url: str = ""
    download_url: str = ""
    change_url: str = ""

    @property
    def pending(self) -> bool:
        return self.artifact.review_state == ReviewState.PENDING

    @property
    def decidable(self) -> bool:
        return self.pending and self.refusal is None

    @property
    def note(self) -> str:
        if not self.pending:
            return f"{self.artifact.get_review_state_display()}: this is final."
        if self.refusal is not None:
            return REFUSAL_NOTES.get(self.refusal, "You may not decide this one.")
        if self.needed > 1:
            have = len(self.approvals)
            who = ", ".join(a.actor for a in self.approvals)
            return f"Needs two approvals from two reviewers; {have} so far" + (
                f" ({who})." if who else "."
            )
        return ""

    @property
    def size(self) -> str:
        return filesizeformat(self.artifact.size)

    @property
    def truncated(self) -> bool:
        """Whether the preview is only the start (capture keeps PREVIEW_MAX_CHARS of the
        first SNIFF_BYTES)."""
        preview = self.artifact.preview_text
        return self.artifact.size > content.SNIFF_BYTES or len(preview) >= PREVIEW_MAX_CHARS


def artifact_card(
    *,
    artifact: Artifact,
    policy: ReviewPolicy,
    approvals: list[Approval],
    refusal: str | None,
) -> ArtifactCard:
    card = ArtifactCard(
        artifact=artifact,
        needed=policy.approvals_needed(artifact),
        approvals=approvals,
        refusal=refusal,
        signals=[
            {**signal, "label": signal["code"].replace("_", " ").capitalize()}
            for signal in sorted(
                artifact.signals, key=lambda s: -risk.SEVERITY_RANK.get(s.get("severity", ""), 0)
            )
        ],
        download_url=reverse("admin:artifacts_artifact_download", args=[artifact.pk]),
        change_url=reverse("admin:artifacts_artifact_change", args=[artifact.pk]),
    )
    if downloads.is_inline_image(artifact):
        card.image_url = reverse("admin:artifacts_artifact_image", args=[artifact.pk])
    elif artifact.preview_text:
        card.preview = artifact.preview_text
        if markdown.is_markdown(artifact.content_type):
            # Rendered at capture; artifacts captured before that are rendered now.
            stored = artifact.preview_html or markdown.render(artifact.preview_text)
            card.markdown = markdown.safe(stored)
    return card


def signal_badges(codes: Iterable[tuple[str, int]]) -> SafeString:
    """Signal codes with counts as small badges (the queue's column)."""
    return mark_safe(  # noqa: S308 (every part escaped by format_html)
        "".join(
            format_html(
                '<span class="airlock-signal airlock-signal-{}">{}{}</span> ',
                code,
                code.replace("_", " "),
                f" ×{count}" if count > 1 else "",
            )
            for code, count in codes
            if count
        )
    )

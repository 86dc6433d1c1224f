"""Move the first release's transition records (TransitionLog) onto the trail (Event), with the
creation of every run and artifact, in the order they happened, then drop TransitionLog.

Events written from here on get higher ids than every moved one, so the trail's cursor stays
in time order."""

from typing import Any

from django.db import migrations

BATCH = 2000
RUN = "sandboxes.sandboxrun"
ARTIFACT = "artifacts.artifact"


def _user_actor(user: Any) -> str:
    return f"user:{user.username}" if user is not None else "unknown"


def _created_events(apps: Any) -> list[tuple[Any, dict[str, Any]]]:
    SandboxRun = apps.get_model("sandboxes", "SandboxRun")
    Artifact = apps.get_model("artifacts", "Artifact")
    rows: list[tuple[Any, dict[str, Any]]] = []
    for run in SandboxRun.objects.select_related("created_by", "api_key").iterator():
        actor = (
            f"api_key:{run.api_key.prefix}" if run.api_key_id else _user_actor(run.created_by)
        )
        rows.append((run.created_at, {
            "workspace_id": run.workspace_id, "type": "run.created", "actor": actor,
            "actor_user_id": run.created_by_id, "actor_api_key_id": run.api_key_id,
            "subject_type": "run", "subject_id": str(run.pk), "run_id": run.pk,
            "thread_id": run.thread_id,
            "data": {"thread_id": run.thread_id, "prompt": run.prompt[:2000],
                     "command": run.command[:2000], "template": run.template,
                     "metadata": run.metadata, "env_names": sorted(run.env),
                     "files": sorted(run.files), "output_dir": run.output_dir,
                     "max_duration_ms": run.max_duration_ms,
                     "idle_timeout_ms": run.idle_timeout_ms, "migrated": True},
        }))  # fmt: skip
    for artifact in Artifact.objects.iterator():
        rows.append((artifact.created_at, {
            "workspace_id": artifact.workspace_id, "type": "artifact.created",
            "actor": "system:execute_run_command" if not artifact.sandbox_path else "unknown",
            "subject_type": "artifact", "subject_id": str(artifact.pk),
            "run_id": artifact.run_id, "thread_id": artifact.thread_id,
            "data": {"title": artifact.title, "type": artifact.type,
                     "sandbox_path": artifact.sandbox_path, "size": artifact.size,
                     "sha256": artifact.sha256, "migrated": True},
        }))  # fmt: skip
    return rows


def _transition_events(apps: Any) -> list[tuple[Any, dict[str, Any]]]:
    TransitionLog = apps.get_model("sandboxes", "TransitionLog")
    SandboxRun = apps.get_model("sandboxes", "SandboxRun")
    Artifact = apps.get_model("artifacts", "Artifact")
    runs = {str(pk): (ws, thread) for pk, ws, thread in
            SandboxRun.objects.values_list("pk", "workspace_id", "thread_id")}  # fmt: skip
    artifacts = {str(pk): (ws, run, thread) for pk, ws, run, thread in
                 Artifact.objects.values_list("pk", "workspace_id", "run_id", "thread_id")}  # fmt: skip
    rows: list[tuple[Any, dict[str, Any]]] = []
    for log in TransitionLog.objects.select_related("content_type").iterator():
        label = f"{log.content_type.app_label}.{log.content_type.model}"
        if label == RUN and log.object_id in runs:
            workspace_id, thread_id = runs[log.object_id]
            kind, run_id = "run", log.object_id
        elif label == ARTIFACT and log.object_id in artifacts:
            workspace_id, run_id, thread_id = artifacts[log.object_id]
            kind = "artifact"
        else:
            continue  # its object is gone: there is no workspace to file it under
        rows.append((log.timestamp, {
            "workspace_id": workspace_id, "type": f"{kind}.{log.state}", "actor": log.actor,
            "actor_user_id": log.by_id, "subject_type": kind, "subject_id": log.object_id,
            "run_id": run_id, "thread_id": thread_id,
            "data": {"transition": log.transition, "from": log.source_state, "to": log.state,
                     "migrated": True},
        }))  # fmt: skip
    return rows


def forwards(apps: Any, schema_editor: Any) -> None:
    Event = apps.get_model("workspaces", "Event")
    rows = _created_events(apps) + _transition_events(apps)
    # Creation before transitions at the same instant: a run is created, then it runs.
    rows.sort(key=lambda row: (row[0], not row[1]["type"].endswith(".created")))
    batch = [Event(created_at=when, **fields) for when, fields in rows]
    for start in range(0, len(batch), BATCH):
        Event.objects.bulk_create(batch[start : start + BATCH])


class Migration(migrations.Migration):
    dependencies = [
        ("sandboxes", "0002_command_history"),
        ("workspaces", "0002_event"),
        ("artifacts", "0001_initial"),
    ]

    operations = [
        # Not reversible: the trail holds more than TransitionLog ever did.
        migrations.RunPython(forwards, migrations.RunPython.noop, elidable=True),
        migrations.DeleteModel(name="TransitionLog"),
    ]

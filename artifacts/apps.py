from django.apps import AppConfig


class ArtifactsConfig(AppConfig):
    name = "artifacts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from artifacts import notifications
        from artifacts.capture import capture_lost_job_log
        from artifacts.storage import workspace_files_delete
        from sandboxes.execution import on_worker_lost
        from workspaces import events
        from workspaces.services import on_workspace_delete

        # A deleted workspace's stored files go once the deletion of its rows commits.
        on_workspace_delete(workspace_files_delete)
        # Reviewers are told when a run's artifacts wait (one email per run and burst).
        events.on_record(notifications.on_event)
        # A command job whose worker died keeps the output there was as its log.
        on_worker_lost(capture_lost_job_log)

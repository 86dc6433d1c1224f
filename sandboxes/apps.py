from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from sandboxes.services import workspace_runs_cancel
        from workspaces.services import on_workspace_delete

        # A deleted workspace's runs are canceled first, so no sandbox outlives it.
        on_workspace_delete(workspace_runs_cancel)

from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from sandboxes.background import run_end_commands
        from sandboxes.services import on_run_end, workspace_runs_cancel
        from workspaces.services import on_workspace_delete

        # A deleted workspace's runs are canceled first, so no sandbox outlives it.
        on_workspace_delete(workspace_runs_cancel)
        # A run's end ends its background commands, each recorded as it ended.
        on_run_end(run_end_commands)

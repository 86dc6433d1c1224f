from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from workspaces import events, keycache, webhooks

        # The webhook outbox: an event's deliveries are written in the event's transaction.
        events.on_record(webhooks.write_deliveries)
        # Authentication's cache of API keys forgets a key whenever it may stop working.
        keycache.connect()

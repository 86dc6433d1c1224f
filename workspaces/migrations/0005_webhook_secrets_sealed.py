"""Webhook signing secrets are kept sealed (workspaces.sealing) instead of in clear: the column
is renamed, widened, and every existing secret sealed under the current SECRET_KEY."""

from typing import Any

from django.db import migrations, models


def seal_existing(apps: Any, schema_editor: Any) -> None:
    from workspaces import sealing

    endpoints = apps.get_model("workspaces", "WebhookEndpoint")
    for endpoint in endpoints.objects.only("pk", "sealed_secret").iterator():
        endpoint.sealed_secret = sealing.seal(endpoint.sealed_secret)
        endpoint.save(update_fields=["sealed_secret"])


def unseal_existing(apps: Any, schema_editor: Any) -> None:
    from workspaces import sealing

    endpoints = apps.get_model("workspaces", "WebhookEndpoint")
    for endpoint in endpoints.objects.only("pk", "sealed_secret").iterator():
        endpoint.sealed_secret = sealing.unseal(endpoint.sealed_secret)
        endpoint.save(update_fields=["sealed_secret"])


class Migration(migrations.Migration):
    dependencies = [("workspaces", "0004_webhook_delivery_retried_event")]

    operations = [
        migrations.RenameField("webhookendpoint", "secret", "sealed_secret"),
        migrations.AlterField(
            model_name="webhookendpoint",
            name="sealed_secret",
            field=models.TextField(editable=False, help_text="The signing secret, sealed."),
        ),
        migrations.RunPython(seal_existing, unseal_existing, elidable=False),
    ]

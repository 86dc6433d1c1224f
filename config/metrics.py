"""`GET /metrics`: the Prometheus text format, for an operator's scraper.

Off (404) unless METRICS_TOKEN is set; then only `Authorization: Bearer <METRICS_TOKEN>` gets
an answer, every other request the same 404 as when it is off (a scanner learns nothing).

Every value is read at scrape time from what all processes share — the database and the
broker — by one custom collector, not counted in the process that serves the scrape: web,
worker and beat are separate processes (on separate machines in production), and a run boots
in a worker while any web process may be scraped. So the counters and histograms are derived
from rows every process writes: the runs (`running_at - created_at` is the boot), the command
history (`duration_ms`), the webhook outbox, and the sweep's and reconcile's own totals
(sandboxes/maintenance.py). Two scrapes of two web processes answer the same; a restart
resets nothing. The cost is a few aggregate queries per scrape, over the whole runs and
commands tables (see README, "Metrics"); deleting rows lowers the derived counters.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, QuerySet, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from kombu.exceptions import ChannelError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from artifacts.models import Artifact, ReviewState
from config.celery import app as celery_app
from sandboxes import maintenance
from sandboxes.models import ACTIVE_STATUSES, Command, CommandKind, RunStatus, SandboxRun
from workspaces.models import DeliveryStatus, WebhookDelivery

logger = logging.getLogger(__name__)

BOOT_BUCKETS_S = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
COMMAND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
BROKER_TIMEOUT_S = 2


def _bucket_label(bound: float) -> str:
    return repr(float(bound))


class AirlockCollector(Collector):
    """Everything /metrics shows, read when it is scraped."""

    def collect(self) -> Iterator[Any]:
        now = timezone.now()
        yield from self._runs(now)
        yield self._boot_latency()
        yield self._command_latency()
        yield from self._queue()
        yield from self._maintenance()
        yield from self._reviews(now)
        yield self._webhooks()

    # --- runs ---------------------------------------------------------------------------

    def _runs(self, now: Any) -> Iterator[Any]:
        runs = GaugeMetricFamily(
            "airlock_runs",
            "Runs in the database by status and end reason (end_reason is empty while active).",
            labels=["status", "end_reason"],
        )
        counted = {
            (row["status"], row["end_reason"]): row["n"]
            for row in SandboxRun.objects.order_by()
            .values("status", "end_reason")
            .annotate(n=Count("pk"))
        }
        for status in ACTIVE_STATUSES:  # always there, 0 or not, for alert rules
            counted.setdefault((str(status), ""), 0)
        for (status, end_reason), n in sorted(counted.items()):
            runs.add_metric([status, end_reason], n)
        yield runs

        oldest = SandboxRun.objects.filter(status=RunStatus.BOOTING).aggregate(
            at=Min("created_at")
        )["at"]
        yield GaugeMetricFamily(
            "airlock_run_oldest_booting_age_seconds",
            "Age of the oldest run still booting (0 when none is).",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )

    def _boot_latency(self) -> HistogramMetricFamily:
        booted = SandboxRun.objects.filter(running_at__isnull=False).annotate(
            boot=ExpressionWrapper(F("running_at") - F("created_at"), output_field=DurationField())
        )
        buckets = {
            f"le{i}": Count("pk", filter=Q(boot__lte=timedelta(seconds=bound)))
            for i, bound in enumerate(BOOT_BUCKETS_S)
        }
        row = booted.aggregate(**buckets, n=Count("pk"), total=Sum("boot"))
        family = HistogramMetricFamily(
            "airlock_run_boot_seconds",
            "From a run's creation to its sandbox running, of every run that got to run.",
        )
        total = row["total"] or timedelta(0)
        family.add_metric(
            [],
            [(_bucket_label(b), row[f"le{i}"]) for i, b in enumerate(BOOT_BUCKETS_S)]
            + [("+Inf", row["n"])],
            total.total_seconds(),
        )
        return family

    def _command_latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "airlock_command_duration_seconds",
            "Duration of finished commands by kind: exec (POST runs/{id}/exec/), background, "
            "job (a run's own command).",
            labels=["kind"],
        )
        buckets = {
            f"le{i}": Count("pk", filter=Q(duration_ms__lte=int(bound * 1000)))
            for i, bound in enumerate(COMMAND_BUCKETS_S)
        }
        rows: QuerySet[Any] = (
            Command.objects.filter(duration_ms__isnull=False)
            .order_by()
            .values("kind")
            .annotate(**buckets, n=Count("pk"), total_ms=Sum("duration_ms"))
        )
        by_kind = {row["kind"]: row for row in rows}
        for kind in CommandKind.values:
            row = by_kind.get(kind)
            family.add_metric(
                [kind],
                [(_bucket_label(b), row[f"le{i}"] if row else 0)
                 for i, b in enumerate(COMMAND_BUCKETS_S)]
                + [("+Inf", row["n"] if row else 0)],
                (row["total_ms"] or 0) / 1000 if row else 0.0,
            )  # fmt: skip
        return family

    # --- the broker ---------------------------------------------------------------------

    def _queue(self) -> Iterator[Any]:
        up = GaugeMetricFamily("airlock_broker_up", "1 when the broker answered this scrape.")
        depth = GaugeMetricFamily(
            "airlock_queue_messages",
            "Task messages waiting in the broker's queue (not yet taken by a worker).",
            labels=["queue"],
        )
        queue = celery_app.conf.task_default_queue
        try:
            with celery_app.connection_for_read(connect_timeout=BROKER_TIMEOUT_S) as conn:
                conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_S)
                channel: Any = conn.default_channel
                try:
                    _, waiting, _ = channel.queue_declare(queue=queue, passive=True)
                except ChannelError:  # Redis drops an empty queue's key: nothing waits
                    waiting = 0
        except Exception as exc:  # a broker that is down is a value, not a failed scrape
            logger.warning("metrics: broker unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        depth.add_metric([queue], waiting)
        yield up
        yield depth

    # --- the sweep and reconcile ----------------------------------------------------------

    def _maintenance(self) -> Iterator[Any]:
        totals = CounterMetricFamily(
            "airlock_maintenance",
            "What the periodic sweep and reconcile did, over every pass in every worker: "
            "passes, and each count of their reports (sweep: killed, failed, errors, reaped; "
            "reconcile: killed orphans, lost runs, errors).",
            labels=["task", "outcome"],
        )
        last = GaugeMetricFamily(
            "airlock_maintenance_last_pass_timestamp_seconds",
            "When the task's last real pass ended (Unix time).",
            labels=["task"],
        )
        rows = maintenance.totals()
        for row in rows:
            totals.add_metric([row.task, row.outcome], row.total)
            if row.outcome == "passes":
                last.add_metric([row.task], row.updated_at.timestamp())
        yield totals
        yield last

    # --- the airlock --------------------------------------------------------------------

    def _reviews(self, now: Any) -> Iterator[Any]:
        pending = Artifact.objects.filter(review_state=ReviewState.PENDING).aggregate(
            n=Count("pk"), oldest=Min("created_at")
        )
        yield GaugeMetricFamily(
            "airlock_reviews_pending", "Artifacts waiting for a decision.", value=pending["n"]
        )
        oldest = pending["oldest"]
        yield GaugeMetricFamily(
            "airlock_review_oldest_pending_age_seconds",
            "How long the longest-waiting pending artifact has waited (0 when none waits).",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )

    def _webhooks(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "airlock_webhook_deliveries",
            "Webhook deliveries in the outbox by outcome: succeeded, failed (gave up), "
            "retrying (pending after a failed attempt), pending (not attempted yet).",
            labels=["outcome"],
        )
        row = WebhookDelivery.objects.aggregate(
            succeeded=Count("pk", filter=Q(status=DeliveryStatus.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=DeliveryStatus.FAILED)),
            retrying=Count("pk", filter=Q(status=DeliveryStatus.PENDING, attempts__gt=0)),
            pending=Count("pk", filter=Q(status=DeliveryStatus.PENDING, attempts=0)),
        )
        for outcome in ("succeeded", "failed", "retrying", "pending"):
            family.add_metric([outcome], row[outcome])
        return family


registry = CollectorRegistry(auto_describe=False)
registry.register(AirlockCollector())


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@csrf_exempt  # a POST without the token is the same 404, not a CSRF 403 that gives it away
def metrics(request: HttpRequest) -> HttpResponse:
    """The scrape. Anyone without the token gets the 404 of a route that does not exist,
    whatever the method."""
    if not _authorized(request):
        raise Http404
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    # As prometheus-client's own server: OpenMetrics when the scraper asks for it (Prometheus
    # does), else the classic text format, version 0.0.4.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)

"""Webhooks (SPEC §11): a workspace's endpoints, the outbox of their deliveries, and sending.

- **Endpoints** are written by the services below (admins and owners), each write on the trail.
  The signing secret (`whsec_…`) is returned once, on create.
- **The outbox**: `events.record` calls `write_deliveries` in the event's own transaction (an
  `on_record` hook), so an event and its deliveries commit together. Once they commit, a task
  sends them; the beat task `deliver_due` sends whatever is due (retries, and deliveries whose
  sender died: a claim is a lease that runs out).
- **Sending**: every delivery of a batch at once (asyncio, httpx), each within
  WEBHOOK_TIMEOUT_S as a whole, so one slow or dead receiver neither delays the others nor
  holds a worker for longer than that. Signed per Standard Webhooks with the `standardwebhooks`
  library; redirects are not followed; anything but a 2xx is a failure, retried with
  exponential backoff for more than 24 hours. An endpoint that fails every attempt for
  WEBHOOK_DISABLE_AFTER_H is disabled, with a `webhook.disabled` event.
- **SSRF guard**: at create and again at every send, the host is resolved and every address it
  has must be public (no loopback, private, link-local — which holds the cloud metadata address
  — shared, reserved or multicast address), unless WEBHOOK_ALLOW_PRIVATE; the request then goes
  to the very address that was checked (the URL's name is kept for Host and TLS), so DNS cannot
  change between the check and the connection. `https://` only, unless WEBHOOK_ALLOW_HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from config.exceptions import Conflict, InvalidInput
from workspaces import events, sealing
from workspaces.access import Actor
from workspaces.models import (
    DeliveryStatus,
    Event,
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
    Workspace,
)

logger = logging.getLogger(__name__)

SEND_TASK = "workspaces.tasks.send_webhooks"
SYSTEM_WEBHOOKS = Actor.system("webhooks")
URL_MAX_LENGTH = 2000
DESCRIPTION_MAX_LENGTH = 500
MAX_ENDPOINTS_PER_WORKSPACE = 50
USER_AGENT = "Airlock-Webhooks/1"
ERROR_MAX_CHARS = 500
RESPONSE_PEEK_BYTES = 512

# Retries: 5 s, 15 s, 45 s, … ×3 each, at most 6 h apart; MAX_ATTEMPTS attempts span more than
# 24 hours (RETRY_SPAN_S; a test holds it to that). ±10 % jitter spreads a burst of retries.
RETRY_BASE_S = 5
RETRY_FACTOR = 3
RETRY_CAP_S = 6 * 3600
MAX_ATTEMPTS = 13
# How long a claimed attempt may take before its delivery is due again (the sender died).
LEASE_MARGIN_S = 10
DUE_BATCH = 50


def retry_delay_s(attempts: int) -> float:
    """The pause after the `attempts`-th failed attempt, without jitter."""
    return float(min(RETRY_BASE_S * RETRY_FACTOR ** (attempts - 1), RETRY_CAP_S))


RETRY_SPAN_S = sum(retry_delay_s(n) for n in range(1, MAX_ATTEMPTS))


# --- the SSRF guard --------------------------------------------------------------------


def refused_address(address: str) -> str | None:
    """Why a webhook may not be sent to this IP address, or None when it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: where the request goes and what it says it goes to."""

    url: str
    parts: SplitResult
    host: str  # as written (a name, or an IP without brackets)
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def pinned_url(self, address: str) -> str:
        """The URL with its host replaced by `address`: the connection goes there."""
        ip = ipaddress.ip_address(address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = host if self.parts.port is None else f"{host}:{self.parts.port}"
        return self.parts._replace(netloc=netloc).geturl()

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.parts.port is None else f"{host}:{self.parts.port}"


def parse_url(url: str) -> Target:
    """The URL's shape: http(s), a host, no credentials, no fragment (400 otherwise)."""
    url = (url or "").strip()
    if not url or len(url) > URL_MAX_LENGTH or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput(f"url: an absolute URL of at most {URL_MAX_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url: {exc}.", code="invalid_url") from exc
    allowed = ("https", "http") if settings.WEBHOOK_ALLOW_HTTP else ("https",)
    if parts.scheme not in allowed:
        raise InvalidInput(
            "url: must be https://" + (" or http://." if settings.WEBHOOK_ALLOW_HTTP else "."),
            code="invalid_url",
        )
    if not parts.hostname:
        raise InvalidInput("url: has no host.", code="invalid_url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("url: must not hold credentials; deliveries are signed.")
    if parts.fragment:
        raise InvalidInput("url: must not have a #fragment.", code="invalid_url")
    default_port = 443 if parts.scheme == "https" else 80
    return Target(url=url, parts=parts, host=parts.hostname, port=port or default_port)


def _checked(target: Target, addresses: Iterable[str]) -> str:
    """The address to connect to: the first one, once every address the host has passes."""
    found = list(dict.fromkeys(addresses))
    if not found:
        raise InvalidInput(f"url: {target.host} does not resolve.", code="webhook_target")
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        for address in found:
            reason = refused_address(address)
            if reason is not None:
                raise InvalidInput(
                    f"url: {target.host} resolves to {address}, {reason}; webhooks go to "
                    "public addresses only (WEBHOOK_ALLOW_PRIVATE=true allows others).",
                    code="webhook_target",
                )
    return found[0]


def _addresses(infos: Iterable[Any]) -> list[str]:
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def check_url(url: str) -> Target:
    """The URL as an endpoint may have it: its shape, and where its host resolves now."""
    target = parse_url(url)
    if target.is_ip:
        _checked(target, [target.host])
        return target
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        if settings.WEBHOOK_ALLOW_PRIVATE:
            return target  # nothing to guard; it may resolve by the time it is used
        raise InvalidInput(
            f"url: {target.host} does not resolve ({exc}).", code="webhook_target"
        ) from exc
    _checked(target, _addresses(infos))
    return target


async def _resolve(target: Target) -> str:
    """The checked address to send to (the SSRF guard at send)."""
    if target.is_ip:
        return _checked(target, [target.host])
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidInput(f"{target.host} does not resolve ({exc})", code="dns") from exc
    return _checked(target, _addresses(infos))


# --- endpoints (services) --------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def clean_event_types(event_types: Sequence[str] | None) -> list[str]:
    chosen = list(dict.fromkeys(event_types or []))
    unknown = sorted(set(chosen) - set(EventType.values))
    if unknown:
        raise InvalidInput(f"event_types: unknown {', '.join(unknown)}.", code="invalid_choice")
    return chosen


def _clean_description(description: str | None) -> str:
    text = (description or "").strip()
    if len(text) > DESCRIPTION_MAX_LENGTH or "\x00" in text:
        raise InvalidInput(f"description: at most {DESCRIPTION_MAX_LENGTH} characters, no NUL.")
    return text


def _endpoint_data(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What the trail says about an endpoint: never its secret."""
    return {
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "description": endpoint.description,
        "active": endpoint.active,
    }


def webhook_create(
    *,
    workspace: Workspace,
    actor: Actor,
    url: str,
    event_types: Sequence[str] | None = None,
    description: str = "",
    active: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (returned this once)."""
    target = check_url(url)  # outside the transaction: it resolves the host
    chosen = clean_event_types(event_types)
    text = _clean_description(description)
    with transaction.atomic():
        Workspace.objects.select_for_update().filter(pk=workspace.pk).first()
        if WebhookEndpoint.objects.filter(workspace=workspace).count() >= (
            MAX_ENDPOINTS_PER_WORKSPACE
        ):
            raise Conflict(
                f"A workspace has at most {MAX_ENDPOINTS_PER_WORKSPACE} webhook endpoints.",
                code="too_many_webhooks",
            )
        secret = new_secret()
        endpoint = WebhookEndpoint.objects.create(
            workspace=workspace,
            url=target.url,
            event_types=chosen,
            description=text,
            active=active,
            sealed_secret=sealing.seal(secret),
            created_by=actor.user,
        )
        events.record(
            actor=actor,
            type=EventType.WEBHOOK_CREATED,
            subject=endpoint,
            data=_endpoint_data(endpoint),
        )
    return endpoint, secret


_UNSET: Any = object()


def webhook_update(
    *,
    endpoint: WebhookEndpoint,
    actor: Actor,
    url: str = _UNSET,
    event_types: Sequence[str] = _UNSET,
    description: str = _UNSET,
    active: bool = _UNSET,
) -> WebhookEndpoint:
    """Change what is given. Re-activating an endpoint forgets its failures."""
    changes: dict[str, Any] = {}
    if url is not _UNSET:
        changes["url"] = check_url(url).url
    if event_types is not _UNSET:
        changes["event_types"] = clean_event_types(event_types)
    if description is not _UNSET:
        changes["description"] = _clean_description(description)
    if active is not _UNSET:
        changes["active"] = bool(active)
    with transaction.atomic():
        current = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        before = _endpoint_data(current)
        changed = {k: v for k, v in changes.items() if getattr(current, k) != v}
        if changed.get("active"):
            changed.update(failing_since=None, disabled_at=None)
        if changed:
            for name, value in changed.items():
                setattr(current, name, value)
            current.updated_at = timezone.now()
            current.save(update_fields=[*changed, "updated_at"])
            events.record(
                actor=actor,
                type=EventType.WEBHOOK_UPDATED,
                subject=current,
                data={
                    **_endpoint_data(current),
                    "changed": {k: before[k] for k in changed if k in before},
                },
            )
    return current


def webhook_delete(*, endpoint: WebhookEndpoint, actor: Actor) -> None:
    """The endpoint and its delivery log go; the trail keeps that it existed."""
    with transaction.atomic():
        events.record(
            actor=actor,
            type=EventType.WEBHOOK_DELETED,
            subject=endpoint,
            data=_endpoint_data(endpoint),
        )
        endpoint.delete()


def webhook_test(*, endpoint: WebhookEndpoint, actor: Actor) -> WebhookDelivery:
    """Send a `webhook.test` event to this endpoint (only), whatever it subscribes to."""
    if not endpoint.active:
        raise Conflict("The endpoint is disabled; activate it first.", code="webhook_disabled")
    with transaction.atomic():
        event = events.record(
            actor=actor,
            type=EventType.WEBHOOK_TEST,
            subject=endpoint,
            data={"url": endpoint.url},
        )
        delivery = WebhookDelivery.objects.filter(event_id=event.pk, endpoint=endpoint).first()
    if delivery is None:  # disabled between the check and the event
        raise Conflict("The endpoint is disabled; activate it first.", code="webhook_disabled")
    return delivery


def delivery_retry(*, delivery: WebhookDelivery, actor: Actor) -> WebhookDelivery:
    """Try this delivery again now, whatever became of it (one more attempt past a give-up)."""
    if not delivery.endpoint.active:
        raise Conflict("The endpoint is disabled; activate it first.", code="webhook_disabled")
    now = timezone.now()
    with transaction.atomic():
        events.record(
            actor=actor,
            type=EventType.WEBHOOK_DELIVERY_RETRIED,
            subject=delivery.endpoint,
            data={
                "delivery_id": str(delivery.pk),
                "event_id": delivery.event_id,
                "event_type": delivery.event_type,
                "previous_status": delivery.status,
                "attempts": delivery.attempts,
            },
        )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.PENDING, next_attempt_at=now
        )
        transaction.on_commit(lambda: _enqueue([delivery.pk]), robust=True)
    delivery.refresh_from_db()
    return delivery


# --- the outbox ------------------------------------------------------------------------


def write_deliveries(event: Event) -> None:
    """The `on_record` hook: one pending delivery per active endpoint that wants the event,
    written in the event's transaction, sent once it commits. A `webhook.test` goes to its
    own endpoint only; other events about an endpoint go to the others."""
    if event.type == EventType.WEBHOOK_TEST:
        endpoints = list(WebhookEndpoint.objects.filter(pk=event.subject_id, active=True))
    else:
        candidates = WebhookEndpoint.objects.filter(workspace_id=event.workspace_id, active=True)
        if event.subject_type == "webhook":
            candidates = candidates.exclude(pk=event.subject_id)
        endpoints = [e for e in candidates if e.wants(event.type)]
    if not endpoints:
        return
    now = timezone.now()
    rows = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            endpoint=endpoint,
            workspace_id=event.workspace_id,
            event=event,
            event_type=event.type,
            next_attempt_at=now,
            created_at=now,
        )
        for endpoint in endpoints
    )
    ids = [row.pk for row in rows]
    # robust: a broker that is down must not fail the write; deliver_due sends them later.
    transaction.on_commit(lambda: _enqueue(ids), robust=True)


def _enqueue(ids: list[uuid.UUID]) -> None:
    current_app.send_task(SEND_TASK, args=[[str(i) for i in ids]])


# --- delivery --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery, ready to send without the database."""

    delivery_id: uuid.UUID
    url: str
    secret: str
    message_id: str
    body: str


@dataclass(frozen=True)
class Outcome:
    delivery_id: uuid.UUID
    ok: bool
    response_code: int | None = None
    error: str = ""


def payload(event: Event) -> str:
    """The body: `{type, timestamp, data}`, `data` being the event as the API shows it."""
    body = {"type": event.type, "timestamp": events.as_json(event)["created_at"]}
    body["data"] = events.as_json(event)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _lease() -> timedelta:
    return timedelta(seconds=settings.WEBHOOK_TIMEOUT_S + LEASE_MARGIN_S)


def claim(delivery_id: uuid.UUID | str, now: datetime) -> WebhookDelivery | None:
    """Take a due delivery for one attempt (None when another sender has it, or it is not
    due): its next attempt moves past the lease, so a sender that dies leaves it due again."""
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + _lease(), attempts=F("attempts") + 1, last_attempt_at=now)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()


def _attempt(delivery: WebhookDelivery, event: Event | None) -> Attempt | Outcome:
    if event is None:
        return Outcome(delivery.pk, ok=False, error="the event is gone")
    if not delivery.endpoint.active:
        return Outcome(delivery.pk, ok=False, error="the endpoint is disabled")
    try:
        secret = delivery.endpoint.secret
    except sealing.Unsealable as error:
        return Outcome(delivery.pk, ok=False, error=str(error))
    return Attempt(
        delivery_id=delivery.pk,
        url=delivery.endpoint.url,
        secret=secret,
        message_id=f"msg_{delivery.pk.hex}",
        body=payload(event),
    )


def deliver(delivery_ids: Iterable[uuid.UUID | str]) -> list[Outcome]:
    """Claim these deliveries, send them all at once, and record how each went."""
    now = timezone.now()
    claimed = [d for d in (claim(i, now) for i in dict.fromkeys(delivery_ids)) if d is not None]
    if not claimed:
        return []
    by_id = Event.objects.in_bulk([d.event_id for d in claimed])
    prepared = [_attempt(d, by_id.get(d.event_id)) for d in claimed]
    attempts = [p for p in prepared if isinstance(p, Attempt)]
    outcomes = [p for p in prepared if isinstance(p, Outcome)]
    if attempts:
        outcomes += asyncio.run(send_all(attempts, timeout_s=settings.WEBHOOK_TIMEOUT_S))
    deliveries = {d.pk: d for d in claimed}
    for outcome in outcomes:
        record_outcome(deliveries[outcome.delivery_id], outcome)
    return outcomes


def due_ids(now: datetime, limit: int = DUE_BATCH) -> list[uuid.UUID]:
    return list(
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def deliver_due(*, budget_s: float = 40.0) -> dict[str, int]:
    """The beat task: send what is due (retries, orphans of dead senders), batch after batch
    until nothing is due or the time budget is spent."""
    started = timezone.now()
    sent = failed = 0
    while (timezone.now() - started).total_seconds() < budget_s:
        ids = due_ids(timezone.now())
        if not ids:
            break
        outcomes = deliver(ids)
        if not outcomes:
            break  # all taken by other senders meanwhile
        sent += sum(o.ok for o in outcomes)
        failed += sum(not o.ok for o in outcomes)
    return {"sent": sent, "failed": failed}


def record_outcome(delivery: WebhookDelivery, outcome: Outcome) -> None:
    """Write how an attempt went: delivered, due again after a backoff, or given up; and
    the endpoint's failing streak, which disables it past WEBHOOK_DISABLE_AFTER_H."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "response_code": outcome.response_code,
        "last_error": outcome.error[:ERROR_MAX_CHARS],
    }
    if outcome.ok:
        fields.update(status=DeliveryStatus.SUCCEEDED, next_attempt_at=None, delivered_at=now)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
        WebhookEndpoint.objects.filter(pk=delivery.endpoint_id, failing_since__isnull=False).update(
            failing_since=None
        )
        return
    if delivery.attempts >= MAX_ATTEMPTS or not delivery.endpoint.active:
        fields.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    else:
        pause = retry_delay_s(delivery.attempts) * random.uniform(1.0, 1.1)  # noqa: S311
        fields.update(next_attempt_at=now + timedelta(seconds=pause))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    WebhookEndpoint.objects.filter(pk=delivery.endpoint_id, failing_since__isnull=True).update(
        failing_since=delivery.last_attempt_at or now
    )
    _disable_if_failing_too_long(delivery.endpoint_id, last_error=outcome.error, now=now)


def _disable_if_failing_too_long(endpoint_id: uuid.UUID, *, last_error: str, now: datetime) -> None:
    window = timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_H)
    with transaction.atomic():
        endpoint = (
            WebhookEndpoint.objects.select_for_update()
            .filter(pk=endpoint_id, active=True, failing_since__lte=now - window)
            .first()
        )
        if endpoint is None:
            return
        endpoint.active = False
        endpoint.disabled_at = now
        endpoint.save(update_fields=["active", "disabled_at"])
        given_up = WebhookDelivery.objects.filter(
            endpoint=endpoint, status=DeliveryStatus.PENDING
        ).update(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error="endpoint disabled")
        assert endpoint.failing_since is not None
        events.record(
            actor=SYSTEM_WEBHOOKS,
            type=EventType.WEBHOOK_DISABLED,
            subject=endpoint,
            data={
                **_endpoint_data(endpoint),
                "failing_since": events.as_iso(endpoint.failing_since),
                "last_error": last_error[:ERROR_MAX_CHARS],
                "deliveries_given_up": given_up,
            },
        )
    logger.warning("webhook endpoint %s disabled: failing since %s", endpoint_id, now - window)


# --- sending (no database) -------------------------------------------------------------


@cache
def _tls() -> ssl.SSLContext:
    # The system's trust store (SSL_CERT_FILE/SSL_CERT_DIR honoured), made once per process.
    return ssl.create_default_context()


def signed_headers(attempt: Attempt, when: datetime) -> dict[str, str]:
    signature = Webhook(attempt.secret).sign(attempt.message_id, when, attempt.body)
    return {
        "webhook-id": attempt.message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


async def send_all(attempts: Sequence[Attempt], *, timeout_s: float) -> list[Outcome]:
    """Every attempt at once; none takes longer than `timeout_s`, connection included."""
    return list(await asyncio.gather(*(send_one(a, timeout_s=timeout_s) for a in attempts)))


async def send_one(attempt: Attempt, *, timeout_s: float) -> Outcome:
    try:
        async with asyncio.timeout(timeout_s):
            return await _post(attempt, timeout_s)
    except TimeoutError:
        return Outcome(attempt.delivery_id, ok=False, error=f"timed out after {timeout_s:g} s")
    except InvalidInput as exc:  # the SSRF guard, at send
        return Outcome(attempt.delivery_id, ok=False, error=f"refused: {exc.detail}")
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return Outcome(attempt.delivery_id, ok=False, error=f"{type(exc).__name__}: {exc}")


async def _post(attempt: Attempt, timeout_s: float) -> Outcome:
    target = parse_url(attempt.url)
    address = await _resolve(target)
    headers = {**signed_headers(attempt, timezone.now()), "host": target.host_header}
    extensions = {"sni_hostname": target.host} if target.parts.scheme == "https" else {}
    # One client per attempt: a pooled connection made for one host name must never carry
    # another's request, even on the same address.
    async with httpx.AsyncClient(
        verify=_tls(), timeout=timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        request = client.build_request(
            "POST",
            target.pinned_url(address),
            content=attempt.body.encode(),
            headers=headers,
            extensions=extensions,
        )
        response = await client.send(request, stream=True)
        try:
            peek = b""
            async for chunk in response.aiter_bytes():
                peek += chunk
                if len(peek) >= RESPONSE_PEEK_BYTES:
                    break
        finally:
            await response.aclose()
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(attempt.delivery_id, ok=True, response_code=code)
    text = peek[:RESPONSE_PEEK_BYTES].decode("utf-8", "replace").strip()
    return Outcome(
        attempt.delivery_id, ok=False, response_code=code, error=f"HTTP {code}: {text}".strip()
    )

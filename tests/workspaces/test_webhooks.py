"""workspaces/webhooks.py: endpoints, the outbox written with each event, and sending to real
HTTP receivers on loopback (tests/fakes/receiver.py), verified with `standardwebhooks`."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.utils import timezone

from config.exceptions import Conflict, InvalidInput
from tests.fakes.receiver import HANG
from workspaces import events, services, webhooks
from workspaces.access import Actor
from workspaces.models import (
    DeliveryStatus,
    Event,
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
)


@pytest.fixture
def loopback(settings: Any) -> Any:
    """Receivers here are http:// on 127.0.0.1: allowed, as WEBHOOK_ALLOW_* allow them."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_TIMEOUT_S = 2
    return settings


def endpoint_for(workspace: Any, receiver: Any, **fields: Any) -> tuple[WebhookEndpoint, str]:
    return webhooks.webhook_create(
        workspace=workspace, actor=Actor(user=workspace.owner), url=receiver.url, **fields
    )


def rename(workspace: Any, name: str) -> Event:
    services.workspace_rename(workspace=workspace, name=name, actor=Actor(user=workspace.owner))
    return Event.objects.filter(type=EventType.WORKSPACE_RENAMED).latest("id")


def deliveries_of(event: Event) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(event_id=event.pk).order_by("created_at"))


def state(delivery: WebhookDelivery) -> tuple[str, int]:
    delivery.refresh_from_db()
    return delivery.status, delivery.attempts


# --- signing and the body ------------------------------------------------------------


def test_a_delivery_is_signed_per_standard_webhooks(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    receiver = receivers()
    _, secret = endpoint_for(workspace, receiver)
    event = rename(workspace, "Renamed")
    [delivery] = deliveries_of(event)

    webhooks.deliver([delivery.pk])

    [request] = receiver.requests
    body = request.verified(secret)  # the library's own check: signature, id, timestamp
    assert body["type"] == "workspace.renamed"
    assert body["data"] == events.as_json(event)
    assert body["data"]["data"] == {"from": "Lab", "to": "Renamed"}
    assert request.headers["webhook-id"] == f"msg_{delivery.pk.hex}"
    assert secret.startswith("whsec_")
    assert state(delivery) == (DeliveryStatus.SUCCEEDED, 1)
    delivery.refresh_from_db()
    assert (delivery.response_code, delivery.next_attempt_at) == (200, None)


def test_a_body_signed_with_another_secret_does_not_verify(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    from standardwebhooks.webhooks import WebhookVerificationError

    receiver = receivers()
    endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    webhooks.deliver([delivery.pk])
    with pytest.raises(WebhookVerificationError):
        receiver.requests[0].verified(webhooks.new_secret())


# --- the secret at rest ----------------------------------------------------------------


def test_the_secret_is_sealed_in_the_database(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    endpoint, secret = endpoint_for(workspace, receivers())
    stored = WebhookEndpoint.objects.values_list("sealed_secret", flat=True).get(pk=endpoint.pk)
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).secret == secret


def test_a_rotated_secret_key_still_signs_with_the_old_key_as_a_fallback(
    loopback: Any, receivers: Any, workspace: Any, settings: Any
) -> None:
    receiver = receivers(200, 500)
    _, secret = endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-key-" + "x" * 50

    [outcome] = webhooks.deliver([delivery.pk])
    assert outcome.ok
    receiver.requests[0].verified(secret)

    settings.SECRET_KEY_FALLBACKS = []  # the old key lost: the delivery fails, and says why
    [second] = deliveries_of(rename(workspace, "Again"))
    [lost] = webhooks.deliver([second.pk])
    assert not lost.ok and "SECRET_KEY_FALLBACKS" in lost.error
    assert len(receiver.requests) == 1


# --- the outbox ------------------------------------------------------------------------


def test_an_event_and_its_deliveries_commit_together(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    endpoint_for(workspace, receivers())
    written = []

    def failing_write() -> None:
        with transaction.atomic():
            events.record(actor=Actor.system("test"), type="workspace.renamed", subject=workspace)
            written.append(WebhookDelivery.objects.count())  # written with the event…
            raise RuntimeError("the write fails")

    with pytest.raises(RuntimeError):
        failing_write()
    assert written == [1]
    assert WebhookDelivery.objects.count() == 0  # …and gone with it


def test_deliveries_go_to_active_endpoints_that_want_the_event(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    everything, _ = endpoint_for(workspace, receivers())
    renames, _ = endpoint_for(workspace, receivers(), event_types=["workspace.renamed"])
    endpoint_for(workspace, receivers(), event_types=["artifact.approved"])
    endpoint_for(workspace, receivers(), active=False)
    event = rename(workspace, "Renamed")
    assert {d.endpoint_id for d in deliveries_of(event)} == {everything.pk, renames.pk}


def test_a_test_event_goes_to_its_endpoint_only(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    tested, _ = endpoint_for(workspace, receivers(), event_types=["artifact.approved"])
    endpoint_for(workspace, receivers())
    delivery = webhooks.webhook_test(endpoint=tested, actor=Actor(user=workspace.owner))
    assert [d.endpoint_id for d in deliveries_of(delivery.event)] == [tested.pk]
    assert delivery.event_type == "webhook.test"


# --- retries, timeouts, a dead receiver ---------------------------------------------


def test_retries_after_a_500_and_a_timeout_then_succeeds(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    receiver = receivers(500, HANG, 200)
    _, secret = endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))

    with time_machine.travel(timezone.now(), tick=True) as clock:
        [first] = webhooks.deliver([delivery.pk])
        assert (first.ok, first.response_code) == (False, 500)
        assert state(delivery) == (DeliveryStatus.PENDING, 1)
        assert webhooks.deliver_due() == {"sent": 0, "failed": 0}  # not due yet

        clock.shift(timedelta(seconds=webhooks.retry_delay_s(1) * 1.2))
        assert webhooks.deliver_due() == {"sent": 0, "failed": 1}
        delivery.refresh_from_db()
        assert delivery.last_error.startswith("timed out after 2 s")

        clock.shift(timedelta(seconds=webhooks.retry_delay_s(2) * 1.2))
        assert webhooks.deliver_due() == {"sent": 1, "failed": 0}
    assert state(delivery) == (DeliveryStatus.SUCCEEDED, 3)
    # One message, three attempts: the same webhook-id each time, each signed afresh.
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    for request in receiver.requests:
        request.verified(secret)


def test_retries_back_off_exponentially_for_more_than_a_day() -> None:
    delays = [webhooks.retry_delay_s(n) for n in range(1, webhooks.MAX_ATTEMPTS)]
    assert delays[:3] == [5, 15, 45]
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert sum(delays) == webhooks.RETRY_SPAN_S >= 24 * 3600


def test_a_delivery_gives_up_after_its_last_attempt(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    receiver = receivers(*[503] * webhooks.MAX_ATTEMPTS)
    endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=webhooks.MAX_ATTEMPTS - 1)
    webhooks.deliver([delivery.pk])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at) == (DeliveryStatus.FAILED, None)


@pytest.mark.django_db(transaction=True)  # the sender is another thread, with its connection
def test_a_receiver_that_never_answers_does_not_delay_other_endpoints(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    dead, alive = receivers(HANG), receivers()
    endpoint_for(workspace, dead)
    endpoint_for(workspace, alive)
    ids = [d.pk for d in deliveries_of(rename(workspace, "Renamed"))]
    outcomes: list[Any] = []

    def send() -> None:
        try:
            outcomes.extend(webhooks.deliver(ids))
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert dead.wait_for(1)
        # The dead receiver holds its request, unanswered; the other one is served meanwhile.
        assert alive.wait_for(1)
        assert sender.is_alive()
    finally:
        sender.join(30)
    by_ok = sorted(outcomes, key=lambda o: o.ok)
    assert [o.ok for o in by_ok] == [False, True]
    assert by_ok[0].error == "timed out after 2 s"  # the attempt ended at its timeout


def test_a_redirect_is_not_followed(loopback: Any, receivers: Any, workspace: Any) -> None:
    receiver = receivers(307)
    endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    [outcome] = webhooks.deliver([delivery.pk])
    assert (outcome.ok, outcome.response_code, len(receiver.requests)) == (False, 307, 1)


def test_a_claimed_delivery_is_not_sent_twice(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    receiver = receivers()
    endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    assert webhooks.claim(delivery.pk, timezone.now()) is not None
    assert webhooks.deliver([delivery.pk]) == []  # another sender holds it
    assert receiver.requests == []


def test_a_delivery_whose_sender_died_is_due_again_once_its_lease_ends(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    receiver = receivers()
    endpoint_for(workspace, receiver)
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    with time_machine.travel(timezone.now(), tick=True) as clock:
        webhooks.claim(delivery.pk, timezone.now())  # … and the sender is killed here
        assert webhooks.deliver_due() == {"sent": 0, "failed": 0}
        clock.shift(webhooks._lease() + timedelta(seconds=1))
        assert webhooks.deliver_due() == {"sent": 1, "failed": 0}
    assert state(delivery) == (DeliveryStatus.SUCCEEDED, 2)


# --- disabled after the window ---------------------------------------------------------


def test_an_endpoint_failing_for_the_whole_window_is_disabled(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    failing, healthy = receivers(*[500] * 10), receivers()
    endpoint, _ = endpoint_for(workspace, failing)
    endpoint_for(workspace, healthy, event_types=["webhook.disabled"])
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        first = deliveries_of(rename(workspace, "One"))
        webhooks.deliver([d.pk for d in first if d.endpoint_id == endpoint.pk])
    endpoint.refresh_from_db()
    assert endpoint.failing_since == start

    with time_machine.travel(start + timedelta(hours=119), tick=False):
        webhooks.deliver([d.pk for d in deliveries_of(rename(workspace, "Two"))])
    endpoint.refresh_from_db()
    assert endpoint.active

    with time_machine.travel(start + timedelta(hours=120, minutes=1), tick=False):
        webhooks.deliver([d.pk for d in deliveries_of(rename(workspace, "Three"))])
    endpoint.refresh_from_db()
    assert (endpoint.active, endpoint.disabled_at is not None) == (False, True)
    disabled = Event.objects.get(type=EventType.WEBHOOK_DISABLED)
    assert (disabled.actor, disabled.subject_id) == ("system:webhooks", str(endpoint.pk))
    assert disabled.data["failing_since"] == events.as_iso(start)
    assert "secret" not in str(disabled.data) and endpoint.secret not in str(disabled.data)
    # Nothing is pending for it any more, and the other endpoint is told.
    assert not WebhookDelivery.objects.filter(endpoint=endpoint, status="pending").exists()
    assert [d.endpoint_id for d in deliveries_of(disabled)] != [endpoint.pk]
    assert len(deliveries_of(disabled)) == 1


def test_a_success_ends_the_failing_streak(loopback: Any, receivers: Any, workspace: Any) -> None:
    receiver = receivers(500, 200)
    endpoint, _ = endpoint_for(workspace, receiver)
    webhooks.deliver([d.pk for d in deliveries_of(rename(workspace, "One"))])
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None
    webhooks.deliver([d.pk for d in deliveries_of(rename(workspace, "Two"))])
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None


def test_reactivating_an_endpoint_forgets_its_failures(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    endpoint, _ = endpoint_for(workspace, receivers())
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        active=False, disabled_at=timezone.now(), failing_since=timezone.now()
    )
    endpoint.refresh_from_db()
    updated = webhooks.webhook_update(
        endpoint=endpoint, actor=Actor(user=workspace.owner), active=True
    )
    assert (updated.active, updated.failing_since, updated.disabled_at) == (True, None, None)
    assert Event.objects.filter(type="webhook.updated").latest("id").data["changed"] == {
        "active": False
    }


def test_testing_or_retrying_a_disabled_endpoint_is_a_conflict(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    endpoint, _ = endpoint_for(workspace, receivers())
    [delivery] = deliveries_of(rename(workspace, "One"))
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=False)
    endpoint.refresh_from_db()
    delivery.refresh_from_db()
    owner = Actor(user=workspace.owner)
    with pytest.raises(Conflict):
        webhooks.webhook_test(endpoint=endpoint, actor=owner)
    with pytest.raises(Conflict):
        webhooks.delivery_retry(delivery=delivery, actor=owner)


# --- the SSRF guard --------------------------------------------------------------------

REFUSED = [
    "https://127.0.0.1/hook",
    "https://10.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://localhost/hook",  # a name that resolves to loopback
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://192.168.1.10/hook",
    "https://100.64.0.1/hook",  # shared address space
    "https://0.0.0.0/hook",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_targets_are_refused_at_create(settings: Any, workspace: Any, url: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(InvalidInput) as refused:
        webhooks.webhook_create(workspace=workspace, actor=Actor(user=workspace.owner), url=url)
    assert refused.value.code == "webhook_target"
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_targets_are_refused_at_send(
    loopback: Any, receivers: Any, workspace: Any, host: str
) -> None:
    receiver = receivers()
    webhooks.webhook_create(
        workspace=workspace,
        actor=Actor(user=workspace.owner),
        url=receiver.url.replace("127.0.0.1", host),
    )
    [delivery] = deliveries_of(rename(workspace, "Renamed"))
    loopback.WEBHOOK_ALLOW_PRIVATE = False  # as if the name now resolved somewhere private

    [outcome] = webhooks.deliver([delivery.pk])

    assert not outcome.ok and outcome.error.startswith("refused: url: ")
    assert "loopback" in outcome.error
    assert receiver.requests == []  # nothing left the process
    assert state(delivery) == (DeliveryStatus.PENDING, 1)


def test_the_request_goes_to_the_address_checked_with_the_urls_host(
    loopback: Any, receivers: Any, workspace: Any
) -> None:
    receiver = receivers()
    webhooks.webhook_create(
        workspace=workspace,
        actor=Actor(user=workspace.owner),
        url=receiver.url.replace("127.0.0.1", "localhost"),
    )
    webhooks.deliver([d.pk for d in deliveries_of(rename(workspace, "Renamed"))])
    assert receiver.requests[0].headers["host"] == f"localhost:{receiver.port}"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/hook", "https://"),
        ("ftp://example.com/hook", "https://"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https:///nohost", "no host"),
        ("https://example.com/hook#frag", "fragment"),
        ("not a url", "absolute URL"),
    ],
)
def test_badly_formed_urls_are_refused(settings: Any, workspace: Any, url: str, why: str) -> None:
    settings.WEBHOOK_ALLOW_HTTP = False
    with pytest.raises(InvalidInput) as refused:
        webhooks.parse_url(url)
    assert why in refused.value.detail


def test_public_addresses_pass_the_guard() -> None:
    assert webhooks.refused_address("93.184.215.14") is None
    assert webhooks.refused_address("2606:4700::1111") is None
    assert webhooks.refused_address("169.254.169.254") is not None


def test_the_trail_never_holds_the_secret(loopback: Any, receivers: Any, workspace: Any) -> None:
    endpoint, secret = endpoint_for(workspace, receivers(), description="CI")
    webhooks.webhook_update(endpoint=endpoint, actor=Actor(user=workspace.owner), url=endpoint.url)
    webhooks.webhook_delete(endpoint=endpoint, actor=Actor(user=workspace.owner))
    trail = [str(e.data) for e in Event.objects.filter(subject_type="webhook")]
    assert [e.type for e in Event.objects.filter(subject_type="webhook")] == [
        "webhook.created",
        "webhook.deleted",
    ]
    assert all(secret not in text and secret[6:] not in text for text in trail)

"""workspaces/admin.py with Django's test client: scoping of staff users, API keys whose secret
is shown once, the revoke action, the read-only members inline."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tests.conftest import messages_of
from tests.factories import make_api_key, make_workspace
from workspaces import services
from workspaces.access import Actor
from workspaces.models import ApiKey, Membership, Role, Workspace

User = get_user_model()

WORKSPACES = "/admin/workspaces/workspace/"
KEYS = "/admin/workspaces/apikey/"
NO_INLINE_FORMS = {
    "memberships-TOTAL_FORMS": "0",
    "memberships-INITIAL_FORMS": "0",
    "memberships-MIN_NUM_FORMS": "0",
    "memberships-MAX_NUM_FORMS": "1000",
}


def _person(username: str, **flags: Any) -> Any:
    return User.objects.create_user(username, f"{username}@example.com", "pw", **flags)


@pytest.fixture
def staff(db: Any) -> Any:
    """Sam: staff, not a superuser; admin of Alpha, plain member of Beta, outsider to Gamma."""
    return _person("sam", is_staff=True)


@pytest.fixture
def spaces(owner: Any, staff: Any) -> dict[str, Workspace]:
    return {
        "alpha": make_workspace(owner=owner, name="Alpha", members={staff: "admin"}),
        "beta": make_workspace(owner=owner, name="Beta", members={staff: "member"}),
        "gamma": make_workspace(owner=owner, name="Gamma"),
    }


@pytest.fixture
def keys(spaces: dict[str, Workspace]) -> dict[str, ApiKey]:
    return {
        name: make_api_key(workspace=workspace, name=f"{name}-key")[0]
        for name, workspace in spaces.items()
    }


def _changelist_names(response: Any) -> set[str]:
    assert response.status_code == 200
    return {str(obj) for obj in response.context["cl"].result_list}


# --- Scoping ---------------------------------------------------------------------------------


def test_a_superuser_sees_every_workspace(
    client: Any, superuser: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(superuser)
    assert _changelist_names(client.get(WORKSPACES)) == {"Alpha", "Beta", "Gamma"}


def test_a_superuser_sees_every_api_key(
    client: Any, superuser: Any, keys: dict[str, ApiKey]
) -> None:
    client.force_login(superuser)
    names = {key.name for key in client.get(KEYS).context["cl"].result_list}
    assert names == {"alpha-key", "beta-key", "gamma-key"}


def test_a_staff_user_sees_only_workspaces_they_administer(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(staff)
    assert _changelist_names(client.get(WORKSPACES)) == {"Alpha"}


def test_a_staff_user_sees_only_api_keys_of_workspaces_they_administer(
    client: Any, staff: Any, keys: dict[str, ApiKey]
) -> None:
    client.force_login(staff)
    response = client.get(KEYS)
    assert response.status_code == 200
    assert {key.name for key in response.context["cl"].result_list} == {"alpha-key"}


@pytest.mark.parametrize("name", ["beta", "gamma"])
def test_a_staff_user_cannot_open_a_workspace_they_do_not_administer(
    client: Any, staff: Any, spaces: dict[str, Workspace], name: str
) -> None:
    client.force_login(staff)
    workspace = spaces[name]
    for url in (
        f"{WORKSPACES}{workspace.pk}/change/",
        f"{WORKSPACES}{workspace.pk}/delete/",
        f"{WORKSPACES}{workspace.pk}/history/",
    ):
        response = client.get(url)
        assert response.status_code in (302, 403, 404)
        assert workspace.name not in response.content.decode()


def test_a_staff_user_cannot_open_a_key_of_a_workspace_they_do_not_administer(
    client: Any, staff: Any, keys: dict[str, ApiKey]
) -> None:
    client.force_login(staff)
    response = client.get(f"{KEYS}{keys['beta'].pk}/change/")
    assert response.status_code in (302, 404)
    assert "beta-key" not in response.content.decode()


def test_the_api_key_add_form_offers_only_administered_workspaces(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(staff)
    response = client.get(f"{KEYS}add/")
    assert response.status_code == 200
    offered = response.context["adminform"].form.fields["workspace"].queryset
    assert list(offered) == [spaces["alpha"]]


def test_a_staff_user_cannot_create_a_key_in_a_workspace_they_do_not_administer(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(staff)
    response = client.post(
        f"{KEYS}add/", {"workspace": spaces["beta"].pk, "name": "sneaky", "role": "admin"}
    )
    assert response.status_code == 200  # the form again, with an error
    assert "workspace" in response.context["adminform"].form.errors
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_a_non_staff_user_is_kept_out_of_the_admin(
    client: Any, owner: Any, spaces: dict[str, Workspace]
) -> None:
    person = _person("plain")
    services.membership_add(
        workspace=spaces["alpha"], user=person, role="admin", actor=Actor(user=owner)
    )
    client.force_login(person)
    response = client.get(WORKSPACES)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# --- Workspaces ------------------------------------------------------------------------------


def test_creating_a_workspace_in_the_admin_creates_the_owner_membership(
    client: Any, staff: Any
) -> None:
    client.force_login(staff)
    response = client.post(f"{WORKSPACES}add/", {"name": "  Made in admin ", **NO_INLINE_FORMS})
    assert response.status_code == 302
    workspace = Workspace.objects.get(name="Made in admin")
    assert workspace.owner == staff
    assert list(workspace.memberships.values_list("user", "role")) == [(staff.pk, Role.OWNER)]


def test_the_owner_can_rename_in_the_admin(client: Any, owner: Any, workspace: Workspace) -> None:
    owner.is_staff = True
    owner.save(update_fields=["is_staff", "password"])  # the row must match for force_login
    client.force_login(owner)
    response = client.post(
        f"{WORKSPACES}{workspace.pk}/change/", {"name": "Renamed", **NO_INLINE_FORMS}
    )
    assert response.status_code == 302
    workspace.refresh_from_db()
    assert workspace.name == "Renamed"


def test_a_workspace_admin_cannot_rename_in_the_admin(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(staff)
    url = f"{WORKSPACES}{spaces['alpha'].pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert 'name="name"' not in page.content.decode()  # shown read-only

    response = client.post(url, {"name": "Renamed", **NO_INLINE_FORMS})
    assert response.status_code == 403
    spaces["alpha"].refresh_from_db()
    assert spaces["alpha"].name == "Alpha"


def test_a_workspace_admin_cannot_delete_in_the_admin(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(staff)
    response = client.post(f"{WORKSPACES}{spaces['alpha'].pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Workspace.objects.filter(pk=spaces["alpha"].pk).exists()


@pytest.mark.parametrize("who", ["superuser", "owner"])
def test_a_workspace_with_keys_can_be_deleted_in_the_admin(
    client: Any, request: Any, keys: dict[str, ApiKey], owner: Any, who: str
) -> None:
    # Its keys and memberships go with it, as in the API, although keys alone are never deleted.
    if who == "owner":
        owner.is_staff = True
        owner.save(update_fields=["is_staff", "password"])
    client.force_login(request.getfixturevalue(who))
    workspace = keys["alpha"].workspace
    url = f"{WORKSPACES}{workspace.pk}/delete/"
    page = client.get(url)
    assert page.status_code == 200
    assert not page.context["perms_lacking"]
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Workspace.objects.filter(pk=workspace.pk).exists()
    assert not ApiKey.objects.filter(pk=keys["alpha"].pk).exists()


def test_the_bulk_delete_action_removes_workspaces_with_keys(
    client: Any, superuser: Any, keys: dict[str, ApiKey]
) -> None:
    client.force_login(superuser)
    ids = [str(keys["alpha"].workspace_id), str(keys["beta"].workspace_id)]
    response = client.post(
        WORKSPACES, {"action": "delete_selected", "_selected_action": ids, "post": "yes"}
    )
    assert response.status_code == 302
    assert set(Workspace.objects.values_list("name", flat=True)) == {"Gamma"}


@pytest.mark.parametrize("who", ["superuser", "staff"])
def test_the_members_inline_is_shown_read_only(
    client: Any, request: Any, spaces: dict[str, Workspace], owner: Any, who: str
) -> None:
    client.force_login(request.getfixturevalue(who))
    response = client.get(f"{WORKSPACES}{spaces['alpha'].pk}/change/")
    assert response.status_code == 200
    (inline,) = response.context["inline_admin_formsets"]
    assert inline.has_add_permission is False
    assert inline.has_change_permission is False
    assert inline.has_delete_permission is False
    html = response.content.decode()
    assert "olivia" in html
    assert "sam" in html
    assert 'name="memberships-0-role"' not in html


def test_posting_member_changes_in_the_admin_changes_nothing(
    client: Any, superuser: Any, spaces: dict[str, Workspace], staff: Any
) -> None:
    workspace = spaces["alpha"]
    membership = Membership.objects.get(workspace=workspace, user=staff)
    client.force_login(superuser)
    response = client.post(
        f"{WORKSPACES}{workspace.pk}/change/",
        {
            "name": "Alpha",
            "memberships-TOTAL_FORMS": "3",
            "memberships-INITIAL_FORMS": "2",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-id": str(membership.pk),
            "memberships-0-role": "owner",
            "memberships-0-DELETE": "on",
            "memberships-2-user": str(superuser.pk),
            "memberships-2-role": "owner",
        },
    )
    assert response.status_code in (200, 302)
    assert Membership.objects.get(pk=membership.pk).role == Role.ADMIN
    assert not Membership.objects.filter(workspace=workspace, user=superuser).exists()
    assert Membership.objects.filter(workspace=workspace, role=Role.OWNER).count() == 1


# --- API keys --------------------------------------------------------------------------------


def test_creating_a_key_in_the_admin_shows_the_secret_once_and_stores_only_its_hash(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    client.force_login(staff)
    response = client.post(
        f"{KEYS}add/",
        {"workspace": spaces["alpha"].pk, "name": "from admin", "role": "admin"},
        follow=True,
    )
    assert response.status_code == 200
    shown = [m for m in messages_of(response) if "alk_" in m]
    assert len(shown) == 1
    secret = re.search(r"alk_[0-9a-f]+_[A-Za-z0-9_-]+", shown[0]).group(0)  # type: ignore[union-attr]

    key = ApiKey.objects.get(name="from admin")
    assert key.workspace == spaces["alpha"]
    assert key.role == "admin"
    assert key.created_by == staff
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(f"alk_{key.prefix}_")

    for url in (KEYS, f"{KEYS}{key.pk}/change/"):
        page = client.get(url)
        assert page.status_code == 200
        assert secret not in page.content.decode()
        assert key.secret_hash not in page.content.decode()


def test_an_existing_key_is_read_only_in_the_admin(
    client: Any, staff: Any, keys: dict[str, ApiKey]
) -> None:
    key = keys["alpha"]
    client.force_login(staff)
    response = client.post(
        f"{KEYS}{key.pk}/change/",
        {"workspace": key.workspace_id, "name": "renamed", "role": "admin"},
    )
    assert response.status_code == 403
    key.refresh_from_db()
    assert (key.name, key.role) == ("alpha-key", "member")


def test_the_revoke_action_revokes_and_reports_counts(
    client: Any, superuser: Any, keys: dict[str, ApiKey]
) -> None:
    services.api_key_revoke(api_key=keys["gamma"], actor=Actor(user=superuser))
    revoked_before = ApiKey.objects.get(pk=keys["gamma"].pk).revoked_at
    client.force_login(superuser)
    response = client.post(
        KEYS,
        {"action": "revoke_keys", "_selected_action": [str(k.pk) for k in keys.values()]},
        follow=True,
    )
    assert response.status_code == 200
    assert "2 revoked, 1 already revoked." in messages_of(response)
    assert all(key.revoked_at is not None for key in ApiKey.objects.all())
    assert ApiKey.objects.get(pk=keys["gamma"].pk).revoked_at == revoked_before


def test_the_revoke_action_cannot_reach_keys_of_other_workspaces(
    client: Any, staff: Any, keys: dict[str, ApiKey]
) -> None:
    client.force_login(staff)
    response = client.post(
        KEYS,
        {"action": "revoke_keys", "_selected_action": [str(k.pk) for k in keys.values()]},
        follow=True,
    )
    assert "1 revoked, 0 already revoked." in messages_of(response)
    assert ApiKey.objects.get(pk=keys["alpha"].pk).revoked_at is not None
    assert ApiKey.objects.get(pk=keys["beta"].pk).revoked_at is None
    assert ApiKey.objects.get(pk=keys["gamma"].pk).revoked_at is None


def test_keys_cannot_be_deleted_in_the_admin(
    client: Any, superuser: Any, keys: dict[str, ApiKey]
) -> None:
    client.force_login(superuser)
    response = client.post(f"{KEYS}{keys['alpha'].pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert ApiKey.objects.filter(pk=keys["alpha"].pk).exists()


# --- webhooks, their delivery log, review emails ---------------------------------------

HOOKS = "/admin/workspaces/webhookendpoint/"
DELIVERIES = "/admin/workspaces/webhookdelivery/"
MEMBERSHIPS = "/admin/workspaces/membership/"


@pytest.fixture
def hooks(settings: Any, spaces: dict[str, Workspace], owner: Any) -> dict[str, Any]:
    """An endpoint in Alpha (which Sam administers) and one in Beta (where he is a member),
    each with one delivery."""
    from workspaces import webhooks

    settings.WEBHOOK_ALLOW_PRIVATE = settings.WEBHOOK_ALLOW_HTTP = True
    made = {}
    for name in ("alpha", "beta"):
        made[name], _ = webhooks.webhook_create(
            workspace=spaces[name], actor=Actor(user=owner), url=f"http://127.0.0.1:9/{name}"
        )
        services.workspace_rename(workspace=spaces[name], name=name, actor=Actor(user=owner))
    return made


@pytest.mark.django_db
def test_staff_see_the_webhooks_and_deliveries_of_workspaces_they_administer(
    client: Any, staff: Any, hooks: dict[str, Any]
) -> None:
    client.force_login(staff)
    listed = client.get(HOOKS).content.decode()
    assert "127.0.0.1:9/alpha" in listed and "127.0.0.1:9/beta" not in listed
    log = client.get(DELIVERIES).content.decode()
    assert "/alpha" in log and "/beta" not in log
    assert client.get(f"{HOOKS}{hooks['beta'].pk}/change/").status_code == 302  # not theirs


@pytest.mark.django_db
def test_creating_an_endpoint_in_the_admin_shows_its_secret_once(
    client: Any, staff: Any, spaces: dict[str, Workspace], settings: Any
) -> None:
    from workspaces.models import WebhookEndpoint

    settings.WEBHOOK_ALLOW_PRIVATE = settings.WEBHOOK_ALLOW_HTTP = True
    client.force_login(staff)
    body = {
        "workspace": spaces["alpha"].pk,
        "url": "http://127.0.0.1:9/new",
        "event_types": '["artifact.approved"]',
        "description": "CI",
        "active": "on",
        **{f"deliveries-{k}": v for k, v in
           {"TOTAL_FORMS": "0", "INITIAL_FORMS": "0", "MIN_NUM_FORMS": "0",
            "MAX_NUM_FORMS": "0"}.items()},
    }  # fmt: skip
    response = client.post(f"{HOOKS}add/", body, follow=True)
    endpoint = WebhookEndpoint.objects.get(url="http://127.0.0.1:9/new")
    assert any(endpoint.secret in m for m in messages_of(response))
    assert endpoint.event_types == ["artifact.approved"]
    assert endpoint.secret not in client.get(f"{HOOKS}{endpoint.pk}/change/").content.decode()


@pytest.mark.django_db
def test_the_admin_refuses_a_private_target(
    client: Any, staff: Any, spaces: dict[str, Workspace], settings: Any
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    client.force_login(staff)
    response = client.post(
        f"{HOOKS}add/",
        {"workspace": spaces["alpha"].pk, "url": "https://169.254.169.254/", "event_types": "[]"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "link-local" in response.content.decode()


@pytest.mark.django_db
def test_the_retry_action_goes_through_the_service(
    client: Any, staff: Any, hooks: dict[str, Any]
) -> None:
    from workspaces.models import WebhookDelivery

    delivery = WebhookDelivery.objects.get(endpoint=hooks["alpha"])
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", next_attempt_at=None)
    client.force_login(staff)
    response = client.post(
        DELIVERIES,
        {"action": "retry_deliveries", "_selected_action": [delivery.pk]},
        follow=True,
    )
    assert "1 retried, 0 refused" in " ".join(messages_of(response))
    delivery.refresh_from_db()
    assert delivery.status == "pending"


@pytest.mark.django_db
def test_review_emails_are_turned_off_in_the_admin_through_the_service(
    client: Any, staff: Any, spaces: dict[str, Workspace]
) -> None:
    from workspaces.models import Event

    mine = Membership.objects.get(workspace=spaces["alpha"], user=staff)
    client.force_login(staff)
    assert "Beta" not in client.get(MEMBERSHIPS).content.decode()  # only administered
    response = client.post(f"{MEMBERSHIPS}{mine.pk}/change/", {"notify_reviews": ""}, follow=True)
    assert response.status_code == 200
    mine.refresh_from_db()
    assert mine.notify_reviews is False
    assert Event.objects.filter(type="member.notify_changed").count() == 1

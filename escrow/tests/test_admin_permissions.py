"""Roles: Support sees everything and can move no money; Finance can; nothing is deletable."""

from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group

from escrow.models import EscrowStatus, StaffAction
from escrow.tests.admin_support import (
    action_url,
    as_finance,
    as_superuser,
    as_support,
    change_url,
    changelist_url,
    ensure_staff_groups,
    incident_with_failed_delivery,
    login,
    staff_user,
)
from escrow.tests.factories import escrow_in_status, make_escrow
from escrowsite.admin import ACTION_PERMISSIONS
from payments.tests.test_webhook import snapshot
from payments.tests.webhooks import payload, post
from wallets import services as wallet_services
from wallets.models import Customer

S = EscrowStatus

# Every staff action that moves money or changes a status, with a POST that would do it
# (and acknowledging a flagged delivery, which moves none but is Finance's call).
MONEY_ACTIONS = [
    ("escrow_escrow", "confirm-payment", {"tx_hash": "tx-1", "usd_amount": "101.00"}),
    ("escrow_escrow", "extend-deadline", {"deadline": "expires_at", "until": "2099-01-01T00:00"}),
    ("escrow_escrow", "cancel", {}),
    ("escrow_escrow", "refund", {}),
    ("escrow_escrow", "release", {}),
    ("escrow_escrow", "resolve-dispute", {"resolution": "refund"}),
    ("payments_webhookreceipt", "reprocess", {}),
    ("payments_webhookreceipt", "attach", {"escrow_id": "ES101325WZY2"}),
    ("payments_webhookreceipt", "credit", {"customer_id": "5590563715"}),
    ("payments_webhookreceipt", "acknowledge", {}),
    ("wallets_customer", "adjust", {"amount": "5.00", "idempotency_key": "k1"}),
    ("wallets_account", "adjust", {"amount": "5.00", "idempotency_key": "k2"}),
    ("wallets_adjustmentrequest", "approve", {}),
    ("wallets_adjustmentrequest", "reject", {}),
]


@pytest.fixture
def targets(db, monkeypatch, client):
    """One object per model an action applies to, in a state where the action applies."""
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    post(client, payload(escrow_id="ES10132SWZY2", tx_id="tx-typo"))  # parked in suspense
    requester = staff_user("rita-requester", "Finance")
    pending = wallet_services.adjust_wallet(
        customer_id=escrow.buyer_id,
        amount=Decimal("500.00"),
        reason="goodwill",
        actor_id=requester.pk,
    ).request
    wallet = escrow.buyer.accounts.get()
    return {
        "escrow_escrow": escrow,
        "payments_webhookreceipt": receipt,
        "wallets_customer": Customer.objects.get(pk=escrow.buyer_id),
        "wallets_account": wallet,
        "wallets_adjustmentrequest": pending,
    }


def test_groups_exist_with_the_right_permissions(db):
    ensure_staff_groups()  # as the migration left them (a flush elsewhere may have removed them)
    support = {p.codename for p in Group.objects.get(name="Support").permissions.all()}
    finance = {p.codename for p in Group.objects.get(name="Finance").permissions.all()}
    views = {p for p in finance if p.startswith("view_")}
    assert {
        "view_escrow",
        "view_webhookreceipt",
        "view_transfer",
        "view_adjustmentrequest",
    } <= views
    actions = {codename for codename, _ in ACTION_PERMISSIONS}
    assert actions <= finance
    assert support == views | {"retry_notification"}
    assert not any(p.startswith(("add_", "change_", "delete_")) for p in support | finance)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "name", "data"), MONEY_ACTIONS, ids=[f"{m}:{n}" for m, n, _ in MONEY_ACTIONS]
)
def test_support_gets_403_for_every_money_action_and_sees_no_button(targets, model, name, data):
    support = as_support()
    obj = targets[model]
    url = action_url(model, obj.pk, name)
    before = snapshot()
    assert support.get(url).status_code == 403
    assert support.post(url, {**data, "reason": "support tries"}).status_code == 403
    assert (
        snapshot() == before
        and not StaffAction.objects.filter(actor__username="sam-support").exists()
    )
    page = support.get(change_url(model, obj.pk))
    assert page.status_code == 200
    assert url not in page.content.decode()
    assert 'class="staff-action' not in page.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "name", "data"), MONEY_ACTIONS, ids=[f"{m}:{n}" for m, n, _ in MONEY_ACTIONS]
)
def test_finance_can_open_every_money_action(targets, model, name, data):
    finance, _ = as_finance()
    obj = targets[model]
    assert finance.get(action_url(model, obj.pk, name)).status_code == 200


@pytest.mark.django_db
def test_finance_sees_the_buttons_that_apply(targets):
    finance, _ = as_finance()
    escrow = targets["escrow_escrow"]
    html = finance.get(change_url("escrow_escrow", escrow.pk)).content.decode()
    for name in ("confirm-payment", "extend-deadline", "cancel"):
        assert action_url("escrow_escrow", escrow.pk, name) in html
    for name in ("refund", "release", "resolve-dispute"):  # not in payment_pending
        assert action_url("escrow_escrow", escrow.pk, name) not in html


@pytest.mark.django_db
def test_support_has_no_bulk_reprocess_but_finance_has(targets):
    finance, _ = as_finance()
    support = as_support()
    url = changelist_url("payments_webhookreceipt")
    assert "reprocess_selected" not in support.get(url).content.decode()
    assert "reprocess_selected" in finance.get(url).content.decode()
    receipt = targets["payments_webhookreceipt"]
    before = snapshot()
    response = support.post(
        url,
        {
            "action": "reprocess_selected",
            "_selected_action": [receipt.pk],
            "apply": "yes",
            "reason": "r",
        },
    )
    assert response.status_code in (200, 302)
    assert snapshot() == before
    receipt.refresh_from_db()
    assert receipt.outcome == "failed"


@pytest.mark.django_db
def test_a_staff_user_without_a_group_sees_nothing(db):
    client = login(staff_user("nobody"))
    escrow = make_escrow()
    assert client.get(change_url("escrow_escrow", escrow.pk)).status_code == 403
    assert client.get(action_url("escrow_escrow", escrow.pk, "cancel")).status_code == 403


# --- nothing financial can be deleted, added or edited ----------------------------------------

FINANCIAL = [
    "escrow_escrow",
    "escrow_escrowholding",
    "escrow_statuschange",
    "escrow_staffaction",
    "wallets_customer",
    "wallets_account",
    "wallets_transfer",
    "wallets_transaction",
    "wallets_adjustmentrequest",
    "payments_webhookreceipt",
    "payments_paymentevent",
    "notifications_notification",
]


def _registered(name: str):
    app_label, model_name = name.split("_", 1)
    for model, model_admin in admin.site._registry.items():
        if (model._meta.app_label, model._meta.model_name) == (app_label, model_name):
            return model, model_admin
    raise AssertionError(f"{name} is not registered")


@pytest.fixture
def one_of_each(targets):
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    from escrow.models import EscrowHolding, StatusChange
    from notifications.models import Notification
    from payments.models import PaymentEvent
    from wallets.models import Transaction, Transfer

    StaffAction.objects.create(
        actor=targets["wallets_adjustmentrequest"].requested_by, action="x", reason="y"
    )
    return {
        "escrow_escrow": escrow,
        "escrow_escrowholding": EscrowHolding.objects.first(),
        "escrow_statuschange": StatusChange.objects.first(),
        "escrow_staffaction": StaffAction.objects.first(),
        "wallets_customer": targets["wallets_customer"],
        "wallets_account": targets["wallets_account"],
        "wallets_transfer": Transfer.objects.first(),
        "wallets_transaction": Transaction.objects.first(),
        "wallets_adjustmentrequest": targets["wallets_adjustmentrequest"],
        "payments_webhookreceipt": targets["payments_webhookreceipt"],
        "payments_paymentevent": PaymentEvent.objects.first(),
        "notifications_notification": Notification.objects.first(),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("name", FINANCIAL)
def test_nothing_financial_can_be_deleted_added_or_edited_even_by_a_superuser(one_of_each, name):
    superuser_client = as_superuser()
    obj = one_of_each[name]
    assert obj is not None, name
    model, model_admin = _registered(name)
    request = superuser_client.get("/admin/").wsgi_request
    assert not model_admin.has_delete_permission(request, obj)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, obj)
    assert "delete_selected" not in model_admin.get_actions(request)

    count = model.objects.count()
    delete = superuser_client.post(
        change_url(name, obj.pk).replace("/change/", "/delete/"), {"post": "yes"}
    )
    assert delete.status_code == 403
    assert model.objects.count() == count
    add = superuser_client.get(changelist_url(name) + "add/")
    assert add.status_code == 403

    page = superuser_client.get(change_url(name, obj.pk))
    assert page.status_code == 200
    html = page.content.decode()
    # Read-only: no form inputs for the record's fields, and no save button.
    for field in model._meta.concrete_fields:
        assert f'name="{field.name}"' not in html, (name, field.name)
    assert 'name="_save"' not in html
    edit = superuser_client.post(change_url(name, obj.pk), {"amount": "1.00", "balance": "1000.00"})
    assert edit.status_code == 403


@pytest.mark.django_db
def test_money_fields_show_as_text_on_the_escrow_page():
    superuser_client = as_superuser()
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED, amount=Decimal("92.13"))
    html = superuser_client.get(change_url("escrow_escrow", escrow.pk)).content.decode()
    assert '<div class="readonly">92.13</div>' in html
    assert '<div class="readonly">96.74</div>' in html


@pytest.mark.django_db
def test_index_needs_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_support_may_retry_failed_notifications_but_a_viewer_without_the_permission_may_not(db):
    support = as_support()
    from notifications.models import Notification, NotificationStatus

    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    row = Notification.objects.filter(escrow=escrow).first()
    Notification.objects.filter(pk=row.pk).update(
        status=NotificationStatus.DEAD, next_attempt_at=None
    )
    url = changelist_url("notifications_notification")
    data = {"action": "retry_now", "_selected_action": [row.pk]}

    viewer = staff_user("vic-viewer")
    viewer.user_permissions.add(
        *Group.objects.get(name="Support").permissions.filter(codename__startswith="view_")
    )
    assert "retry_now" not in login(viewer).get(url).content.decode()
    login(viewer).post(url, data)
    row.refresh_from_db()
    assert row.status == NotificationStatus.DEAD

    assert "retry_now" in support.get(url).content.decode()
    support.post(url, data)
    row.refresh_from_db()
    assert row.status == NotificationStatus.PENDING


@pytest.mark.django_db
def test_a_refused_action_explains_itself_and_changes_nothing(settings):
    settings.DEBUG = False
    support = as_support()
    escrow = escrow_in_status("active")
    before = snapshot()
    page = support.post(action_url("escrow_escrow", escrow.pk, "refund"), {"reason": "r"})
    assert page.status_code == 403
    assert "Finance" in page.content.decode()
    assert snapshot() == before

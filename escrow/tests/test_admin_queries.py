"""Every back-office page runs a number of queries that does not grow with its rows."""

import uuid
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from escrow import services as escrow_services
from escrow.models import Escrow, StaffAction, StatusChange
from escrow.tests.admin_support import (
    action_url,
    change_url,
    changelist_url,
    incident_with_failed_delivery,
    login,
    staff_user,
)
from escrow.tests.factories import make_escrow
from notifications.models import Notification
from payments.models import WebhookReceipt
from payments.tests.webhooks import payload, post
from wallets import ledger
from wallets import services as wallet_services
from wallets.models import AccountKind

CHANGELISTS = [
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


def seed(client, actor, n: int) -> None:
    """n paid escrows (each through the webhook), n staff actions, n adjustment requests,
    n late payments flagged for a look."""
    for _ in range(n):
        escrow = make_escrow()
        post(client, payload(escrow_id=escrow.escrow_id, base_amount=str(escrow.total_due + 1)))
        post(client, payload(escrow_id=escrow.escrow_id, base_amount="3.00"))  # late, flagged
        StaffAction.objects.create(
            actor=actor, action="test", reason="r", escrow=escrow, target="t"
        )
        wallet_services.adjust_wallet(
            customer_id=escrow.buyer_id, amount=Decimal("500.00"), reason="r", actor_id=actor.pk
        )
    # A failed delivery too, so the unlinked-receipt lookups have something to read.
    WebhookReceipt.objects.filter(pk=WebhookReceipt.objects.latest("pk").pk).update(
        outcome="failed", escrow=None
    )


class Queries(list):
    """The SQL a page ran; equal when the counts are (the SQL shows in a failure)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queries) and len(self) == len(other)

    __hash__ = None  # type: ignore[assignment]


def queries(client, url: str) -> Queries:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return Queries(q["sql"][:160] for q in captured)


@pytest.mark.django_db
def test_changelists_do_not_grow_with_rows(client):
    finance_user = staff_user("fiona-finance", "Finance")
    viewer = login(staff_user("viewer", superuser=True))
    seed(client, finance_user, 5)
    escrow = Escrow.objects.order_by("pk").first()
    searches = [escrow.escrow_id, str(escrow.buyer_id), "no-such-tx", "fiona-finance"]
    urls = (
        [changelist_url(name) for name in CHANGELISTS]
        + [
            f"{changelist_url(name)}?{urlencode({'q': q})}"
            for name in CHANGELISTS
            for q in searches
        ]
        + [
            changelist_url("escrow_escrow") + "?deliveries=problem",
            changelist_url("escrow_escrow") + "?deadline=past",
            changelist_url("escrow_escrow") + "?status__exact=payment_confirmed",
            changelist_url("payments_webhookreceipt") + "?queue=failed",
            changelist_url("payments_webhookreceipt") + "?queue=late",
            changelist_url("payments_webhookreceipt") + "?flagged__exact=1",
            changelist_url("notifications_notification") + "?queue=failing",
            "/admin/",
        ]
    )
    [queries(viewer, url) for url in urls]  # warm the per-process caches (content types)
    small = {url: queries(viewer, url) for url in urls}
    seed(client, finance_user, 45)
    assert Escrow.objects.count() >= 50 and WebhookReceipt.objects.count() >= 50
    large = {url: queries(viewer, url) for url in urls}
    assert large == small


def grow(client, escrow: Escrow, n: int) -> None:
    """n more deliveries (late credits after the first), status changes, notes, actions."""
    actor = staff_user(f"actor-{uuid.uuid4().hex[:6]}", "Finance")
    for _ in range(n):
        post(client, payload(escrow_id=escrow.escrow_id, base_amount="10.00"))
    StatusChange.objects.bulk_create(
        StatusChange(
            escrow=escrow, from_status=escrow.status, to_status=escrow.status, source="test"
        )
        for _ in range(n)
    )
    StaffAction.objects.bulk_create(
        StaffAction(actor=actor, action="note", reason="r", escrow=escrow) for _ in range(n)
    )
    Notification.objects.bulk_create(
        Notification(
            key=uuid.uuid4().hex,
            event="e",
            channel="bot_webhook",
            escrow=escrow,
            customer_id=escrow.buyer_id,
            next_attempt_at=escrow.created_at,
        )
        for _ in range(n)
    )


@pytest.mark.django_db
def test_the_escrow_page_does_not_grow_with_its_history(monkeypatch, client):
    escrow, _ = incident_with_failed_delivery(monkeypatch)
    viewer = login(staff_user("fin", "Finance"))
    url = change_url("escrow_escrow", escrow.pk)
    grow(client, escrow, 5)
    queries(viewer, url)  # warm the per-process caches (content types)
    small = queries(viewer, url)
    grow(client, escrow, 50)
    large = queries(viewer, url)
    assert large == small
    html = viewer.get(url).content.decode()
    assert "All transfers →" in html  # capped, with a link to the rest


@pytest.mark.django_db
def test_record_pages_do_not_grow_with_their_history(client):
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = make_escrow()
    viewer = login(staff_user("fin", "Finance"))
    grow(client, escrow, 3)
    wallet = ledger.customer_wallet(customer=escrow.buyer_id)
    clearing = ledger.clearing_account(provider="dynopay")
    cancelled = make_escrow()
    escrow_services.cancel_escrow(escrow_id=cancelled.escrow_id)
    post(client, payload(escrow_id=cancelled.escrow_id, tx_id="tx-late"))
    late = WebhookReceipt.objects.get(tx_id="tx-late", flagged=True)
    pages = [
        change_url("wallets_customer", escrow.buyer_id),
        change_url("wallets_account", wallet.pk),
        change_url("wallets_account", clearing.pk),
        change_url("payments_webhookreceipt", WebhookReceipt.objects.latest("pk").pk),
        change_url("payments_webhookreceipt", late.pk),
        action_url("payments_webhookreceipt", late.pk, "acknowledge"),
    ]
    [queries(viewer, url) for url in pages]  # warm the per-process caches (content types)
    small = [queries(viewer, url) for url in pages]
    grow(client, escrow, 60)
    for _ in range(60):
        wallet_services.adjust_wallet(
            customer_id=escrow.buyer_id,
            amount=Decimal("-0.01"),
            reason="r",
            actor_id=finance_user.pk,
        )
    large = [queries(viewer, url) for url in pages]
    assert large == small
    assert wallet.kind == AccountKind.CUSTOMER


@pytest.mark.django_db
def test_a_big_unfiltered_list_is_not_counted_but_estimated(monkeypatch):
    from escrowsite.admin import EstimatedCountPaginator

    viewer = login(staff_user("viewer", superuser=True))
    for _ in range(3):
        make_escrow()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE escrow_escrow")
    monkeypatch.setattr(EstimatedCountPaginator, "ESTIMATE_ABOVE", 1)

    with CaptureQueriesContext(connection) as captured:
        response = viewer.get(changelist_url("escrow_escrow"))
    assert response.context["cl"].result_count == 3  # the planner's estimate, exact here
    counts = [q["sql"] for q in captured if "COUNT(" in q["sql"] and "escrow_escrow" in q["sql"]]
    assert counts == []

    with CaptureQueriesContext(connection) as captured:
        response = viewer.get(changelist_url("escrow_escrow") + "?status__exact=payment_pending")
    assert response.context["cl"].result_count == 3
    assert any("COUNT(" in q["sql"] for q in captured)  # filtered lists are counted exactly


@pytest.mark.django_db
def test_a_big_filtered_list_is_counted_only_up_to_a_cap_then_estimated(monkeypatch):
    from escrowsite.admin import EstimatedCountPaginator

    viewer = login(staff_user("viewer", superuser=True))
    for _ in range(4):
        make_escrow()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE escrow_escrow")
    url = changelist_url("escrow_escrow") + "?status__exact=payment_pending"
    assert viewer.get(url).context["cl"].result_count == 4  # under the cap: exact

    monkeypatch.setattr(EstimatedCountPaginator, "EXACT_UP_TO", 2)
    with CaptureQueriesContext(connection) as captured:
        response = viewer.get(url)
    counts = [q["sql"] for q in captured if "COUNT(" in q["sql"]]
    assert len(counts) == 1 and "LIMIT 3" in counts[0]  # never more than the cap + 1 rows
    explains = [q["sql"] for q in captured if q["sql"].startswith("EXPLAIN")]
    assert len(explains) == 1
    cl = response.context["cl"]
    assert cl.result_count >= 3  # the planner's estimate, at least "more than the cap"
    assert len(cl.result_list) == 4

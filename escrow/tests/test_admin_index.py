"""The admin index shows every work queue's size and links to it: problems on the first page."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from escrow.admin_queues import COUNT_CAP, capped_count, claimed_escrow_ref, queue_counts
from escrow.models import Escrow
from escrow.tests.admin_support import (
    as_support,
    incident_with_failed_delivery,
    login,
    staff_user,
)
from escrow.tests.factories import make_escrow, pay
from notifications.models import Notification, NotificationStatus
from payments.models import WebhookReceipt
from payments.tests.webhooks import payload, post
from wallets import services as wallet_services


def queues(response) -> dict[str, tuple[str, str]]:
    return {
        item["queue"].key: (item["queue"].display, item["url"])
        for item in response.context["work_queues"]
    }


@pytest.mark.django_db
def test_an_empty_back_office_shows_every_queue_at_zero():
    support = as_support()
    response = support.get("/admin/")
    assert response.status_code == 200
    shown = queues(response)
    assert {k: v[0] for k, v in shown.items()} == {
        "failed": "0",
        "parked": "0",
        "late": "0",
        "suspense": "0.00",
        "deadline": "0",
        "notifications": "0",
        "adjustments": "0",
    }
    html = response.content.decode()
    assert 'id="work-queues"' in html
    assert "Escrows" in html and "Webhook receipts" in html  # the standard app list stays


@pytest.mark.django_db
def test_each_problem_is_counted_and_linked_to_its_filtered_list(monkeypatch, client):
    finance_user = staff_user("fiona-finance", "Finance")
    escrow, failed = incident_with_failed_delivery(monkeypatch)
    # parked: a payment naming an escrow that does not exist (money goes to suspense)
    post(client, payload(escrow_id="ES10132SWZY2", tx_id="tx-typo", base_amount="50.00"))
    # late: a payment for a cancelled escrow, credited to the buyer's wallet and flagged
    cancelled = make_escrow()
    from escrow import services

    services.cancel_escrow(escrow_id=cancelled.escrow_id)
    post(client, payload(escrow_id=cancelled.escrow_id, tx_id="tx-late"))
    # deadline: an escrow whose payment window passed without the sweep closing it
    overdue = make_escrow()
    Escrow.objects.filter(pk=overdue.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    # notifications: one failed, one given up
    paid = make_escrow()
    pay(paid)
    rows = list(Notification.objects.filter(escrow=paid)[:2])
    Notification.objects.filter(pk=rows[0].pk).update(
        status=NotificationStatus.FAILED, last_error="bot down"
    )
    Notification.objects.filter(pk=rows[1].pk).update(
        status=NotificationStatus.DEAD, next_attempt_at=None
    )
    # adjustments: one above the threshold
    wallet_services.adjust_wallet(
        customer_id=escrow.buyer_id,
        amount=Decimal("250.00"),
        reason="goodwill",
        actor_id=finance_user.pk,
    )

    client = login(staff_user("sue", "Support"))
    index = client.get("/admin/")
    shown = queues(index)
    assert "wallet_adjustment_requested" in index.content.decode()  # recent staff actions

    assert shown["failed"][0] == "1"
    assert shown["parked"][0] == "1"
    assert shown["late"][0] == "1"
    assert shown["suspense"][0] == "50.00 USD"
    assert shown["deadline"][0] == "1"
    assert shown["notifications"][0] == "2"
    assert shown["adjustments"][0] == "1"

    def listed(key: str) -> list:
        response = client.get(shown[key][1])
        assert response.status_code == 200, key
        return list(response.context["cl"].result_list)

    assert [r.pk for r in listed("failed")] == [failed.pk]
    assert [r.tx_id for r in listed("parked")] == ["tx-typo"]
    assert [r.tx_id for r in listed("late")] == ["tx-late"]
    assert [a.kind for a in listed("suspense")] == ["suspense"]
    assert [e.escrow_id for e in listed("deadline")] == [overdue.escrow_id]
    assert sorted(n.status for n in listed("notifications")) == ["dead", "failed"]
    assert [r.amount for r in listed("adjustments")] == [Decimal("250.00")]


@pytest.mark.django_db
def test_a_stuck_received_delivery_counts_as_failed_only_once_stale(monkeypatch):
    from payments.tests.test_fault_injection import stored_delivery

    escrow = make_escrow()
    receipt = stored_delivery(escrow.escrow_id, "tx-stuck")
    counts = {q.key: q.count for q in queue_counts()}
    assert counts["failed"] == 0
    WebhookReceipt.objects.filter(pk=receipt.pk).update(
        received_at=timezone.now() - timedelta(minutes=10)
    )
    counts = {q.key: q.count for q in queue_counts()}
    assert counts["failed"] == 1


@pytest.mark.django_db
def test_counts_are_capped(monkeypatch):
    escrows = [make_escrow() for _ in range(3)]
    Escrow.objects.filter(pk__in=[e.pk for e in escrows]).update(
        expires_at=timezone.now() - timedelta(hours=1)
    )
    assert capped_count(Escrow.objects.all(), cap=2) == 3  # "more than the cap"
    assert capped_count(Escrow.objects.all(), cap=5) == 3
    monkeypatch.setattr("escrow.admin_queues.COUNT_CAP", 2)
    assert {q.key: q.display for q in queue_counts()}["deadline"] == "2+"
    assert COUNT_CAP == 1000


@pytest.mark.parametrize(
    ("body", "ref"),
    [
        (b'{"meta_data": {"refId": "es101325wzy2"}}', "ES101325WZY2"),
        (b'{"customer_reference": "ES101325WZY2"}', "ES101325WZY2"),
        (b'{"meta_data": {"refId": "ES101325WZY2"}, "x": "trunc', "ES101325WZY2"),
        (b"\xff\xfe not json", ""),
        (b'{"meta_data": "nope"}', ""),
        (b"[1, 2]", ""),
    ],
)
def test_the_escrow_a_raw_body_names_is_read_leniently(body, ref):
    assert claimed_escrow_ref(body) == ref

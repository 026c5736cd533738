"""The escrow pages: the incident's investigation and repair in a few clicks, audited."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from escrow.models import Escrow, EscrowStatus, StaffAction
from escrow.tests.admin_support import (
    BUYER,
    action_url,
    as_finance,
    as_support,
    change_url,
    changelist_url,
    incident_with_failed_delivery,
    message_texts,
)
from escrow.tests.factories import escrow_in_status, make_escrow
from payments.models import Outcome
from payments.tests.test_webhook import assert_ledger_balanced, snapshot, wallet
from payments.tests.webhooks import INCIDENT_TX
from wallets.tests.factories import break_ledger

S = EscrowStatus


@pytest.mark.django_db
def test_escrow_page_shows_the_incident_timeline_with_its_failed_delivery(monkeypatch):
    support = as_support()
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    # The failed processing rolled back, but recording the failure links it again.
    assert receipt.escrow_id == escrow.pk

    page = support.get(change_url("escrow_escrow", escrow.pk))

    assert page.status_code == 200
    html = page.content.decode()
    assert "ES101325WZY2" in html
    assert f'id="delivery-{receipt.pk}"' in html
    assert "ZeroDivisionError" in html  # the delivery's error
    assert "6462e85a-12da-403c-8eeb-e1697b9bbbe7" in html  # its raw body, tx hash included
    assert "payment_pending" in html  # status history: created -> payment_pending
    assert 'id="buyer-wallet">7.35 USD' in html
    assert "nothing (no payment yet)" in html  # no holding


@pytest.mark.django_db
def test_reprocess_with_preview_then_confirm_repairs_the_incident(monkeypatch):
    finance, _ = as_finance()
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    before = snapshot()

    # The escrow page offers nothing about the receipt; the receipt page offers reprocessing.
    receipt_page = finance.get(change_url("payments_webhookreceipt", receipt.pk))
    url = action_url("payments_webhookreceipt", receipt.pk, "reprocess")
    assert url in receipt_page.content.decode()

    preview = finance.get(url)
    assert preview.status_code == 200
    html = preview.content.decode()
    assert 'id="preview-outcome">applied' in html
    assert "payment_pending → payment_confirmed" in html
    assert "escrow_payment" in html and "96.74" in html
    assert "overpayment_credit" in html and "4.26" in html
    assert snapshot() == before, "the preview changed something"

    done = finance.post(url, {"reason": "DynoPay retries exhausted; incident ES101325WZY2"})

    assert done.status_code == 302
    assert done["Location"] == change_url("escrow_escrow", escrow.pk)
    assert any("applied" in m for m in message_texts(done))
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert escrow.deposit_tx_hash == INCIDENT_TX
    assert wallet(BUYER) == Decimal("11.61")
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.APPLIED and receipt.escrow == escrow
    action = StaffAction.objects.get()
    assert action.action == "reprocess_receipt" and action.escrow == escrow
    assert action.reason == "DynoPay retries exhausted; incident ES101325WZY2"
    assert_ledger_balanced()

    page = finance.get(change_url("escrow_escrow", escrow.pk)).content.decode()
    assert 'id="buyer-wallet">11.61 USD' in page
    assert "96.74 USD — Held" in page
    assert "ESC_ES101325WZY2_6462e85a" in page
    assert "reprocess_receipt by fiona-finance" in page


@pytest.mark.django_db
def test_reprocess_without_a_reason_changes_nothing(monkeypatch):
    finance, _ = as_finance()
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    before = snapshot()
    response = finance.post(
        action_url("payments_webhookreceipt", receipt.pk, "reprocess"), {"reason": "   "}
    )
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_reprocess_that_fails_again_shows_the_error_and_applies_nothing(monkeypatch):
    finance, _ = as_finance()

    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    before = snapshot()
    break_ledger(monkeypatch)
    response = finance.post(
        action_url("payments_webhookreceipt", receipt.pk, "reprocess"), {"reason": "try again"}
    )
    assert response.status_code == 302
    assert any(
        "failed and nothing was applied" in m and "ZeroDivisionError" in m
        for m in message_texts(response)
    )
    assert snapshot() == before and not StaffAction.objects.exists()
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.FAILED and receipt.attempts == 2


@pytest.mark.django_db
def test_bulk_reprocess_from_the_failed_queue_previews_then_applies(monkeypatch):
    finance, _ = as_finance()
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    url = changelist_url("payments_webhookreceipt") + "?queue=failed"
    listing = finance.get(url)
    assert (
        f"#{receipt.pk}" in listing.content.decode() or str(receipt.pk) in listing.content.decode()
    )
    assert f">{escrow.escrow_id}</a>" in listing.content.decode()  # linked to its escrow

    preview = finance.post(url, {"action": "reprocess_selected", "_selected_action": [receipt.pk]})
    assert preview.status_code == 200
    assert "payment_pending → payment_confirmed" in preview.content.decode()
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_PENDING

    done = finance.post(
        url,
        {
            "action": "reprocess_selected",
            "_selected_action": [receipt.pk],
            "apply": "yes",
            "reason": "outage at 14:11",
        },
    )
    assert done.status_code == 302
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert wallet(BUYER) == Decimal("11.61")
    assert StaffAction.objects.get().reason == "outage at 14:11"


# --- confirm by hand ---------------------------------------------------------------------


@pytest.mark.django_db
def test_confirm_payment_by_hand_is_the_seed_repair_through_the_webhook_path():
    finance, _ = as_finance()
    from payments.tests.test_webhook import incident_escrow

    escrow = incident_escrow()
    url = action_url("escrow_escrow", escrow.pk, "confirm-payment")
    assert finance.get(url).status_code == 200
    response = finance.post(
        url,
        {
            "tx_hash": INCIDENT_TX,
            "usd_amount": "101.00",
            "coin": "LTC",
            "crypto_amount": "0.9187",
            "paid_at": "2025-10-13T14:11",
            "provider_payment_id": "",
            "reason": "seen on the LTC explorer",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert wallet(BUYER) == Decimal("11.61")
    assert StaffAction.objects.get().action == "confirm_payment_by_hand"


@pytest.mark.django_db
def test_confirm_by_hand_of_a_transaction_already_applied_elsewhere_changes_nothing():
    finance, _ = as_finance()
    from payments.tests.test_webhook import incident_escrow

    escrow = incident_escrow()
    other = make_escrow()
    data = {"tx_hash": "tx-shared", "usd_amount": "101.00", "reason": "r"}
    url = action_url("escrow_escrow", escrow.pk, "confirm-payment")
    assert finance.post(url, data).status_code == 302
    before = snapshot()
    response = finance.post(action_url("escrow_escrow", other.pk, "confirm-payment"), data)
    messages_ = message_texts(response)
    assert any("conflict" in m or "duplicate" in m for m in messages_), messages_
    assert snapshot() == before


# --- escrow lifecycle actions ------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_an_unpaid_escrow():
    finance, _ = as_finance()
    escrow = make_escrow()
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "cancel"), {"reason": "buyer asked"}
    )
    assert response.status_code == 302
    escrow.refresh_from_db()
    assert escrow.status == S.CANCELLED
    action = StaffAction.objects.get()
    assert action.changes["before"]["status"] == "payment_pending"
    assert action.changes["after"]["status"] == "cancelled"
    assert escrow.status_changes.filter(to_status=S.CANCELLED, source="staff").exists()


@pytest.mark.django_db
def test_cancel_a_paid_escrow_shows_the_domain_error_and_changes_nothing():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    before = snapshot()
    response = finance.post(action_url("escrow_escrow", escrow.pk, "cancel"), {"reason": "oops"})
    assert response.status_code == 200
    assert any(
        "cannot move from payment_confirmed to cancelled" in m for m in message_texts(response)
    )
    assert "cannot move from payment_confirmed to cancelled" in response.content.decode()
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_refund_returns_everything_held_to_the_buyer():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    held_before = wallet(escrow.buyer_id)
    response = finance.post(action_url("escrow_escrow", escrow.pk, "refund"), {"reason": "scam"})
    assert response.status_code == 302
    escrow.refresh_from_db()
    assert escrow.status == S.REFUNDED
    assert wallet(escrow.buyer_id) == held_before + escrow.total_due
    changes = StaffAction.objects.get().changes
    assert changes["before"]["held"] == str(escrow.total_due)
    assert changes["after"]["held"] == "0.00"
    assert_ledger_balanced()


@pytest.mark.django_db
def test_refund_of_an_unpaid_escrow_is_refused():
    finance, _ = as_finance()
    escrow = make_escrow()
    before = snapshot()
    response = finance.post(action_url("escrow_escrow", escrow.pk, "refund"), {"reason": "r"})
    assert response.status_code == 200
    assert any("cannot move from payment_pending to refunded" in m for m in message_texts(response))
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_release_pays_the_seller():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.DELIVERED)
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "release"), {"reason": "confirmed delivery"}
    )
    assert response.status_code == 302
    escrow.refresh_from_db()
    assert escrow.status == S.COMPLETED
    assert wallet(escrow.seller_id) == escrow.amount - escrow.seller_fee


@pytest.mark.django_db
def test_release_of_a_disputed_escrow_is_refused():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.DISPUTED)
    before = snapshot()
    response = finance.post(action_url("escrow_escrow", escrow.pk, "release"), {"reason": "r"})
    assert response.status_code == 200
    assert any("disputed" in m for m in message_texts(response))
    assert snapshot() == before


@pytest.mark.django_db
def test_resolve_dispute_by_split():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.DISPUTED, amount=Decimal("100.00"))
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "resolve-dispute"),
        {
            "resolution": "split",
            "buyer_amount": "60.00",
            "seller_amount": "40.00",
            "reason": "half delivered",
        },
    )
    assert response.status_code == 302, message_texts(response)
    escrow.refresh_from_db()
    assert escrow.status == S.COMPLETED
    assert wallet(escrow.buyer_id) == Decimal("60.00")
    assert wallet(escrow.seller_id) == Decimal("40.00")
    action = StaffAction.objects.get()
    assert action.changes["resolution"] == "split" and action.changes["buyer_amount"] == "60.00"
    assert_ledger_balanced()


@pytest.mark.django_db
def test_resolve_dispute_split_beyond_the_holding_is_refused():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.DISPUTED, amount=Decimal("100.00"))
    before = snapshot()
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "resolve-dispute"),
        {"resolution": "split", "buyer_amount": "100.00", "seller_amount": "100.00", "reason": "r"},
    )
    assert response.status_code == 200
    assert any("exceed" in m for m in message_texts(response))
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_resolve_dispute_by_refund():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.DISPUTED)
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "resolve-dispute"),
        {"resolution": "refund", "reason": "not delivered"},
    )
    assert response.status_code == 302
    escrow.refresh_from_db()
    assert escrow.status == S.REFUNDED


@pytest.mark.django_db
def test_extend_the_delivery_deadline():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.ACTIVE)
    old = escrow.delivery_deadline
    until = (old + timedelta(days=2)).replace(second=0, microsecond=0)
    page = finance.get(action_url("escrow_escrow", escrow.pk, "extend-deadline"))
    assert "Delivery deadline" in page.content.decode()
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "extend-deadline"),
        {
            "deadline": "delivery_deadline",
            "until": until.strftime("%Y-%m-%dT%H:%M"),
            "reason": "holiday",
        },
    )
    assert response.status_code == 302, message_texts(response)
    escrow.refresh_from_db()
    assert escrow.delivery_deadline == until
    changes = StaffAction.objects.get().changes
    assert changes == {
        "deadline": "delivery_deadline",
        "status": "active",
        "before": old.isoformat(),
        "after": until.isoformat(),
    }


@pytest.mark.django_db
def test_shortening_a_deadline_is_refused():
    finance, _ = as_finance()
    escrow = escrow_in_status(S.ACTIVE)
    before = snapshot()
    earlier = escrow.delivery_deadline - timedelta(hours=1)
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "extend-deadline"),
        {
            "deadline": "delivery_deadline",
            "until": earlier.strftime("%Y-%m-%dT%H:%M"),
            "reason": "r",
        },
    )
    assert response.status_code == 200
    assert any("must be later than the current one" in m for m in message_texts(response))
    assert snapshot() == before and not StaffAction.objects.exists()


# --- list, filters, search --------------------------------------------------------------


@pytest.mark.django_db
def test_escrow_list_filters_and_search(monkeypatch):
    support = as_support()
    incident, receipt = incident_with_failed_delivery(monkeypatch)
    paid = escrow_in_status(S.PAYMENT_CONFIRMED)
    overdue = make_escrow()
    Escrow.objects.filter(pk=overdue.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    url = changelist_url("escrow_escrow")

    def ids(query: str) -> set[str]:
        response = support.get(url + query)
        assert response.status_code == 200, query
        return {e.escrow_id for e in response.context["cl"].result_list}

    everything = {incident.escrow_id, paid.escrow_id, overdue.escrow_id}
    assert ids("") == everything
    assert ids("?status__exact=payment_confirmed") == {paid.escrow_id}
    assert ids("?deliveries=problem") == {incident.escrow_id}
    assert ids("?deadline=past") == {overdue.escrow_id}
    Escrow.objects.filter(pk=paid.pk).update(provider="dynopay")
    assert ids("?provider=dynopay") == {paid.escrow_id}
    assert ids("?provider=-") == {incident.escrow_id, overdue.escrow_id}
    assert ids("?payment_confirmed_at__isnull=False") == {paid.escrow_id}
    assert ids("?q=es101325wzy2") == {incident.escrow_id}
    assert ids(f"?q={BUYER}") == {incident.escrow_id}
    assert ids(f"?q={paid.deposit_tx_hash}") == {paid.escrow_id}
    assert ids("?q=nothing-like-this") == set()


@pytest.mark.django_db
def test_confirm_by_hand_with_implausible_evidence_shows_the_error_and_changes_nothing():
    from payments.models import WebhookReceipt
    from payments.tests.test_webhook import incident_escrow

    finance, _ = as_finance()
    escrow = incident_escrow()
    before = snapshot()
    response = finance.post(
        action_url("escrow_escrow", escrow.pk, "confirm-payment"),
        {"tx_hash": "tx-huge", "usd_amount": "5000000000000.00", "reason": "typo"},
    )
    assert response.status_code == 200
    assert any(
        "not a valid payment" in m and "implausibly large" in m for m in message_texts(response)
    )
    assert snapshot() == before and not StaffAction.objects.exists()
    assert not WebhookReceipt.objects.exists()


@pytest.mark.django_db
def test_every_see_all_link_of_the_escrow_page_lists_only_that_escrows_rows():
    support = as_support()
    escrow = escrow_in_status(S.COMPLETED)
    other = escrow_in_status(S.COMPLETED)
    page = support.get(change_url("escrow_escrow", escrow.pk))
    links = page.context["see_all"]
    assert set(links) == {
        "status_changes",
        "receipts",
        "transactions",
        "transfers",
        "notifications",
        "staff_actions",
    }
    for name, url in links.items():
        response = support.get(url)
        assert response.status_code == 200, name
        rows = list(response.context["cl"].result_list)
        assert all(row.escrow_id == escrow.pk for row in rows), name
        assert other.pk not in {row.escrow_id for row in rows}
    assert len(list(support.get(links["transfers"]).context["cl"].result_list)) >= 3

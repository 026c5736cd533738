"""The receipt log in the admin: what arrived, what became of it, and the suspense repairs."""

from decimal import Decimal

import pytest

from escrow.models import EscrowStatus, StaffAction
from escrow.tests.admin_support import (
    action_url,
    as_finance,
    as_support,
    change_url,
    changelist_url,
    incident_with_failed_delivery,
    message_texts,
)
from escrow.tests.factories import make_escrow
from payments.models import Outcome, WebhookReceipt
from payments.tests.test_webhook import assert_ledger_balanced, incident_escrow, snapshot, wallet
from payments.tests.webhooks import payload, post
from wallets import ledger
from wallets.models import AccountKind, Transaction


def parked(client, *, tx_id: str = "tx-typo", amount: str = "101.00") -> WebhookReceipt:
    assert (
        post(client, payload(escrow_id="ES10132SWZY2", tx_id=tx_id, base_amount=amount)).json()[
            "outcome"
        ]
        == "parked"
    )
    return WebhookReceipt.objects.get(tx_id=tx_id)


@pytest.mark.django_db
def test_receipt_page_shows_raw_body_as_text_and_the_traceback(monkeypatch):
    support = as_support()
    _, receipt = incident_with_failed_delivery(monkeypatch)
    html = support.get(change_url("payments_webhookreceipt", receipt.pk)).content.decode()
    assert "&quot;refId&quot;: &quot;ES101325WZY2&quot;" in html  # pretty JSON, escaped
    assert "Traceback (most recent call last)" in html
    assert "ZeroDivisionError" in html


@pytest.mark.django_db
def test_a_malformed_body_is_shown_as_received(client):
    support = as_support()
    post(client, b"not json \xff at all")
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.MALFORMED
    html = support.get(change_url("payments_webhookreceipt", receipt.pk)).content.decode()
    assert "not json \ufffd at all" in html


@pytest.mark.django_db
def test_unsigned_delivery_cannot_be_reprocessed(client):
    finance, _ = as_finance()
    incident_escrow()
    post(client, payload(), secret=None)
    receipt = WebhookReceipt.objects.get()
    before = snapshot()
    page = finance.get(change_url("payments_webhookreceipt", receipt.pk)).content.decode()
    assert action_url("payments_webhookreceipt", receipt.pk, "reprocess") not in page
    response = finance.post(
        action_url("payments_webhookreceipt", receipt.pk, "reprocess"), {"reason": "r"}
    )
    assert response.status_code == 200
    assert "An unauthenticated delivery is never processed." in message_texts(response)
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_reprocess_page_of_an_applied_delivery_says_it_would_do_nothing(client):
    finance, _ = as_finance()
    incident_escrow()
    post(client, payload())
    receipt = WebhookReceipt.objects.get()
    html = finance.get(
        action_url("payments_webhookreceipt", receipt.pk, "reprocess")
    ).content.decode()
    assert "already ended as <strong>applied</strong>" in html


@pytest.mark.django_db
def test_attach_a_parked_payment_to_its_escrow(client):
    finance, _ = as_finance()
    escrow = incident_escrow()
    receipt = parked(client)
    url = action_url("payments_webhookreceipt", receipt.pk, "attach")
    page = finance.get(url).content.decode()
    assert "101.00 USD" in page  # the amount in suspense
    response = finance.post(url, {"escrow_id": "es101325wzy2", "reason": "typo in the reference"})
    assert response.status_code == 302
    assert response["Location"] == change_url("escrow_escrow", escrow.pk)
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert wallet(escrow.buyer_id) == Decimal("11.61")
    assert ledger.system_account(kind=AccountKind.SUSPENSE).balance == Decimal("0.00")
    assert StaffAction.objects.get().action == "attach_suspense_payment"
    assert_ledger_balanced()


@pytest.mark.django_db
def test_attach_to_an_unknown_escrow_shows_the_error_and_changes_nothing(client):
    finance, _ = as_finance()
    incident_escrow()
    receipt = parked(client)
    before = snapshot()
    response = finance.post(
        action_url("payments_webhookreceipt", receipt.pk, "attach"),
        {"escrow_id": "ES000000NONE", "reason": "r"},
    )
    assert response.status_code == 200
    assert "Escrow ES000000NONE does not exist." in message_texts(response)
    assert snapshot() == before and not StaffAction.objects.exists()
    receipt.refresh_from_db()
    assert receipt.flagged


@pytest.mark.django_db
def test_credit_a_parked_payment_to_a_wallet_once(client):
    finance, _ = as_finance()
    receipt = parked(client, amount="20.00")
    customer = make_escrow().buyer_id
    url = action_url("payments_webhookreceipt", receipt.pk, "credit")
    response = finance.post(url, {"customer_id": customer, "reason": "sender identified"})
    assert response.status_code == 302
    assert wallet(customer) == Decimal("20.00")
    assert Transaction.objects.filter(customer_id=customer, external_tx_id="tx-typo").exists()
    # A second try (a stale tab) is refused by the service and moves nothing.
    before = snapshot()
    again = finance.post(url, {"customer_id": customer, "reason": "again"})
    assert again.status_code == 200
    assert any("is not a parked payment" in m for m in message_texts(again))
    assert snapshot() == before
    assert StaffAction.objects.count() == 1


@pytest.mark.django_db
def test_receipt_search_finds_a_failed_delivery_by_the_escrow_its_body_names(monkeypatch):
    support = as_support()
    _, receipt = incident_with_failed_delivery(monkeypatch)
    other = make_escrow()
    response = support.get(changelist_url("payments_webhookreceipt") + "?q=es101325wzy2")
    assert [r.pk for r in response.context["cl"].result_list] == [receipt.pk]
    response = support.get(changelist_url("payments_webhookreceipt") + f"?q={other.escrow_id}")
    assert list(response.context["cl"].result_list) == []

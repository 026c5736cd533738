"""Acknowledging flagged deliveries: Finance empties the late and conflict queues, audited."""

import pytest

from escrow import services as escrow_services
from escrow.models import StaffAction
from escrow.tests.admin_support import (
    action_url,
    as_finance,
    as_support,
    change_url,
    changelist_url,
    message_texts,
)
from escrow.tests.test_admin_index import queues
from payments.models import Outcome, WebhookReceipt
from payments.tests.test_webhook import incident_escrow, snapshot
from payments.tests.webhooks import INCIDENT_TX, payload, post

RECEIPTS = "payments_webhookreceipt"


def late_payment(client) -> WebhookReceipt:
    """A payment for a cancelled escrow: credited to the buyer's wallet and flagged."""
    escrow = incident_escrow()
    escrow_services.cancel_escrow(escrow_id=escrow.escrow_id)
    assert post(client, payload(tx_id="tx-late")).json()["outcome"] == "applied"
    receipt = WebhookReceipt.objects.get(tx_id="tx-late")
    assert receipt.flagged and receipt.outcome == Outcome.APPLIED
    return receipt


def conflict(client) -> WebhookReceipt:
    """The incident's payment, then the same event again with a different amount."""
    incident_escrow()
    assert post(client, payload(tx_id=INCIDENT_TX)).status_code == 200
    assert post(client, payload(tx_id=INCIDENT_TX, base_amount="500.00")).status_code == 409
    receipt = WebhookReceipt.objects.latest("pk")
    assert receipt.flagged and receipt.outcome == Outcome.CONFLICT
    return receipt


def parked(client) -> WebhookReceipt:
    """A payment naming no known escrow: its money sits in suspense."""
    post(client, payload(escrow_id="ES10132SWZY2", tx_id="tx-typo"))
    receipt = WebhookReceipt.objects.get(tx_id="tx-typo")
    assert receipt.flagged and receipt.outcome == Outcome.PARKED
    return receipt


@pytest.mark.django_db
def test_finance_acknowledges_a_late_payment_and_the_queue_empties(client):
    finance, user = as_finance()
    receipt = late_payment(client)
    assert queues(finance.get("/admin/"))["late"][0] == "1"
    url = action_url(RECEIPTS, receipt.pk, "acknowledge")
    assert url in finance.get(change_url(RECEIPTS, receipt.pk)).content.decode()
    page = finance.get(url)
    assert page.status_code == 200 and "No money moves" in page.content.decode()
    before = snapshot()

    done = finance.post(url, {"reason": "buyer was told the credit is in their wallet"})

    assert done.status_code == 302 and done["Location"] == change_url(RECEIPTS, receipt.pk)
    assert any("acknowledged" in m for m in message_texts(done))
    receipt.refresh_from_db()
    assert not receipt.flagged and receipt.outcome == Outcome.APPLIED
    assert snapshot() == before  # no money moved
    action = StaffAction.objects.get()
    assert (action.actor, action.action) == (user, "acknowledge_receipt")
    assert action.reason == "buyer was told the credit is in their wallet"
    assert queues(finance.get("/admin/"))["late"][0] == "0"
    assert url not in finance.get(change_url(RECEIPTS, receipt.pk)).content.decode()


@pytest.mark.django_db
def test_finance_acknowledges_a_conflict_and_the_parked_queue_empties(client):
    finance, _ = as_finance()
    receipt = conflict(client)
    assert queues(finance.get("/admin/"))["parked"][0] == "1"
    done = finance.post(
        action_url(RECEIPTS, receipt.pk, "acknowledge"), {"reason": "provider resent wrong"}
    )
    assert done.status_code == 302
    assert queues(finance.get("/admin/"))["parked"][0] == "0"


@pytest.mark.django_db
def test_acknowledging_needs_a_reason(client):
    finance, _ = as_finance()
    receipt = late_payment(client)
    response = finance.post(action_url(RECEIPTS, receipt.pk, "acknowledge"), {"reason": "  "})
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    receipt.refresh_from_db()
    assert receipt.flagged and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_a_parked_payment_is_refused_with_the_message_shown(client):
    finance, _ = as_finance()
    receipt = parked(client)
    url = action_url(RECEIPTS, receipt.pk, "acknowledge")
    assert url not in finance.get(change_url(RECEIPTS, receipt.pk)).content.decode()
    before = snapshot()

    response = finance.post(url, {"reason": "make it go away"})

    assert response.status_code == 200  # the action page again, with the service's refusal
    html = response.content.decode()
    assert "parked money in suspense: attach it to an escrow or credit it to a wallet" in html
    receipt.refresh_from_db()
    assert receipt.flagged and receipt.outcome == Outcome.PARKED
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_support_gets_403_and_sees_neither_button_nor_bulk_action(client):
    support = as_support()
    receipt = late_payment(client)
    url = action_url(RECEIPTS, receipt.pk, "acknowledge")
    assert support.get(url).status_code == 403
    assert support.post(url, {"reason": "support tries"}).status_code == 403
    assert url not in support.get(change_url(RECEIPTS, receipt.pk)).content.decode()
    listing = changelist_url(RECEIPTS)
    assert "acknowledge_selected" not in support.get(listing).content.decode()
    support.post(
        listing,
        {
            "action": "acknowledge_selected",
            "_selected_action": [receipt.pk],
            "apply": "yes",
            "reason": "r",
        },
    )
    receipt.refresh_from_db()
    assert receipt.flagged and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_bulk_acknowledge_from_the_list_clears_what_it_may_and_names_what_it_refused(client):
    finance, _ = as_finance()
    late = late_payment(client)
    money_in_suspense = parked(client)
    listing = changelist_url(RECEIPTS) + "?flagged__exact=1"
    assert "acknowledge_selected" in finance.get(listing).content.decode()
    selected = [late.pk, money_in_suspense.pk]

    confirm = finance.post(
        listing, {"action": "acknowledge_selected", "_selected_action": selected}
    )
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert f'id="acknowledge-{late.pk}"' in html and "will be refused" in html
    late.refresh_from_db()
    assert late.flagged  # nothing happens before the reason is given

    done = finance.post(
        listing,
        {
            "action": "acknowledge_selected",
            "_selected_action": selected,
            "apply": "yes",
            "reason": "weekly queue review",
        },
    )
    assert done.status_code == 302
    messages = message_texts(done)
    assert any("1 flagged deliveries acknowledged" in m for m in messages)
    assert any(f"#{money_in_suspense.pk} parked money in suspense" in m for m in messages)
    late.refresh_from_db()
    money_in_suspense.refresh_from_db()
    assert not late.flagged and money_in_suspense.flagged
    assert list(StaffAction.objects.values_list("action", "reason")) == [
        ("acknowledge_receipt", "weekly queue review")
    ]

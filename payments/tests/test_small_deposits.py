"""Small deposits are never dropped: a cent, fifty cents or $9.99 lands, to the cent, in
the holding, the buyer's wallet or suspense, with its record, whatever it was paid for."""

import uuid
from decimal import Decimal

import pytest

from escrow import services as escrow_services
from escrow.models import EscrowStatus
from escrow.tests.factories import make_escrow
from escrow.tests.helpers import assert_ledger_balanced, holding_balance, wallet
from payments.models import Outcome, WebhookReceipt
from payments.tests.webhooks import payload, post
from wallets import ledger
from wallets.models import AccountKind, Transaction

AMOUNTS = [Decimal("0.01"), Decimal("0.50"), Decimal("9.99")]
small_amounts = pytest.mark.parametrize("amount", AMOUNTS, ids=[str(a) for a in AMOUNTS])


def deliver(client, *, escrow_id: str, base_amount: Decimal) -> tuple[str, dict]:
    """POST one signed payment.confirmed; (its provider transaction id, the answer)."""
    tx_id = str(uuid.uuid4())
    response = post(client, payload(escrow_id=escrow_id, base_amount=base_amount, tx_id=tx_id))
    assert response.status_code == 200, response.content
    return tx_id, response.json()


def records(tx_id: str) -> list[tuple[str, Decimal]]:
    return sorted(Transaction.objects.filter(external_tx_id=tx_id).values_list("type", "amount"))


def suspense() -> Decimal:
    return ledger.system_account(kind=AccountKind.SUSPENSE).balance


@pytest.mark.django_db
@small_amounts
def test_a_small_payment_for_a_pending_escrow_is_held_as_a_part_payment(client, amount):
    escrow = make_escrow()
    buyer_before = wallet(escrow.buyer_id)

    tx_id, answer = deliver(client, escrow_id=escrow.escrow_id, base_amount=amount)

    assert answer["outcome"] == "applied"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PARTIALLY_PAID
    assert holding_balance(escrow) == amount
    assert records(tx_id) == [("escrow_payment", amount)]
    assert wallet(escrow.buyer_id) == buyer_before
    assert_ledger_balanced()


@pytest.mark.django_db
@small_amounts
def test_a_small_payment_for_a_cancelled_escrow_is_credited_to_the_buyer(client, amount):
    escrow = make_escrow()
    escrow_services.cancel_escrow(escrow_id=escrow.escrow_id)
    buyer_before = wallet(escrow.buyer_id)

    tx_id, answer = deliver(client, escrow_id=escrow.escrow_id, base_amount=amount)

    assert answer["outcome"] == "applied"
    assert wallet(escrow.buyer_id) == buyer_before + amount
    assert records(tx_id) == [("late_payment_credit", amount)]
    assert WebhookReceipt.objects.get().flagged
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.CANCELLED
    assert_ledger_balanced()


@pytest.mark.django_db
@small_amounts
def test_a_small_payment_for_an_unknown_escrow_is_parked_in_suspense(client, amount):
    suspense_before = suspense()

    tx_id, answer = deliver(client, escrow_id="ES000000NOPE", base_amount=amount)

    assert answer["outcome"] == "parked"
    assert suspense() == suspense_before + amount
    assert records(tx_id) == [("suspense", amount)]
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.PARKED and receipt.flagged
    assert_ledger_balanced()


@pytest.mark.django_db
@small_amounts
def test_a_small_overpayment_is_credited_to_the_buyer_as_its_own_transfer(client, amount):
    escrow = make_escrow()
    buyer_before = wallet(escrow.buyer_id)

    tx_id, answer = deliver(
        client, escrow_id=escrow.escrow_id, base_amount=escrow.total_due + amount
    )

    assert answer["outcome"] == "applied"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert holding_balance(escrow) == escrow.total_due
    assert wallet(escrow.buyer_id) == buyer_before + amount
    assert records(tx_id) == sorted(
        [("escrow_payment", escrow.total_due + amount), ("overpayment_credit", amount)]
    )
    assert_ledger_balanced()

"""Staff repairs: reprocess, confirm by hand, place suspense money — audited, no SQL."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from escrow.models import EscrowStatus, StaffAction
from escrow.tests.factories import make_escrow
from escrowsite.errors import ApplicationError
from payments import staff
from payments.models import Outcome, WebhookReceipt
from payments.tests.test_retry_command import failed_receipt
from payments.tests.test_webhook import assert_ledger_balanced, incident_escrow, snapshot, wallet
from payments.tests.webhooks import INCIDENT_TX, payload, post
from wallets import ledger
from wallets.models import AccountKind, Transaction
from wallets.tests.factories import break_ledger

BUYER = 5590563715


@pytest.fixture
def finance_user(db):
    return get_user_model().objects.create_user("fiona", password="x", is_staff=True)


@pytest.mark.django_db
def test_reprocess_applies_a_failed_delivery_and_audits_it(monkeypatch, finance_user):
    escrow = incident_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, INCIDENT_TX)
    response = staff.reprocess_receipt(
        receipt_id=receipt.pk, actor_id=finance_user.pk, reason="provider retries exhausted"
    )
    assert response.status == 200 and response.body["outcome"] == "applied"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert wallet(BUYER) == Decimal("11.61")
    action = StaffAction.objects.get()
    assert action.actor == finance_user and action.action == "reprocess_receipt"
    assert action.escrow == escrow and action.reason == "provider retries exhausted"


@pytest.mark.django_db
def test_reprocess_needs_a_reason_and_writes_nothing_without_one(monkeypatch, finance_user):
    escrow = incident_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, INCIDENT_TX)
    before = snapshot()
    with pytest.raises(ApplicationError, match="reason"):
        staff.reprocess_receipt(receipt_id=receipt.pk, actor_id=finance_user.pk, reason="  ")
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_a_reprocess_that_fails_again_leaves_no_audit_row(monkeypatch, finance_user):
    escrow = incident_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, INCIDENT_TX)
    break_ledger(monkeypatch)
    response = staff.reprocess_receipt(
        receipt_id=receipt.pk, actor_id=finance_user.pk, reason="try"
    )
    assert response.status == 500
    assert not StaffAction.objects.exists()
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.FAILED and receipt.attempts == 2


@pytest.mark.django_db
def test_confirm_by_hand_is_the_incident_repair_done_right(client, finance_user):
    escrow = incident_escrow()
    evidence = staff.PaymentEvidence(
        tx_id=INCIDENT_TX, usd_amount=Decimal("101.00"), coin="LTC", crypto_amount=Decimal("0.9187")
    )
    response = staff.confirm_payment_by_hand(
        escrow_id=escrow.escrow_id,
        evidence=evidence,
        actor_id=finance_user.pk,
        reason="confirmed on the LTC explorer",
    )
    assert response.body["outcome"] == "applied"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.expires_at is not None and escrow.delivery_deadline is not None
    assert wallet(BUYER) == Decimal("11.61")
    assert Transaction.objects.filter(transaction_id="ESC_ES101325WZY2_6462e85a").exists()
    assert StaffAction.objects.get().action == "confirm_payment_by_hand"
    assert_ledger_balanced()
    # The provider's own (late) delivery of the same payment is a duplicate, not a second payment.
    before = snapshot()
    late = post(client, payload(tx_id=INCIDENT_TX))
    assert late.status_code == 200 and late.json()["outcome"] == "duplicate"
    assert snapshot() == before


@pytest.mark.django_db
def test_confirm_by_hand_refuses_bad_evidence(finance_user):
    escrow = incident_escrow()
    before = snapshot()
    with pytest.raises(ApplicationError):
        staff.confirm_payment_by_hand(
            escrow_id=escrow.escrow_id,
            evidence=staff.PaymentEvidence(tx_id="", usd_amount=Decimal("5")),
            actor_id=finance_user.pk,
            reason="r",
        )
    with pytest.raises(ApplicationError):
        staff.confirm_payment_by_hand(
            escrow_id="ES000000NONE",
            evidence=staff.PaymentEvidence(tx_id="t", usd_amount=Decimal("5")),
            actor_id=finance_user.pk,
            reason="r",
        )
    assert snapshot() == before


@pytest.mark.django_db
def test_parked_payment_can_be_attached_to_its_escrow_once(client, finance_user):
    escrow = incident_escrow()
    assert (
        post(client, payload(escrow_id="ES10132SWZY2", tx_id="tx-typo")).json()["outcome"]
        == "parked"
    )
    receipt = WebhookReceipt.objects.get()
    outcome = staff.attach_suspense_payment(
        receipt_id=receipt.pk,
        escrow_id=escrow.escrow_id,
        actor_id=finance_user.pk,
        reason="buyer typed the reference wrong",
    )
    assert outcome.kind == "confirmed"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert ledger.system_account(kind=AccountKind.SUSPENSE).balance == 0
    assert wallet(BUYER) == Decimal("11.61")
    receipt.refresh_from_db()
    assert not receipt.flagged
    assert_ledger_balanced()
    with pytest.raises(ApplicationError):
        staff.attach_suspense_payment(
            receipt_id=receipt.pk,
            escrow_id=escrow.escrow_id,
            actor_id=finance_user.pk,
            reason="again",
        )
    assert wallet(BUYER) == Decimal("11.61")


@pytest.mark.django_db
def test_parked_payment_can_be_credited_to_a_wallet(client, finance_user):
    assert (
        post(client, payload(escrow_id="", tx_id="tx-noref", base_amount="20.00")).json()["outcome"]
        == "parked"
    )
    receipt = WebhookReceipt.objects.get()
    staff.refund_suspense_payment(
        receipt_id=receipt.pk,
        customer_id=42,
        actor_id=finance_user.pk,
        reason="customer proved payment",
    )
    assert wallet(42) == Decimal("20.00")
    assert ledger.system_account(kind=AccountKind.SUSPENSE).balance == 0
    assert StaffAction.objects.get().action == "refund_suspense_payment"
    assert_ledger_balanced()


@pytest.mark.django_db
def test_attach_requires_a_parked_receipt(client, finance_user):
    escrow = make_escrow()
    post(client, payload(escrow_id=escrow.escrow_id, tx_id="tx-ok"))
    receipt = WebhookReceipt.objects.get()
    with pytest.raises(ApplicationError, match="not a parked payment"):
        staff.attach_suspense_payment(
            receipt_id=receipt.pk, escrow_id=escrow.escrow_id, actor_id=finance_user.pk, reason="r"
        )


@pytest.mark.django_db
def test_a_flagged_late_payment_can_be_acknowledged_once(client, finance_user):
    from escrow import services as escrow_services

    escrow = incident_escrow()
    escrow_services.cancel_escrow(escrow_id=escrow.escrow_id)
    assert post(client, payload(tx_id="tx-late")).json()["outcome"] == "applied"
    receipt = WebhookReceipt.objects.get()
    assert receipt.flagged
    staff.acknowledge_receipt(receipt_id=receipt.pk, actor_id=finance_user.pk, reason="buyer told")
    receipt.refresh_from_db()
    assert not receipt.flagged
    assert StaffAction.objects.get().action == "acknowledge_receipt"
    with pytest.raises(ApplicationError, match="not flagged"):
        staff.acknowledge_receipt(receipt_id=receipt.pk, actor_id=finance_user.pk, reason="again")


@pytest.mark.django_db
def test_parked_money_cannot_be_acknowledged_away(client, finance_user):
    post(client, payload(escrow_id="ES000000NOPE", tx_id="tx-parked"))
    receipt = WebhookReceipt.objects.get()
    with pytest.raises(ApplicationError, match="suspense"):
        staff.acknowledge_receipt(receipt_id=receipt.pk, actor_id=finance_user.pk, reason="r")
    receipt.refresh_from_db()
    assert receipt.flagged and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_a_failed_delivery_stays_linked_to_its_escrow(monkeypatch):
    escrow = incident_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, INCIDENT_TX)
    assert receipt.escrow_id == escrow.pk
    assert receipt.escrow_ref == escrow.escrow_id
    assert receipt.tx_id == INCIDENT_TX and receipt.event == "payment.confirmed"


@pytest.mark.django_db
def test_ledger_rows_of_a_staff_confirmation_name_the_staff_member(finance_user):
    from wallets.models import Transfer

    escrow = incident_escrow()
    staff.confirm_payment_by_hand(
        escrow_id=escrow.escrow_id,
        evidence=staff.PaymentEvidence(tx_id=INCIDENT_TX, usd_amount=Decimal("101.00")),
        actor_id=finance_user.pk,
        reason="explorer",
    )
    payment_transfers = Transfer.objects.filter(escrow=escrow)
    assert payment_transfers.count() == 2
    assert {t.actor_id for t in payment_transfers} == {finance_user.pk}

"""Staff repairs of payment outcomes, each audited and through the same code as webhooks.

These replace the raw SQL of the incident: reprocess a failed delivery, confirm a payment
by hand from provider evidence (stored as a receipt and processed exactly like a webhook,
so a later real webhook for the same transaction is a duplicate, not a second payment),
and place money parked in suspense onto an escrow or into a customer's wallet.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from escrow import services as escrow_services
from escrow.audit import record_staff_action
from escrow.models import Escrow
from escrowsite.errors import ApplicationError, NotFound
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.parsing import PROVIDER, EventType, MalformedPayload, parse_notification
from payments.services import (
    DeliveryResponse,
    StaffAudit,
    clean_headers,
    run_processing,
)
from wallets import ledger
from wallets.models import AccountKind, Transaction, TransactionType, TransferKind
from wallets.money import quantize_usd


def _require_reason(reason: str) -> str:
    if not (reason or "").strip():
        raise ApplicationError("A reason is required for every staff action.")
    return reason.strip()


def reprocess_receipt(*, receipt_id: int, actor_id: int, reason: str) -> DeliveryResponse:
    """Process a failed (or stuck) delivery again, audited. Applied ones are a no-op.

    On failure the receipt records the new attempt and traceback and no audit row is
    written (the action did not happen); the response says 500.
    """
    _require_reason(reason)
    receipt = WebhookReceipt.objects.filter(pk=receipt_id).only("signature_valid").first()
    if receipt is None:
        raise NotFound(f"Webhook receipt #{receipt_id} does not exist.")
    if not receipt.signature_valid:
        raise ApplicationError("An unauthenticated delivery is never processed.")
    return run_processing(
        receipt_id=receipt_id,
        source="staff",
        actor_id=actor_id,
        audit=StaffAudit(actor_id=actor_id, action="reprocess_receipt", reason=reason),
    )


@dataclass(frozen=True)
class PaymentEvidence:
    """What staff read off the provider's dashboard or the blockchain."""

    tx_id: str
    usd_amount: Decimal
    coin: str = ""
    crypto_amount: Decimal | None = None
    paid_at: datetime | None = None
    provider_payment_id: str = ""


def confirm_payment_by_hand(
    *, escrow_id: str, evidence: PaymentEvidence, actor_id: int, reason: str
) -> DeliveryResponse:
    """Record a payment the provider never (successfully) told us about, audited.

    It is stored as a receipt shaped exactly like the provider's webhook and processed by
    the webhook code, so the payment policy (over/under/late) applies unchanged and the
    provider's own delivery of the same transaction later dedupes against it.
    """
    reason = _require_reason(reason)
    if not Escrow.objects.filter(escrow_id=escrow_id).exists():
        raise NotFound(f"Escrow {escrow_id} does not exist.", {"escrow_id": escrow_id})
    if not evidence.tx_id.strip():
        raise ApplicationError("The provider transaction id (tx hash) is required.")
    if evidence.usd_amount <= 0:
        raise ApplicationError("The USD amount must be positive.")
    body = {
        "event": EventType.CONFIRMED,
        "id": evidence.provider_payment_id or f"staff:{evidence.tx_id.strip()}",
        "status": "confirmed",
        "txId": evidence.tx_id.strip(),
        "base_amount": str(quantize_usd(evidence.usd_amount)),
        "base_currency": "USD",
        "paid_amount": str(evidence.crypto_amount) if evidence.crypto_amount is not None else None,
        "paid_currency": evidence.coin.upper(),
        "meta_data": {"refId": escrow_id},
        "created_at": (evidence.paid_at or timezone.now()).isoformat(),
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    try:
        parse_notification(raw)
    except MalformedPayload as exc:
        raise ApplicationError(f"The evidence is not a valid payment: {exc}") from None
    receipt = _store_staff_receipt(raw, actor_id=actor_id)
    return run_processing(
        receipt_id=receipt.pk,
        source="staff",
        actor_id=actor_id,
        audit=StaffAudit(actor_id=actor_id, action="confirm_payment_by_hand", reason=reason),
    )


def _store_staff_receipt(raw: bytes, *, actor_id: int) -> WebhookReceipt:
    with transaction.atomic(durable=True):
        return WebhookReceipt.objects.create(
            provider=PROVIDER,
            remote_ip=None,
            headers=clean_headers({"X-Entered-By-Staff": str(actor_id)}),
            body=raw,
            body_size=len(raw),
            body_sha256=hashlib.sha256(raw).hexdigest(),
            # Trusted because an authenticated staff member with the permission entered
            # it; the audit row says who.
            signature_valid=True,
        )


def _lock_parked(receipt_id: int) -> tuple[WebhookReceipt, Decimal]:
    try:
        receipt = WebhookReceipt.objects.select_for_update().get(pk=receipt_id)
    except WebhookReceipt.DoesNotExist:
        raise NotFound(f"Webhook receipt #{receipt_id} does not exist.") from None
    if receipt.outcome != Outcome.PARKED or not receipt.flagged:
        raise ApplicationError(
            f"Receipt #{receipt_id} is not a parked payment awaiting staff "
            f"(outcome {receipt.outcome}).",
        )
    record = Transaction.objects.filter(
        provider=PROVIDER, external_tx_id=receipt.tx_id, type=TransactionType.SUSPENSE
    ).first()
    if record is None:
        raise ApplicationError(f"Receipt #{receipt_id} has no money in suspense.")
    return receipt, record.amount


def _release_from_suspense(receipt: WebhookReceipt, amount: Decimal, *, actor_id: int) -> None:
    """Move the parked amount back to the provider's clearing account, so the normal
    payment path can then apply it as if it had arrived with the right reference."""
    ledger.post_transfer(
        debit=ledger.system_account(kind=AccountKind.SUSPENSE),
        credit=ledger.clearing_account(provider=PROVIDER),
        amount=amount,
        kind=TransferKind.SUSPENSE_RESOLUTION,
        idempotency_key=f"{PROVIDER}:{receipt.tx_id}:suspense_resolution",
        reference=f"{PROVIDER}:{receipt.tx_id}",
        memo=f"resolving parked receipt #{receipt.pk}",
        actor_id=actor_id,
    )


def attach_suspense_payment(
    *, receipt_id: int, escrow_id: str, actor_id: int, reason: str
) -> escrow_services.PaymentOutcome:
    """Apply a payment parked in suspense to the escrow it was meant for, audited.

    The escrow's payment policy decides as for any payment (confirm, partial, or a late
    credit to the buyer's wallet).
    """
    reason = _require_reason(reason)
    with transaction.atomic(durable=True):
        receipt, amount = _lock_parked(receipt_id)
        note = parse_notification(bytes(receipt.body))
        _release_from_suspense(receipt, amount, actor_id=actor_id)
        payment = note.to_incoming_payment()
        outcome = escrow_services.confirm_payment(
            escrow_id=escrow_id,
            payment=payment,
            source="staff",
            actor_id=actor_id,
            reason=reason,
        )
        receipt.escrow = outcome.escrow
        receipt.flagged = False
        receipt.detail += f" | attached to {escrow_id} by staff: {outcome.kind}"
        receipt.save(update_fields=["escrow", "flagged", "detail"])
        record_staff_action(
            actor_id=actor_id,
            action="attach_suspense_payment",
            reason=reason,
            escrow=outcome.escrow,
            target=f"webhook receipt #{receipt.pk}",
            changes={
                "amount": str(amount),
                "tx_id": receipt.tx_id,
                "escrow_id": escrow_id,
                "outcome": outcome.kind,
                "transactions": [t.transaction_id for t in outcome.transactions],
            },
        )
    return outcome


def refund_suspense_payment(
    *, receipt_id: int, customer_id: int, actor_id: int, reason: str
) -> Transaction:
    """Credit a payment parked in suspense to a customer's wallet, audited."""
    reason = _require_reason(reason)
    with transaction.atomic(durable=True):
        receipt, amount = _lock_parked(receipt_id)
        wallet = ledger.customer_wallet(customer=customer_id)
        transfer = ledger.post_transfer(
            debit=ledger.system_account(kind=AccountKind.SUSPENSE),
            credit=wallet,
            amount=amount,
            kind=TransferKind.SUSPENSE_RESOLUTION,
            idempotency_key=f"{PROVIDER}:{receipt.tx_id}:suspense_resolution",
            reference=f"{PROVIDER}:{receipt.tx_id}",
            memo=f"parked receipt #{receipt.pk} credited to customer {customer_id}",
            actor_id=actor_id,
        )
        record = Transaction.objects.create(
            transaction_id=f"SUSREF_{receipt.tx_id}"[:100],
            customer_id=customer_id,
            type=TransactionType.LATE_PAYMENT_CREDIT,
            amount=amount,
            provider=PROVIDER,
            external_tx_id=receipt.tx_id,
            description=f"Unmatched payment (receipt #{receipt.pk}) credited to wallet by staff",
            confirmed_at=timezone.now(),
        )
        record.transfers.add(transfer)
        receipt.flagged = False
        receipt.detail += f" | credited to customer {customer_id}'s wallet by staff"
        receipt.save(update_fields=["flagged", "detail"])
        record_staff_action(
            actor_id=actor_id,
            action="refund_suspense_payment",
            reason=reason,
            target=f"webhook receipt #{receipt.pk}",
            changes={"amount": str(amount), "tx_id": receipt.tx_id, "customer": customer_id},
        )
    return record


def dedupe_owner(receipt: WebhookReceipt) -> WebhookReceipt | None:
    """The receipt that first claimed this receipt's event, if any (for the admin)."""
    event = (
        PaymentEvent.objects.select_related("receipt")
        .filter(provider=receipt.provider, tx_id=receipt.tx_id, event=receipt.event)
        .first()
    )
    return event.receipt if event else None


def acknowledge_receipt(*, receipt_id: int, actor_id: int, reason: str) -> WebhookReceipt:
    """Staff looked at a flagged delivery (a late payment credited, a shortfall accepted,
    a conflict) and nothing more is needed: it leaves the work queue, audited.

    A parked payment cannot be acknowledged away: its money sits in suspense until staff
    attach it to an escrow or credit it to a wallet.
    """
    reason = _require_reason(reason)
    with transaction.atomic(durable=True):
        try:
            receipt = WebhookReceipt.objects.select_for_update().get(pk=receipt_id)
        except WebhookReceipt.DoesNotExist:
            raise NotFound(f"Webhook receipt #{receipt_id} does not exist.") from None
        if not receipt.flagged:
            raise ApplicationError(f"Receipt #{receipt_id} is not flagged for staff.")
        if receipt.outcome == Outcome.PARKED:
            raise ApplicationError(
                f"Receipt #{receipt_id} parked money in suspense: attach it to an escrow or "
                "credit it to a wallet instead."
            )
        if receipt.outcome not in (Outcome.APPLIED, Outcome.CONFLICT, Outcome.DUPLICATE):
            raise ApplicationError(
                f"Receipt #{receipt_id} is {receipt.outcome}; only a final outcome can be "
                "acknowledged."
            )
        receipt.flagged = False
        receipt.detail += " | acknowledged by staff"
        receipt.save(update_fields=["flagged", "detail"])
        record_staff_action(
            actor_id=actor_id,
            action="acknowledge_receipt",
            reason=reason,
            escrow=receipt.escrow,
            target=f"webhook receipt #{receipt.pk}",
            changes={"flagged": [True, False], "outcome": receipt.outcome},
        )
    return receipt

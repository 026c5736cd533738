"""Applying a payment to an escrow: confirm it, add to it, or credit it back (the policy)."""

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from escrow.fees import payment_tolerance
from escrow.models import Escrow, EscrowHolding, HoldingStatus
from escrow.services.common import (
    ORM_WRITES,
    IncomingPayment,
    PaymentOutcome,
    S,
    Writes,
    _notify,
    _open_holding,
    _record,
    _set_status,
    lock_escrow,
)
from escrow.transitions import AWAITING_PAYMENT
from escrowsite.errors import ApplicationError
from notifications.services import enqueue_notification
from wallets import ledger
from wallets.models import (
    Account,
    Transaction,
    TransactionType,
    Transfer,
    TransferKind,
)
from wallets.money import quantize_usd

# --- payment -------------------------------------------------------------------------


def _payment_amount(payment: IncomingPayment) -> Decimal:
    value = payment.usd_amount
    if not isinstance(value, Decimal) or isinstance(value, bool):
        raise ApplicationError("A payment amount must be a Decimal.", {"amount": repr(value)})
    if not value.is_finite():
        raise ApplicationError("A payment amount must be a finite number.", {"amount": str(value)})
    amount = quantize_usd(value)
    if amount <= 0:
        raise ApplicationError("A payment must be positive.", {"amount": str(value)})
    return amount


def confirm_payment(
    *,
    escrow_id: str,
    payment: IncomingPayment,
    source: str = "webhook",
    actor_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> PaymentOutcome:
    """Apply one confirmed payment to an escrow: confirm it, add to it, or credit it back.

    - Awaiting payment and the total paid reaches the total due within tolerance: the
      holding gets at most the total due, any excess goes to the buyer's wallet as its own
      transfer and record, and the escrow moves to payment_confirmed with its deadlines.
    - Awaiting payment and still short beyond tolerance: the amount is held and the escrow
      is partially_paid until later payments add up.
    - Anything else (cancelled, expired, already paid, ...): the whole amount is credited
      to the buyer's wallet as a late/extra payment. It is never rejected or lost.
    - The same provider transaction again: nothing moves (kind `duplicate`). Raises
      ApplicationError if it was applied to another escrow or with another amount.
    """
    amount = _payment_amount(payment)
    if not payment.tx_id or not payment.provider:
        raise ApplicationError("A payment needs its provider and provider transaction id.")
    now = now or timezone.now()
    key = f"{payment.provider}:{payment.tx_id}"
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        status_before = escrow.status
        outcome = _previous_application(escrow, payment, key, amount)
        if outcome is None:
            clearing = ledger.clearing_account(provider=payment.provider, currency=escrow.currency)
            if escrow.status not in AWAITING_PAYMENT:
                outcome = _credit_late_payment(
                    escrow, payment, amount, clearing, key, now, actor_id
                )
            else:
                outcome = _apply_to_holding(
                    escrow,
                    payment,
                    amount,
                    clearing,
                    key,
                    now,
                    source,
                    actor_id,
                    reason,
                    holding=_open_holding(escrow),
                    buyer_wallet=lambda: ledger.customer_wallet(
                        customer=escrow.buyer_id, currency=escrow.currency
                    ),
                    writes=ORM_WRITES,
                )
        outcome.status_before = status_before
        return outcome


def _previous_application(
    escrow: Escrow, payment: IncomingPayment, key: str, amount: Decimal
) -> PaymentOutcome | None:
    """The outcome of an earlier application of this provider transaction, if any.

    Without this, a replay after confirmation would be credited again as a "late"
    payment, and a replay while partially paid would count the same money twice.
    """
    first_keys = [f"{key}:escrow_payment", f"{key}:late_payment_credit"]
    first = Transfer.objects.select_related("escrow").filter(idempotency_key__in=first_keys).first()
    if first is None:
        return None
    if first.escrow_id != escrow.pk:
        other = first.escrow.escrow_id if first.escrow else "none"
        raise ApplicationError(
            f"Payment {key} was already applied to escrow {other}; not applying it to "
            f"{escrow.escrow_id}.",
            {"payment": key, "applied_to": other, "escrow_id": escrow.escrow_id},
        )
    transfers = list(Transfer.objects.filter(escrow=escrow, reference=key).order_by("pk"))
    applied = sum((t.amount for t in transfers), Decimal("0.00"))
    if applied != amount:
        raise ApplicationError(
            f"Payment {key} was already applied to {escrow.escrow_id} as {applied}, not {amount}.",
            {"payment": key, "applied": str(applied), "amount": str(amount)},
        )
    records = Transaction.objects.filter(
        escrow=escrow, provider=payment.provider, external_tx_id=payment.tx_id
    ).order_by("pk")
    return PaymentOutcome(
        kind="duplicate", escrow=escrow, transactions=list(records), transfers=transfers
    )


def _apply_to_holding(
    escrow: Escrow,
    payment: IncomingPayment,
    amount: Decimal,
    clearing: Account,
    key: str,
    now: datetime,
    source: str,
    actor_id: int | None,
    reason: str,
    *,
    holding: EscrowHolding,
    buyer_wallet: Callable[[], Account],
    writes: Writes,
) -> PaymentOutcome:
    """Add a payment to the escrow's holding and confirm the escrow once it is paid.

    The one place this policy lives; `writes` decides whether the rows are saved one by
    one (ORM, any database) or collected into one statement (the PostgreSQL hot path).
    `buyer_wallet()` gives the wallet, row-locked if the writes need it so.
    """
    if escrow.status == S.CREATED:
        # Money never waits on a missed step: move on to payment_pending first.
        _set_status(
            escrow, S.PAYMENT_PENDING, now=now, source=source, actor_id=actor_id, writes=writes
        )
    paid_before = holding.account.balance
    # The holding never holds more than the total due: the excess is its own transfer.
    to_holding = min(amount, escrow.total_due - paid_before)
    excess = amount - to_holding
    paid = paid_before + to_holding
    reached = paid >= escrow.total_due - payment_tolerance(escrow.total_due)

    legs = [
        ledger.Leg(
            clearing,
            holding.account,
            to_holding,
            TransferKind.ESCROW_PAYMENT,
            f"{key}:escrow_payment",
            escrow.pk,
            key,
            actor_id=actor_id,
        )
    ]
    if excess:
        legs.append(
            ledger.Leg(
                clearing,
                buyer_wallet(),
                excess,
                TransferKind.OVERPAYMENT_CREDIT,
                f"{key}:overpayment_credit",
                escrow.pk,
                key,
                actor_id=actor_id,
            )
        )
    transfers = writes.post(legs)
    outcome = PaymentOutcome(kind="partial", escrow=escrow, transfers=transfers, excess=excess)
    note = f"{to_holding} applied" + (f", {excess} credited to wallet" if excess else "")
    outcome.transactions.append(
        _record(
            prefix="ESC",
            escrow=escrow,
            type=TransactionType.ESCROW_PAYMENT,
            customer_id=escrow.buyer_id,
            amount=amount,
            transfers=transfers,
            description=f"Escrow payment for {escrow.escrow_id} ({note})",
            now=now,
            payment=payment,
            writes=writes,
        )
    )
    if excess:
        outcome.transactions.append(
            _record(
                prefix="OVP",
                escrow=escrow,
                type=TransactionType.OVERPAYMENT_CREDIT,
                customer_id=escrow.buyer_id,
                amount=excess,
                transfers=transfers[1:],
                description=f"Overpayment on {escrow.escrow_id} credited to wallet",
                now=now,
                payment=payment,
                with_crypto=False,
                writes=writes,
            )
        )

    update = []
    if reached:
        outcome.kind = "confirmed"
        outcome.shortfall = escrow.total_due - paid
        _set_status(
            escrow,
            S.PAYMENT_CONFIRMED,
            now=now,
            source=source,
            actor_id=actor_id,
            reason=reason,
            writes=writes,
        )
        escrow.accepted_shortfall = outcome.shortfall
        escrow.payment_confirmed_at = now
        escrow.delivery_deadline = now + timedelta(hours=escrow.delivery_hours)
        escrow.expires_at = now + timedelta(hours=settings.ESCROW_SELLER_RESPONSE_HOURS)
        escrow.deposit_tx_hash = payment.tx_id
        update += [
            "status",
            "status_changed_at",
            "accepted_shortfall",
            "payment_confirmed_at",
            "delivery_deadline",
            "expires_at",
            "deposit_tx_hash",
        ]
        holding.status = HoldingStatus.HELD
        writes.save(holding, ["status"])
        _notify(
            escrow,
            "offer_to_seller",
            escrow.seller_id,
            writes=writes,
            amount=escrow.amount,
            delivery_hours=escrow.delivery_hours,
        )
        _notify(
            escrow,
            "payment_confirmed",
            escrow.buyer_id,
            writes=writes,
            paid=amount,
            excess=excess,
            shortfall=outcome.shortfall,
        )
    else:
        if escrow.status != S.PARTIALLY_PAID:
            _set_status(
                escrow,
                S.PARTIALLY_PAID,
                now=now,
                source=source,
                actor_id=actor_id,
                reason=reason,
                writes=writes,
            )
        update += ["status", "status_changed_at"]
        writes.notify(
            [
                {
                    "event": "partial_payment",
                    "recipient_id": escrow.buyer_id,
                    "escrow_id": escrow.pk,
                    "key": f"{escrow.escrow_id}:partial_payment:{key}",
                    "payload": {
                        "event": "partial_payment",
                        "escrow_id": escrow.escrow_id,
                        "paid": str(paid),
                        "total_due": str(escrow.total_due),
                    },
                }
            ]
        )
    if payment.provider_payment_id and not escrow.provider_payment_id:
        escrow.provider_payment_id = payment.provider_payment_id
        escrow.provider = payment.provider
        update += ["provider_payment_id", "provider"]
    writes.save(escrow, update)
    return outcome


def _credit_late_payment(
    escrow: Escrow,
    payment: IncomingPayment,
    amount: Decimal,
    clearing: Account,
    key: str,
    now: datetime,
    actor_id: int | None = None,
) -> PaymentOutcome:
    """Money for an escrow that no longer takes payments goes to the buyer's wallet."""
    wallet = ledger.customer_wallet(customer=escrow.buyer_id, currency=escrow.currency)
    transfers = ledger.post_transfers(
        [
            ledger.Leg(
                clearing,
                wallet,
                amount,
                TransferKind.LATE_PAYMENT_CREDIT,
                f"{key}:late_payment_credit",
                escrow.pk,
                key,
                memo=f"payment arrived while escrow was {escrow.status}",
                actor_id=actor_id,
            )
        ]
    )
    record = _record(
        prefix="LATE",
        escrow=escrow,
        type=TransactionType.LATE_PAYMENT_CREDIT,
        customer_id=escrow.buyer_id,
        amount=amount,
        transfers=transfers,
        description=(
            f"Payment for {escrow.escrow_id} arrived while it was {escrow.status}; "
            "credited to wallet"
        ),
        now=now,
        payment=payment,
    )
    enqueue_notification(
        event="late_payment_credited",
        recipient_id=escrow.buyer_id,
        escrow_id=escrow.pk,
        key=f"{escrow.escrow_id}:late_payment_credited:{key}",
        payload={
            "event": "late_payment_credited",
            "escrow_id": escrow.escrow_id,
            "amount": str(amount),
            "status": escrow.status,
        },
    )
    return PaymentOutcome(
        kind="late_credit", escrow=escrow, transactions=[record], transfers=transfers
    )

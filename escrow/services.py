"""Escrow lifecycle services: every status change and every escrow money movement.

Each service locks the escrow row first (select_for_update), checks the transition table,
then writes the status, the ledger transfers (one wallets.ledger call), the transaction
records and the outbox rows. Services join the caller's transaction inside a savepoint, so
a refusal undoes only the service's own writes and leaves the caller's transaction usable;
top-level callers (webhook processing, commands, admin actions) wrap them in
transaction.atomic(durable=True).

One module rather than a package, although it is long: the payments fault-injection tests
patch the helpers of the payment path (`_record`, `_set_status`, `_notify`, ...) by name
here, and a split would silently move those names out from under them.
"""

import re
import secrets
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from escrow.fees import compute_fees, payment_tolerance
from escrow.models import Escrow, EscrowHolding, EscrowStatus, FeeSplit, HoldingStatus, StatusChange
from escrow.transitions import AWAITING_PAYMENT, check_transition
from escrowsite.errors import ApplicationError, IllegalTransition, NotFound
from notifications.services import enqueue_notification, enqueue_notifications
from wallets import ledger
from wallets.models import (
    Account,
    AccountKind,
    Customer,
    Transaction,
    TransactionType,
    Transfer,
    TransferKind,
)
from wallets.money import USD, quantize_usd

S = EscrowStatus
ZERO = Decimal("0.00")

# --- values and helpers ------------------------------------------------------------------

ESCROW_ID_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class IncomingPayment:
    """A provider-neutral payment: what arrived, from whom, for which transaction.

    `usd_amount` is authoritative for the escrow; the crypto amount is kept for records.
    """

    provider: str
    tx_id: str
    usd_amount: Decimal
    crypto_amount: Decimal | None = None
    crypto_currency: str = ""
    paid_at: datetime | None = None
    provider_payment_id: str = ""


@dataclass
class PaymentOutcome:
    """What confirm_payment did.

    `kind` is `confirmed`, `partial`, `late_credit`, or `duplicate` (this provider
    transaction was already applied to this escrow: nothing moved, and `transactions` and
    `transfers` are the ones the first application wrote).
    """

    kind: str
    escrow: Escrow
    transactions: list[Transaction] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    excess: Decimal = Decimal("0.00")
    shortfall: Decimal = Decimal("0.00")
    status_before: str = ""


def new_escrow_id(*, now: datetime | None = None) -> str:
    """`ES` + MMDDYY + 4 random characters, e.g. ES101325WZY2."""
    now = now or timezone.now()
    suffix = "".join(secrets.choice(ESCROW_ID_ALPHABET) for _ in range(4))
    return f"ES{now:%m%d%y}{suffix}"


def lock_escrow(*, escrow_id: str) -> Escrow:
    """The escrow row, locked for the rest of the transaction. Raises NotFound.

    Every service takes this lock before anything else, so two moves of one escrow are
    serialised and the second one sees the status the first one left.
    """
    try:
        return Escrow.objects.select_for_update().get(escrow_id=escrow_id)
    except Escrow.DoesNotExist:
        raise NotFound(f"Escrow {escrow_id} does not exist.", {"escrow_id": escrow_id}) from None


def _require_status(escrow: Escrow, allowed_from: Iterable[str], to_status: str) -> None:
    """Refuse a move the table allows but this particular service may not make
    (e.g. a buyer's release of a disputed escrow, which only staff may resolve)."""
    if escrow.status not in allowed_from:
        raise IllegalTransition(
            f"Escrow {escrow.escrow_id} cannot move from {escrow.status} to {to_status} this way.",
            {"escrow_id": escrow.escrow_id, "from": escrow.status, "to": to_status},
        )


def _set_status(
    escrow: Escrow,
    to_status: str,
    *,
    now: datetime,
    source: str,
    actor_id: int | None = None,
    reason: str = "",
) -> None:
    """Check the move against the table, then record it; the caller saves the escrow."""
    check_transition(escrow_id=escrow.escrow_id, from_status=escrow.status, to_status=to_status)
    StatusChange.objects.create(
        escrow=escrow,
        from_status=escrow.status,
        to_status=to_status,
        actor_id=actor_id,
        source=source,
        reason=reason,
    )
    escrow.status = to_status
    escrow.status_changed_at = now


def _record(
    *,
    prefix: str,
    escrow: Escrow,
    type: str,
    customer_id: int,
    amount: Decimal,
    transfers: list[Transfer],
    description: str,
    now: datetime,
    payment: IncomingPayment | None = None,
    with_crypto: bool = True,
) -> Transaction:
    """Write a transaction record such as ESC_ES101325WZY2_6462e85a and link its transfers.

    `with_crypto=False` leaves the coin amount off a record that carries only part of a
    payment, so a USD figure never sits next to a coin amount that is not its own.
    """
    tx_id = payment.tx_id if payment else ""
    if payment:
        transaction_id = f"{prefix}_{escrow.escrow_id}_{tx_id[:8]}"
        if Transaction.objects.filter(transaction_id=transaction_id).exists():
            # Two provider transactions that share their first 8 characters.
            transaction_id = f"{prefix}_{escrow.escrow_id}_{tx_id}"[:100]
    else:
        transaction_id = f"{prefix}_{escrow.escrow_id}"
    crypto = payment is not None and with_crypto
    record = Transaction.objects.create(
        transaction_id=transaction_id,
        customer_id=customer_id,
        type=type,
        amount=amount,
        currency=escrow.currency,
        crypto_amount=payment.crypto_amount if crypto else None,
        crypto_currency=payment.crypto_currency if crypto else "",
        provider=payment.provider if payment else "",
        external_tx_id=tx_id,
        escrow=escrow,
        description=description,
        confirmed_at=now,
    )
    record.transfers.add(*transfers)
    return record


def _notify(escrow: Escrow, event: str, recipient_id: int, **payload: object) -> None:
    """One outbox row per party and event: written now, delivered after commit."""
    enqueue_notification(**_notification(escrow, event, recipient_id, **payload))


def _notification(
    escrow: Escrow, event: str, recipient_id: int, **payload: object
) -> dict[str, Any]:
    role = "buyer" if recipient_id == escrow.buyer_id else "seller"
    return {
        "event": event,
        "recipient_id": recipient_id,
        "escrow_id": escrow.pk,
        "key": f"{escrow.escrow_id}:{event}:{role}",
        "payload": {
            "event": event,
            "escrow_id": escrow.escrow_id,
            "status": escrow.status,
            "recipient": recipient_id,
            "role": role,
            **{k: str(v) for k, v in payload.items()},
        },
    }


def _holding(escrow: Escrow) -> EscrowHolding:
    try:
        return EscrowHolding.objects.select_related("account").get(escrow=escrow)
    except EscrowHolding.DoesNotExist:
        raise ApplicationError(
            f"Escrow {escrow.escrow_id} holds no money.", {"escrow_id": escrow.escrow_id}
        ) from None


def _open_holding(escrow: Escrow) -> EscrowHolding:
    """The escrow's holding, created with its ledger account on the first payment.

    The caller holds the escrow's row lock, so nobody else can be creating this holding:
    plain INSERTs are enough (no get_or_create savepoints on the payment path).
    """
    holding = EscrowHolding.objects.select_related("account").filter(escrow=escrow).first()
    if holding is None:
        account = ledger.open_holding_account(escrow_id=escrow.pk, currency=escrow.currency)
        holding = EscrowHolding.objects.create(escrow=escrow, account=account)
    return holding


# --- creation ------------------------------------------------------------------------
ESCROW_ID_FORMAT = re.compile(r"ES\d{6}[A-Z0-9]{4}")
_ID_ATTEMPTS = 10
_DESCRIPTION_MAX = Escrow._meta.get_field("description").max_length


def _check_party(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ApplicationError(
            f"The {name} must be a Telegram user id (a positive integer).", {name: repr(value)}
        )


def create_escrow(
    *,
    buyer_id: int,
    seller_id: int,
    amount: Decimal,
    fee_split: str = FeeSplit.BUYER_PAYS,
    delivery_hours: int | None = None,
    escrow_id: str | None = None,
    description: str = "",
    now: datetime | None = None,
) -> Escrow:
    """A new escrow awaiting payment; it expires after the payment window.

    Unknown customers are created. A given `escrow_id` must have the public format and be
    unused; otherwise one is drawn, and drawn again on the rare collision.
    """
    _check_party("buyer", buyer_id)
    _check_party("seller", seller_id)
    if buyer_id == seller_id:
        raise ApplicationError("Buyer and seller must be different customers.")
    if delivery_hours is None:
        delivery_hours = settings.ESCROW_DEFAULT_DELIVERY_HOURS
    if (
        not isinstance(delivery_hours, int)
        or isinstance(delivery_hours, bool)
        or delivery_hours <= 0
    ):
        # 0 is refused, not quietly replaced by the default.
        raise ApplicationError(
            "Delivery hours must be a positive whole number.", {"delivery_hours": delivery_hours}
        )
    if escrow_id is not None and not ESCROW_ID_FORMAT.fullmatch(escrow_id):
        raise ApplicationError(
            f"{escrow_id!r} is not a valid escrow id (ES + MMDDYY + 4 letters or digits).",
            {"escrow_id": escrow_id},
        )
    if len(description) > _DESCRIPTION_MAX:
        raise ApplicationError(f"The description is longer than {_DESCRIPTION_MAX} characters.")
    fees = compute_fees(amount=amount, fee_split=fee_split)
    now = now or timezone.now()
    fields = {
        "buyer_id": buyer_id,
        "seller_id": seller_id,
        "amount": amount,
        "currency": USD,
        "fee_split": fee_split,
        "fee_amount": fees.fee_amount,
        "buyer_fee": fees.buyer_fee,
        "seller_fee": fees.seller_fee,
        "total_due": fees.total_due,
        "status": EscrowStatus.PAYMENT_PENDING,
        "delivery_hours": delivery_hours,
        "description": description,
        "expires_at": now + timedelta(minutes=settings.ESCROW_PAYMENT_WINDOW_MINUTES),
        "status_changed_at": now,
    }
    with transaction.atomic():
        Customer.objects.bulk_create(
            [Customer(telegram_id=buyer_id), Customer(telegram_id=seller_id)],
            ignore_conflicts=True,
        )
        escrow = _insert(fields, escrow_id=escrow_id, now=now)
        StatusChange.objects.create(
            escrow=escrow,
            from_status=EscrowStatus.CREATED,
            to_status=EscrowStatus.PAYMENT_PENDING,
            source="create",
        )
    return escrow


def _insert(fields: dict[str, object], *, escrow_id: str | None, now: datetime) -> Escrow:
    for _ in range(_ID_ATTEMPTS):
        candidate = escrow_id or new_escrow_id(now=now)
        try:
            with transaction.atomic():
                return Escrow.objects.create(escrow_id=candidate, **fields)
        except IntegrityError:
            # The insert waited for any concurrent holder of the id, so it is visible now;
            # if it is not, the error was something else and must not be hidden.
            if not Escrow.objects.filter(escrow_id=candidate).exists():
                raise
            if escrow_id is not None:
                raise ApplicationError(
                    f"Escrow {escrow_id} already exists.", {"escrow_id": escrow_id}
                ) from None
    raise ApplicationError("Could not allocate a unique escrow id; try again.")


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
                if escrow.status == S.CREATED:
                    # Money never waits on a missed step: move on to payment_pending first.
                    _set_status(
                        escrow, S.PAYMENT_PENDING, now=now, source=source, actor_id=actor_id
                    )
                outcome = _apply_to_holding(
                    escrow, payment, amount, clearing, key, now, source, actor_id, reason
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
) -> PaymentOutcome:
    holding = _open_holding(escrow)
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
        buyer_wallet = ledger.customer_wallet(customer=escrow.buyer_id, currency=escrow.currency)
        legs.append(
            ledger.Leg(
                clearing,
                buyer_wallet,
                excess,
                TransferKind.OVERPAYMENT_CREDIT,
                f"{key}:overpayment_credit",
                escrow.pk,
                key,
                actor_id=actor_id,
            )
        )
    transfers = ledger.post_transfers(legs)
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
            )
        )

    update = []
    if reached:
        outcome.kind = "confirmed"
        outcome.shortfall = escrow.total_due - paid
        _set_status(
            escrow, S.PAYMENT_CONFIRMED, now=now, source=source, actor_id=actor_id, reason=reason
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
        holding.save(update_fields=["status"])
        _notify(
            escrow,
            "offer_to_seller",
            escrow.seller_id,
            amount=escrow.amount,
            delivery_hours=escrow.delivery_hours,
        )
        _notify(
            escrow,
            "payment_confirmed",
            escrow.buyer_id,
            paid=amount,
            excess=excess,
            shortfall=outcome.shortfall,
        )
    else:
        if escrow.status != S.PARTIALLY_PAID:
            _set_status(
                escrow, S.PARTIALLY_PAID, now=now, source=source, actor_id=actor_id, reason=reason
            )
        update += ["status", "status_changed_at"]
        enqueue_notification(
            event="partial_payment",
            recipient_id=escrow.buyer_id,
            escrow_id=escrow.pk,
            key=f"{escrow.escrow_id}:partial_payment:{key}",
            payload={
                "event": "partial_payment",
                "escrow_id": escrow.escrow_id,
                "paid": str(paid),
                "total_due": str(escrow.total_due),
            },
        )
    if payment.provider_payment_id and not escrow.provider_payment_id:
        escrow.provider_payment_id = payment.provider_payment_id
        escrow.provider = payment.provider
        update += ["provider_payment_id", "provider"]
    escrow.save(update_fields=update)
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


# --- after payment -------------------------------------------------------------------
# A buyer (or the auto-release sweep) may release only these; a disputed escrow is
# frozen until staff resolve it.
RELEASABLE = (S.ACTIVE, S.DELIVERED)
RESOLUTIONS = ("refund", "release", "split")
# What a release or refund changes on the escrow row besides the money.
_CLOSED_FIELDS = ["status", "status_changed_at", "completed_at", "expires_at", "auto_release_at"]


def _payout(
    escrow: Escrow,
    *,
    to_buyer: Decimal,
    to_seller: Decimal,
    purpose: str,
    now: datetime,
    actor_id: int | None,
) -> list[Transfer]:
    """Empty the holding: the given shares to the parties, the rest to platform revenue.

    If the shares exceed what is held (an underpayment accepted within tolerance), the
    platform's revenue account tops the holding up first: the platform absorbs it.
    """
    holding = _holding(escrow)
    if holding.status not in (HoldingStatus.HELD, HoldingStatus.COLLECTING):
        raise ApplicationError(
            f"The holding of {escrow.escrow_id} is already {holding.status}.",
            {"escrow_id": escrow.escrow_id},
        )
    held = holding.account.balance
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE, currency=escrow.currency)
    remainder = held - to_buyer - to_seller
    wallet = ledger.customer_wallet
    moves = []  # (debit, credit, amount, kind, key suffix)
    if remainder < 0:
        moves.append(
            (revenue, holding.account, -remainder, TransferKind.FEE_SHORTFALL, "fee_shortfall")
        )
    if to_seller:
        seller = wallet(customer=escrow.seller_id, currency=escrow.currency)
        moves.append((holding.account, seller, to_seller, TransferKind.ESCROW_RELEASE, "seller"))
    if to_buyer:
        buyer = wallet(customer=escrow.buyer_id, currency=escrow.currency)
        moves.append((holding.account, buyer, to_buyer, TransferKind.ESCROW_REFUND, "buyer"))
    if remainder > 0:
        moves.append((holding.account, revenue, remainder, TransferKind.FEE, "fee"))
    base = f"escrow:{escrow.escrow_id}:{purpose}"
    legs = [
        ledger.Leg(debit, credit, amount, kind, f"{base}:{suffix}", escrow.pk, actor_id=actor_id)
        for debit, credit, amount, kind, suffix in moves
    ]
    transfers = ledger.post_transfers(legs)
    holding.status = {
        "release": HoldingStatus.RELEASED,
        "refund": HoldingStatus.REFUNDED,
        "split": HoldingStatus.SPLIT,
    }[purpose]
    holding.resolved_at = now
    holding.save(update_fields=["status", "resolved_at"])
    by_kind = {t.kind: t for t in transfers}
    if to_seller:
        _record(
            prefix="REL",
            escrow=escrow,
            type=TransactionType.ESCROW_RELEASE,
            customer_id=escrow.seller_id,
            amount=to_seller,
            transfers=[by_kind[TransferKind.ESCROW_RELEASE]],
            description=f"Release of {escrow.escrow_id} to the seller",
            now=now,
        )
    if to_buyer:
        _record(
            prefix="REF",
            escrow=escrow,
            type=TransactionType.ESCROW_REFUND,
            customer_id=escrow.buyer_id,
            amount=to_buyer,
            transfers=[by_kind[TransferKind.ESCROW_REFUND]],
            description=f"Refund of {escrow.escrow_id} to the buyer",
            now=now,
        )
    return transfers


# --- seller and delivery ------------------------------------------------------------


def accept_escrow(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "bot",
    actor_id: int | None = None,
) -> Escrow:
    """The seller accepts a paid escrow: it becomes active; the delivery clock runs on."""
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        _set_status(escrow, S.ACTIVE, now=now, source=source, actor_id=actor_id)
        escrow.seller_accepted_at = now
        escrow.expires_at = None
        escrow.save(
            update_fields=["status", "status_changed_at", "seller_accepted_at", "expires_at"]
        )
        _notify(escrow, "seller_accepted", escrow.buyer_id)
    return escrow


def decline_escrow(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "bot",
    actor_id: int | None = None,
    reason: str = "",
) -> Escrow:
    """The seller declines (or did not answer in time): full refund, fee included."""
    return refund_escrow(
        escrow_id=escrow_id,
        now=now,
        source=source,
        actor_id=actor_id,
        reason=reason or "seller declined",
        allowed_from=(S.PAYMENT_CONFIRMED,),
    )


def mark_delivered(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "bot",
    actor_id: int | None = None,
) -> Escrow:
    """The seller marks delivery; funds auto-release after the auto-release window."""
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        _set_status(escrow, S.DELIVERED, now=now, source=source, actor_id=actor_id)
        escrow.delivered_at = now
        escrow.auto_release_at = now + timedelta(hours=settings.ESCROW_AUTO_RELEASE_HOURS)
        escrow.save(
            update_fields=["status", "status_changed_at", "delivered_at", "auto_release_at"]
        )
        _notify(escrow, "delivered", escrow.buyer_id)
    return escrow


# --- paying out -----------------------------------------------------------------------


def release_escrow(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "bot",
    actor_id: int | None = None,
    reason: str = "",
) -> Escrow:
    """Pay the seller the amount net of their fee share; fees go to platform revenue.

    Only an active or delivered escrow: a disputed one is released by resolve_dispute.
    """
    return _release(
        escrow_id=escrow_id,
        allowed_from=RELEASABLE,
        now=now,
        source=source,
        actor_id=actor_id,
        reason=reason,
    )


def _release(
    *,
    escrow_id: str,
    allowed_from: Iterable[str],
    now: datetime | None,
    source: str,
    actor_id: int | None,
    reason: str,
) -> Escrow:
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        _require_status(escrow, allowed_from, S.COMPLETED)
        _set_status(escrow, S.COMPLETED, now=now, source=source, actor_id=actor_id, reason=reason)
        to_seller = escrow.amount - escrow.seller_fee
        _payout(
            escrow,
            to_buyer=ZERO,
            to_seller=to_seller,
            purpose="release",
            now=now,
            actor_id=actor_id,
        )
        escrow.completed_at = now
        escrow.expires_at = None
        escrow.auto_release_at = None
        escrow.save(update_fields=_CLOSED_FIELDS)
        _notify(escrow, "released", escrow.seller_id, amount=to_seller)
        _notify(escrow, "released", escrow.buyer_id)
    return escrow


def refund_escrow(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "staff",
    actor_id: int | None = None,
    reason: str = "",
    allowed_from: tuple[str, ...] | None = None,
) -> Escrow:
    """Return everything the holding holds (fee included) to the buyer's wallet.

    `allowed_from` narrows the statuses the table allows (decline, dispute resolution).
    """
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        if allowed_from is not None:
            _require_status(escrow, allowed_from, S.REFUNDED)
        _set_status(escrow, S.REFUNDED, now=now, source=source, actor_id=actor_id, reason=reason)
        held = _holding(escrow).account.balance
        _payout(escrow, to_buyer=held, to_seller=ZERO, purpose="refund", now=now, actor_id=actor_id)
        escrow.completed_at = now
        escrow.expires_at = None
        escrow.auto_release_at = None
        escrow.save(update_fields=_CLOSED_FIELDS)
        _notify(escrow, "refunded", escrow.buyer_id, amount=held)
        _notify(escrow, "refunded", escrow.seller_id)
    return escrow


# --- closing unpaid escrows -------------------------------------------------------------


def cancel_escrow(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "bot",
    actor_id: int | None = None,
    reason: str = "",
) -> Escrow:
    """Cancel an escrow that holds no money yet."""
    return _close_unpaid(escrow_id, S.CANCELLED, now, source, actor_id, reason)


def expire_escrow(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "sweep",
    actor_id: int | None = None,
    reason: str = "",
) -> Escrow:
    """Expire an escrow whose payment window passed without any payment.

    Re-checked under the lock, so a sweep acting on a stale list can neither expire a
    paid escrow nor one whose window is still open.
    """
    return _close_unpaid(escrow_id, S.EXPIRED, now, source, actor_id, reason)


def _close_unpaid(
    escrow_id: str,
    to_status: str,
    now: datetime | None,
    source: str,
    actor_id: int | None,
    reason: str,
) -> Escrow:
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        check_transition(escrow_id=escrow_id, from_status=escrow.status, to_status=to_status)
        if to_status == S.EXPIRED and (escrow.expires_at is None or escrow.expires_at > now):
            raise ApplicationError(
                f"Escrow {escrow_id}'s payment window is still open (until "
                f"{escrow.expires_at:%Y-%m-%d %H:%M} UTC)."
                if escrow.expires_at
                else f"Escrow {escrow_id} has no payment window to expire; cancel it instead.",
                {"escrow_id": escrow_id, "expires_at": str(escrow.expires_at)},
            )
        _set_status(escrow, to_status, now=now, source=source, actor_id=actor_id, reason=reason)
        escrow.expires_at = None
        escrow.save(update_fields=["status", "status_changed_at", "expires_at"])
        _notify(escrow, to_status, escrow.buyer_id)
    return escrow


def close_unpaid_batch(
    *,
    escrow_pks: Sequence[int],
    to_status: str,
    now: datetime,
    source: str,
    reason: str = "",
) -> list[Escrow]:
    """cancel_escrow / expire_escrow for many escrows at once, with the same effects
    (status, history row, cleared expiry, the buyer's notification) in a few set-based
    statements: the sweep's fast path for escrows that hold no money.

    The caller has row-locked every escrow in this transaction and re-checked under the
    lock that it is still due and holds no money; this re-checks the transition table
    and the expiry time, and refuses the whole batch if any fails them.
    """
    escrows = list(Escrow.objects.filter(pk__in=escrow_pks).order_by("pk"))
    for escrow in escrows:
        check_transition(escrow_id=escrow.escrow_id, from_status=escrow.status, to_status=to_status)
        if to_status == S.EXPIRED and (escrow.expires_at is None or escrow.expires_at > now):
            raise ApplicationError(f"Escrow {escrow.escrow_id}'s payment window is still open.")
    StatusChange.objects.bulk_create(
        StatusChange(
            escrow=escrow,
            from_status=escrow.status,
            to_status=to_status,
            source=source,
            reason=reason,
        )
        for escrow in escrows
    )
    Escrow.objects.filter(pk__in=[e.pk for e in escrows]).update(
        status=to_status, status_changed_at=now, expires_at=None
    )
    for escrow in escrows:
        escrow.status, escrow.status_changed_at, escrow.expires_at = to_status, now, None
    enqueue_notifications([_notification(e, to_status, e.buyer_id) for e in escrows])
    return escrows


# --- disputes -------------------------------------------------------------------------


def open_dispute(
    *,
    escrow_id: str,
    now: datetime | None = None,
    source: str = "bot",
    actor_id: int | None = None,
    reason: str = "",
) -> Escrow:
    """Freeze a funded escrow until staff resolve it (no expiry, no auto-release)."""
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        _set_status(escrow, S.DISPUTED, now=now, source=source, actor_id=actor_id, reason=reason)
        escrow.expires_at = None
        escrow.auto_release_at = None
        escrow.save(update_fields=["status", "status_changed_at", "expires_at", "auto_release_at"])
        _notify(escrow, "disputed", escrow.buyer_id)
        _notify(escrow, "disputed", escrow.seller_id)
    return escrow


def _check_share(name: str, value: object) -> Decimal:
    if (
        not isinstance(value, Decimal)
        or not value.is_finite()
        or value < 0
        or quantize_usd(value) != value
    ):
        raise ApplicationError(
            f"The {name}'s share must be a non-negative Decimal amount in cents.",
            {name: repr(value)},
        )
    return value


def resolve_dispute(
    *,
    escrow_id: str,
    resolution: str,
    buyer_amount: Decimal | None = None,
    seller_amount: Decimal | None = None,
    now: datetime | None = None,
    source: str = "staff",
    actor_id: int | None = None,
    reason: str = "",
) -> Escrow:
    """Staff end a dispute: `refund`, `release`, or `split` by explicit amounts.

    A split pays buyer_amount and seller_amount from the holding; what is left is the
    platform's fee. The amounts may not add up to more than the holding holds.
    """
    if resolution not in RESOLUTIONS:
        raise ApplicationError(
            f"Unknown resolution {resolution!r}.", {"choices": list(RESOLUTIONS)}
        )
    if resolution == "refund":
        return refund_escrow(
            escrow_id=escrow_id,
            now=now,
            source=source,
            actor_id=actor_id,
            reason=reason,
            allowed_from=(S.DISPUTED,),
        )
    if resolution == "release":
        return _release(
            escrow_id=escrow_id,
            allowed_from=(S.DISPUTED,),
            now=now,
            source=source,
            actor_id=actor_id,
            reason=reason,
        )
    if buyer_amount is None or seller_amount is None:
        raise ApplicationError("A split needs both the buyer's and the seller's amount.")
    _check_share("buyer", buyer_amount)
    _check_share("seller", seller_amount)
    now = now or timezone.now()
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        _require_status(escrow, (S.DISPUTED,), S.COMPLETED)
        held = _holding(escrow).account.balance
        if buyer_amount + seller_amount > held:
            raise ApplicationError(
                f"The shares ({buyer_amount} + {seller_amount}) exceed the {held} held.",
                {"held": str(held)},
            )
        _set_status(escrow, S.COMPLETED, now=now, source=source, actor_id=actor_id, reason=reason)
        _payout(
            escrow,
            to_buyer=buyer_amount,
            to_seller=seller_amount,
            purpose="split",
            now=now,
            actor_id=actor_id,
        )
        escrow.completed_at = now
        escrow.save(update_fields=["status", "status_changed_at", "completed_at"])
        _notify(escrow, "dispute_resolved", escrow.buyer_id, amount=buyer_amount)
        _notify(escrow, "dispute_resolved", escrow.seller_id, amount=seller_amount)
    return escrow

"""Staff wallet adjustments: audited ledger transfers, with four-eyes approval above a limit.

Staff never edit balances: an adjustment is a transfer between the staff-adjustments system
account and the customer's wallet, a `staff_adjustment` transaction record and a StaffAction
audit row, all in the caller's transaction. Services join an enclosing transaction;
top-level callers (commands, admin actions) wrap them in transaction.atomic(durable=True).
"""

import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from escrow.models import StaffAction
from escrowsite.errors import ApplicationError, IdempotencyConflict, NotFound
from wallets import ledger
from wallets.models import (
    Account,
    AccountKind,
    AdjustmentRequest,
    AdjustmentStatus,
    Customer,
    Transaction,
    TransactionType,
    Transfer,
    TransferKind,
)
from wallets.money import USD, parse_decimal, quantize_usd

ACTION_ADJUSTED = "wallet_adjustment"
ACTION_REQUESTED = "wallet_adjustment_requested"
ACTION_APPROVED = "wallet_adjustment_approved"
ACTION_REJECTED = "wallet_adjustment_rejected"


@dataclass(frozen=True)
class AdjustmentOutcome:
    """What an adjustment did: `posted` (money moved) or `pending` (awaiting approval).

    `replayed` is true when an idempotency key matched an earlier adjustment and nothing
    new was written.
    """

    status: str
    customer_id: int
    amount: Decimal
    currency: str
    transfer: Transfer | None = None
    record: Transaction | None = None
    request: AdjustmentRequest | None = None
    staff_action: StaffAction | None = None
    balance: Decimal | None = None
    replayed: bool = False

    @property
    def posted(self) -> bool:
        return self.status == "posted"


# --- checks ----------------------------------------------------------------------------


def approval_threshold() -> Decimal:
    """Adjustments whose absolute amount exceeds this need a second staff member."""
    return parse_decimal(getattr(settings, "WALLET_ADJUSTMENT_APPROVAL_THRESHOLD", "100.00"))


def _check_amount(amount: object) -> Decimal:
    if not isinstance(amount, Decimal):
        raise ApplicationError(
            f"The amount must be a Decimal, got {type(amount).__name__}.",
            {"amount": str(amount)},
        )
    if not amount.is_finite() or amount == 0:
        raise ApplicationError("The amount must be a non-zero number.", {"amount": str(amount)})
    if quantize_usd(amount) != amount:
        raise ApplicationError(
            f"The amount {amount} has more precision than cents.", {"amount": str(amount)}
        )
    return amount


def _check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ApplicationError("A reason is required for a wallet adjustment.")
    return reason


def _staff(actor_id: int) -> AbstractBaseUser:
    user = get_user_model().objects.filter(pk=actor_id).first()
    if user is None:
        raise NotFound(f"Staff user {actor_id} does not exist.", {"actor_id": actor_id})
    if not (user.is_active and user.is_staff):
        raise ApplicationError(
            f"User {user} is not active staff and cannot adjust wallets.",
            {"actor_id": actor_id},
        )
    return user


def _customer(customer_id: int) -> Customer:
    customer = Customer.objects.filter(pk=customer_id).first()
    if customer is None:
        # Never created on the fly: an unknown id here is a typo, not a new customer.
        raise NotFound(f"Customer {customer_id} does not exist.", {"customer_id": customer_id})
    return customer


# --- posting ---------------------------------------------------------------------------


def _direction(amount: Decimal) -> str:
    return "credit" if amount > 0 else "debit"


def _post(
    *,
    customer: Customer,
    amount: Decimal,
    currency: str,
    reason: str,
    actor_id: int,
    key: str,
    action: str,
    request: AdjustmentRequest | None = None,
) -> AdjustmentOutcome:
    """Post one adjustment and write its record and audit row, unless `key` was posted.

    A replayed key returns the earlier transfer and record and writes nothing else: the
    record is looked up after the ledger took the wallet lock, so a concurrent identical
    adjustment has committed (or rolled back) by then.
    """
    wallet = ledger.customer_wallet(customer=customer, currency=currency)
    staff_account = ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS, currency=currency)
    debit, credit = (staff_account, wallet) if amount > 0 else (wallet, staff_account)
    direction = _direction(amount)
    transfer = ledger.post_transfer(
        debit=debit,
        credit=credit,
        amount=abs(amount),
        kind=TransferKind.STAFF_ADJUSTMENT,
        idempotency_key=key,
        reference=f"adjustment request #{request.pk}" if request else "",
        memo=reason,
        actor_id=actor_id,
    )
    balance = Account.objects.values_list("balance", flat=True).get(pk=wallet.pk)
    existing = transfer.transactions.filter(type=TransactionType.STAFF_ADJUSTMENT).first()
    if existing is not None:
        return AdjustmentOutcome(
            status="posted",
            customer_id=customer.pk,
            amount=amount,
            currency=currency,
            transfer=transfer,
            record=existing,
            request=request,
            balance=balance,
            replayed=True,
        )

    record = Transaction.objects.create(
        transaction_id=f"ADJ_{customer.pk}_{transfer.pk}",
        customer=customer,
        type=TransactionType.STAFF_ADJUSTMENT,
        amount=abs(amount),
        currency=currency,
        description=f"Staff {direction} of {abs(amount)} {currency}: {reason}"[:500],
        confirmed_at=timezone.now(),
    )
    record.transfers.add(transfer)
    changes = {
        "customer_id": customer.pk,
        "amount": f"{amount:+}",
        "currency": currency,
        "direction": direction,
        "balance_before": str(balance - amount),
        "balance_after": str(balance),
        "transfer_id": transfer.pk,
        "transaction_id": record.transaction_id,
    }
    if request is not None:
        changes["request_id"] = request.pk
        changes["requested_by"] = request.requested_by_id
    staff_action = StaffAction.objects.create(
        actor_id=actor_id,
        action=action,
        reason=reason,
        escrow=None,
        target=f"customer {customer.pk}",
        changes=changes,
    )
    return AdjustmentOutcome(
        status="posted",
        customer_id=customer.pk,
        amount=amount,
        currency=currency,
        transfer=transfer,
        record=record,
        request=request,
        staff_action=staff_action,
        balance=balance,
    )


# --- services --------------------------------------------------------------------------


def adjust_wallet(
    *,
    customer_id: int,
    amount: Decimal,
    reason: str,
    actor_id: int,
    idempotency_key: str | None = None,
    currency: str = USD,
) -> AdjustmentOutcome:
    """Credit (positive `amount`) or debit (negative) a customer's wallet as staff.

    Up to the approval threshold the transfer is posted at once; above it a pending
    AdjustmentRequest is created for another staff member to approve. With an
    `idempotency_key`, repeating the call returns the first outcome (replayed=True) and
    writes nothing; reusing it for a different adjustment raises IdempotencyConflict.
    Raises InsufficientFunds if a debit exceeds the wallet's balance.
    """
    amount = _check_amount(amount)
    reason = _check_reason(reason)
    with transaction.atomic(savepoint=False):
        _staff(actor_id)
        customer = _customer(customer_id)
        if idempotency_key:
            earlier = AdjustmentRequest.objects.filter(idempotency_key=idempotency_key).first()
            if earlier is not None:
                return _replayed_request(earlier, customer_id, amount, currency)
        key = f"staff_adjustment:{idempotency_key or uuid.uuid4().hex}"
        if abs(amount) > approval_threshold():
            if idempotency_key and Transfer.objects.filter(idempotency_key=key).exists():
                raise IdempotencyConflict(
                    "This idempotency key was used for a different, posted adjustment.",
                    {"idempotency_key": idempotency_key},
                )
            return _request(
                customer=customer,
                amount=amount,
                currency=currency,
                reason=reason,
                actor_id=actor_id,
                idempotency_key=idempotency_key or "",
            )
        return _post(
            customer=customer,
            amount=amount,
            currency=currency,
            reason=reason,
            actor_id=actor_id,
            key=key,
            action=ACTION_ADJUSTED,
        )


def _request(
    *,
    customer: Customer,
    amount: Decimal,
    currency: str,
    reason: str,
    actor_id: int,
    idempotency_key: str,
) -> AdjustmentOutcome:
    try:
        # A savepoint, so that losing a race on the idempotency key leaves the caller's
        # transaction usable for reading the winner's request.
        with transaction.atomic():
            request = AdjustmentRequest.objects.create(
                customer=customer,
                amount=amount,
                currency=currency,
                reason=reason,
                requested_by_id=actor_id,
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        earlier = None
        if idempotency_key:
            earlier = AdjustmentRequest.objects.filter(idempotency_key=idempotency_key).first()
        if earlier is None:
            raise
        return _replayed_request(earlier, customer.pk, amount, currency)
    staff_action = StaffAction.objects.create(
        actor_id=actor_id,
        action=ACTION_REQUESTED,
        reason=reason,
        escrow=None,
        target=f"customer {customer.pk}",
        changes={
            "request_id": request.pk,
            "customer_id": customer.pk,
            "amount": f"{amount:+}",
            "currency": currency,
            "direction": _direction(amount),
            "threshold": str(approval_threshold()),
        },
    )
    return AdjustmentOutcome(
        status="pending",
        customer_id=customer.pk,
        amount=amount,
        currency=currency,
        request=request,
        staff_action=staff_action,
    )


def _replayed_request(
    request: AdjustmentRequest, customer_id: int, amount: Decimal, currency: str
) -> AdjustmentOutcome:
    if (request.customer_id, request.amount, request.currency) != (customer_id, amount, currency):
        raise IdempotencyConflict(
            "This idempotency key was used for a different adjustment request.",
            {"request_id": request.pk},
        )
    return AdjustmentOutcome(
        status="posted" if request.status == AdjustmentStatus.APPROVED else request.status,
        customer_id=customer_id,
        amount=amount,
        currency=currency,
        transfer=request.transfer,
        request=request,
        replayed=True,
    )


def _lock_pending(request_id: int) -> AdjustmentRequest:
    request = (
        AdjustmentRequest.objects.select_for_update()
        .select_related("customer")
        .filter(pk=request_id)
        .first()
    )
    if request is None:
        raise NotFound(
            f"Adjustment request {request_id} does not exist.", {"request_id": request_id}
        )
    if request.status != AdjustmentStatus.PENDING:
        raise ApplicationError(
            f"Adjustment request {request_id} was already {request.status}.",
            {"request_id": request_id, "status": request.status},
        )
    return request


def approve_adjustment(*, request_id: int, actor_id: int, reason: str) -> AdjustmentOutcome:
    """A second staff member approves a pending request: the adjustment is posted now.

    The requester cannot approve their own request. If a debit no longer fits the wallet's
    balance, InsufficientFunds is raised and the request stays pending.
    """
    reason = _check_reason(reason)
    with transaction.atomic(savepoint=False):
        _staff(actor_id)
        request = _lock_pending(request_id)
        if request.requested_by_id == actor_id:
            raise ApplicationError(
                "An adjustment must be approved by a different staff member than its requester.",
                {"request_id": request_id, "actor_id": actor_id},
            )
        outcome = _post(
            customer=request.customer,
            amount=request.amount,
            currency=request.currency,
            reason=f"{request.reason} (approved: {reason})",
            actor_id=actor_id,
            key=f"staff_adjustment:request:{request.pk}",
            action=ACTION_APPROVED,
            request=request,
        )
        request.status = AdjustmentStatus.APPROVED
        request.decided_by_id = actor_id
        request.decided_at = timezone.now()
        request.decision_reason = reason
        request.transfer = outcome.transfer
        request.save(
            update_fields=["status", "decided_by", "decided_at", "decision_reason", "transfer"]
        )
        return outcome


def reject_adjustment(*, request_id: int, actor_id: int, reason: str) -> AdjustmentRequest:
    """Reject a pending request; nothing is posted.

    The requester may reject (withdraw) their own request: refusing money needs no second
    pair of eyes.
    """
    reason = _check_reason(reason)
    with transaction.atomic(savepoint=False):
        _staff(actor_id)
        request = _lock_pending(request_id)
        request.status = AdjustmentStatus.REJECTED
        request.decided_by_id = actor_id
        request.decided_at = timezone.now()
        request.decision_reason = reason
        request.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
        StaffAction.objects.create(
            actor_id=actor_id,
            action=ACTION_REJECTED,
            reason=reason,
            escrow=None,
            target=f"customer {request.customer_id}",
            changes={
                "request_id": request.pk,
                "customer_id": request.customer_id,
                "amount": f"{request.amount:+}",
                "currency": request.currency,
                "requested_by": request.requested_by_id,
            },
        )
        return request

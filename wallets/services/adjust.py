"""adjust_wallet: posted at once up to the approval threshold, above it a pending request."""

import uuid
from decimal import Decimal

from django.db import IntegrityError, transaction

from escrow.models import StaffAction
from escrowsite.errors import IdempotencyConflict
from wallets.models import AdjustmentRequest, AdjustmentStatus, Customer, Transfer
from wallets.money import USD
from wallets.services.common import (
    ACTION_ADJUSTED,
    ACTION_REQUESTED,
    AdjustmentOutcome,
    _check_amount,
    _check_reason,
    _customer,
    _direction,
    _staff,
    approval_threshold,
)
from wallets.services.posting import _post


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

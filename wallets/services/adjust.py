"""adjust_wallet: posted at once up to the approval threshold, above it a pending request.

The threshold is cumulative: what one staff member posted to one customer's wallet on
their own authority within the approval window counts with the new amount, so splitting
500.00 into five adjustments of 100.00 still needs a second staff member. Adjustments a
second person approved do not count: they already had two pairs of eyes.
"""

import uuid
from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from escrow.models import StaffAction
from escrowsite.errors import IdempotencyConflict, NotFound
from wallets.models import (
    Account,
    AccountKind,
    AdjustmentRequest,
    AdjustmentStatus,
    Customer,
    Transfer,
    TransferKind,
)
from wallets.money import USD
from wallets.services.common import (
    ACTION_ADJUSTED,
    ACTION_REQUESTED,
    AdjustmentOutcome,
    _check_amount,
    _check_reason,
    _direction,
    _staff,
    approval_threshold,
    approval_window_hours,
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

    Up to the approval threshold the transfer is posted at once; above it (counted with the
    same staff member's own adjustments of this customer within the approval window) a
    pending AdjustmentRequest is created for another staff member to approve. With an
    `idempotency_key`, repeating the call returns the first outcome (replayed=True) and
    writes nothing; reusing it for a different adjustment raises IdempotencyConflict.
    Raises InsufficientFunds if a debit exceeds the wallet's balance.
    """
    amount = _check_amount(amount)
    reason = _check_reason(reason)
    with transaction.atomic(savepoint=False):
        _staff(actor_id)
        customer = _lock_customer(customer_id)
        if idempotency_key:
            earlier = AdjustmentRequest.objects.filter(idempotency_key=idempotency_key).first()
            if earlier is not None:
                return _replayed_request(earlier, customer_id, amount, currency)
        key = f"staff_adjustment:{idempotency_key or uuid.uuid4().hex}"
        recent = own_recent_adjustments(customer=customer, actor_id=actor_id, currency=currency)
        if recent + abs(amount) > approval_threshold():
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
                recent=recent,
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


def own_recent_adjustments(*, customer: Customer, actor_id: int, currency: str) -> Decimal:
    """The absolute sum `actor_id` posted to the customer's wallet without a second
    approver within the approval window (credits and debits alike: both move money)."""
    since = timezone.now() - timedelta(hours=approval_window_hours())
    wallets = Account.objects.filter(customer=customer, kind=AccountKind.CUSTOMER).values("pk")
    on_wallet = Q(debit_account__in=wallets) | Q(credit_account__in=wallets)
    total = Transfer.objects.filter(
        on_wallet,
        kind=TransferKind.STAFF_ADJUSTMENT,
        actor_id=actor_id,
        currency=currency,
        created_at__gte=since,
        adjustment_request__isnull=True,
    ).aggregate(total=Sum("amount"))["total"]
    return total or Decimal("0")


def _lock_customer(customer_id: int) -> Customer:
    # Two adjustments of one customer queue here, so each counts the other's amount once
    # it committed: without the lock both could read the same total and both post.
    customer = Customer.objects.select_for_update().filter(pk=customer_id).first()
    if customer is None:
        # Never created on the fly: an unknown id here is a typo, not a new customer.
        raise NotFound(f"Customer {customer_id} does not exist.", {"customer_id": customer_id})
    return customer


def _request(
    *,
    customer: Customer,
    amount: Decimal,
    currency: str,
    reason: str,
    actor_id: int,
    idempotency_key: str,
    recent: Decimal,
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
            # What this staff member already posted alone within the window: the reason a
            # small amount may still have needed approval.
            "recent_own_adjustments": str(recent),
            "window_hours": approval_window_hours(),
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

"""Deciding a pending adjustment request: another staff member approves it, or it is rejected."""

from django.db import transaction
from django.utils import timezone

from escrow.models import StaffAction
from escrowsite.errors import ApplicationError, NotFound
from wallets.models import AdjustmentRequest, AdjustmentStatus
from wallets.services.common import (
    ACTION_APPROVED,
    ACTION_REJECTED,
    AdjustmentOutcome,
    _check_reason,
    _staff,
)
from wallets.services.posting import _post


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

"""Staff actions on escrows: each one durable transaction, the service call and its audit row.

The admin calls these, never the lifecycle services directly, so that every staff move of
an escrow is written to the audit log (who, when, why, before/after) in the same commit as
its effects: an action that fails leaves no audit row and changes nothing.
"""

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from escrow import services as escrow_services
from escrow.audit import record_staff_action
from escrow.models import Escrow, EscrowStatus
from escrow.transitions import AWAITING_PAYMENT
from escrowsite.errors import ApplicationError
from wallets.models import Account, AccountKind

S = EscrowStatus
SOURCE = "staff"

# The deadline fields staff may extend, and the statuses in which each one is running.
# expires_at is the payment window while awaiting payment and the seller's time to accept
# once paid; auto_release_at runs once delivered.
DEADLINES: dict[str, frozenset[str]] = {
    "expires_at": frozenset(AWAITING_PAYMENT | {S.PAYMENT_CONFIRMED}),
    "delivery_deadline": frozenset({S.PAYMENT_CONFIRMED, S.ACTIVE}),
    "auto_release_at": frozenset({S.DELIVERED}),
}
DEADLINE_LABELS = {
    "expires_at": "Payment window / seller response (expires_at)",
    "delivery_deadline": "Delivery deadline",
    "auto_release_at": "Auto-release time",
}


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ApplicationError("A reason is required for every staff action.")
    return reason


def running_deadlines(escrow: Escrow) -> list[str]:
    """The deadline fields that are set and running in the escrow's current status."""
    return [
        name
        for name, statuses in DEADLINES.items()
        if escrow.status in statuses and getattr(escrow, name) is not None
    ]


def _money_state(escrow: Escrow) -> dict[str, Any]:
    """Status, holding and both parties' wallet balances: the before/after of an action."""
    balances = dict(
        Account.objects.filter(
            kind=AccountKind.CUSTOMER,
            customer_id__in=[escrow.buyer_id, escrow.seller_id],
            currency=escrow.currency,
        ).values_list("customer_id", "balance")
    )
    held = (
        Account.objects.filter(kind=AccountKind.ESCROW_HOLDING, escrow_id=escrow.pk)
        .values_list("balance", flat=True)
        .first()
    )
    return {
        "status": escrow.status,
        "held": str(held) if held is not None else None,
        "buyer_wallet": str(balances.get(escrow.buyer_id, Decimal("0.00"))),
        "seller_wallet": str(balances.get(escrow.seller_id, Decimal("0.00"))),
    }


def _audited(
    *,
    action: str,
    escrow_id: str,
    actor_id: int,
    reason: str,
    perform: Callable[[str], Escrow],
    details: dict[str, Any] | None = None,
) -> Escrow:
    """Lock the escrow, run `perform(reason)`, and write the audit row, in one commit."""
    reason = _require_reason(reason)
    with transaction.atomic(durable=True):
        before = _money_state(escrow_services.lock_escrow(escrow_id=escrow_id))
        escrow = perform(reason)
        escrow.refresh_from_db()
        after = _money_state(escrow)
        record_staff_action(
            actor_id=actor_id,
            action=action,
            reason=reason,
            escrow=escrow,
            target=f"escrow {escrow_id}",
            changes={"before": before, "after": after, **(details or {})},
        )
    return escrow


def cancel_escrow(*, escrow_id: str, actor_id: int, reason: str) -> Escrow:
    """Cancel an escrow that holds no money yet (created or awaiting payment)."""
    return _audited(
        action="cancel_escrow",
        escrow_id=escrow_id,
        actor_id=actor_id,
        reason=reason,
        perform=lambda why: escrow_services.cancel_escrow(
            escrow_id=escrow_id, source=SOURCE, actor_id=actor_id, reason=why
        ),
    )


def refund_escrow(*, escrow_id: str, actor_id: int, reason: str) -> Escrow:
    """Return everything the escrow holds, fee included, to the buyer's wallet."""
    return _audited(
        action="refund_escrow",
        escrow_id=escrow_id,
        actor_id=actor_id,
        reason=reason,
        perform=lambda why: escrow_services.refund_escrow(
            escrow_id=escrow_id, source=SOURCE, actor_id=actor_id, reason=why
        ),
    )


def release_escrow(*, escrow_id: str, actor_id: int, reason: str) -> Escrow:
    """Pay an active or delivered escrow out to the seller (a dispute is resolved instead)."""
    return _audited(
        action="release_escrow",
        escrow_id=escrow_id,
        actor_id=actor_id,
        reason=reason,
        perform=lambda why: escrow_services.release_escrow(
            escrow_id=escrow_id, source=SOURCE, actor_id=actor_id, reason=why
        ),
    )


def resolve_dispute(
    *,
    escrow_id: str,
    resolution: str,
    actor_id: int,
    reason: str,
    buyer_amount: Decimal | None = None,
    seller_amount: Decimal | None = None,
) -> Escrow:
    """End a dispute: `refund`, `release`, or `split` with explicit amounts for each party."""
    details: dict[str, Any] = {"resolution": resolution}
    if resolution == "split":
        details |= {"buyer_amount": str(buyer_amount), "seller_amount": str(seller_amount)}
    return _audited(
        action="resolve_dispute",
        escrow_id=escrow_id,
        actor_id=actor_id,
        reason=reason,
        details=details,
        perform=lambda why: escrow_services.resolve_dispute(
            escrow_id=escrow_id,
            resolution=resolution,
            buyer_amount=buyer_amount,
            seller_amount=seller_amount,
            source=SOURCE,
            actor_id=actor_id,
            reason=why,
        ),
    )


def extend_deadline(
    *,
    escrow_id: str,
    deadline: str,
    until: datetime,
    actor_id: int,
    reason: str,
    now: datetime | None = None,
) -> Escrow:
    """Move one running deadline of an escrow later, under the escrow's row lock, audited.

    Only a deadline that is running in the escrow's status can be extended, only to a
    later time than it has now and only into the future: a deadline is never shortened
    here (that would make a sweep act at once) and a closed escrow has none.
    """
    reason = _require_reason(reason)
    if deadline not in DEADLINES:
        raise ApplicationError(
            f"{deadline!r} is not a deadline staff can extend.", {"choices": list(DEADLINES)}
        )
    if timezone.is_naive(until):
        raise ApplicationError("The new deadline must carry a timezone.")
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        escrow = escrow_services.lock_escrow(escrow_id=escrow_id)
        current = getattr(escrow, deadline)
        if escrow.status not in DEADLINES[deadline] or current is None:
            raise ApplicationError(
                f"Escrow {escrow_id} has no running {deadline} while {escrow.status}.",
                {"escrow_id": escrow_id, "status": escrow.status, "deadline": deadline},
            )
        if until <= current:
            raise ApplicationError(
                f"The new {deadline} ({until:%Y-%m-%d %H:%M}) must be later than the "
                f"current one ({current:%Y-%m-%d %H:%M}).",
                {"current": current.isoformat(), "requested": until.isoformat()},
            )
        if until <= now:
            raise ApplicationError(f"The new {deadline} must be in the future.")
        setattr(escrow, deadline, until)
        escrow.save(update_fields=[deadline])
        record_staff_action(
            actor_id=actor_id,
            action="extend_deadline",
            reason=reason,
            escrow=escrow,
            target=f"escrow {escrow_id}",
            changes={
                "deadline": deadline,
                "status": escrow.status,
                "before": current.isoformat(),
                "after": until.isoformat(),
            },
        )
    return escrow

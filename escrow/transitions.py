"""The escrow state machine: the one place that says which status moves are legal."""

from escrow.models import EscrowStatus as S
from escrowsite.errors import IllegalTransition

# from-status -> statuses it may move to. Nothing leads back to an earlier stage, so a
# late or out-of-order event can never revive or rewind an escrow.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.CREATED: frozenset({S.PAYMENT_PENDING, S.CANCELLED}),
    S.PAYMENT_PENDING: frozenset({S.PARTIALLY_PAID, S.PAYMENT_CONFIRMED, S.CANCELLED, S.EXPIRED}),
    # Money is held once partially paid: the way out without the full payment is a refund.
    S.PARTIALLY_PAID: frozenset({S.PAYMENT_CONFIRMED, S.REFUNDED}),
    S.PAYMENT_CONFIRMED: frozenset({S.ACTIVE, S.REFUNDED, S.DISPUTED}),
    S.ACTIVE: frozenset({S.DELIVERED, S.COMPLETED, S.DISPUTED, S.REFUNDED}),
    S.DELIVERED: frozenset({S.COMPLETED, S.DISPUTED}),
    S.DISPUTED: frozenset({S.COMPLETED, S.REFUNDED}),
    S.COMPLETED: frozenset(),
    S.REFUNDED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
}

TERMINAL = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
# Statuses in which the escrow still waits for (more of) its payment.
AWAITING_PAYMENT = frozenset({S.CREATED, S.PAYMENT_PENDING, S.PARTIALLY_PAID})
# Statuses in which the escrow's holding holds the buyer's full payment.
FUNDED = frozenset({S.PAYMENT_CONFIRMED, S.ACTIVE, S.DELIVERED, S.DISPUTED})


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def check_transition(*, escrow_id: str, from_status: str, to_status: str) -> None:
    """Raise IllegalTransition unless from_status -> to_status is in the table."""
    if not can_transition(from_status, to_status):
        raise IllegalTransition(
            f"Escrow {escrow_id} cannot move from {from_status} to {to_status}.",
            {"escrow_id": escrow_id, "from": from_status, "to": to_status},
        )

"""The deadline table and the warnings before deadlines: which service applies to
an overdue escrow, and who is warned when."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from escrow import services
from escrow.models import Escrow, EscrowStatus
from notifications.models import Channel

S = EscrowStatus
SOURCE = "sweep"
# Candidate ids are read in chunks of this size, so a huge backlog is never one query.
CHUNK = 1000


class Result:
    """What happened to one item of a sweep."""

    DONE = "done"  # the service ran and committed
    WOULD = "would"  # --dry-run: the service would run
    SKIPPED = "skipped"  # changed since selection, held by another sweep, or already warned
    HELD = "held"  # due, but refused: something about its money needs a human first
    FAILED = "failed"  # the service raised; rolled back, logged with its traceback


# --- the deadline table ----------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Escrows in `status` whose `deadline` field has passed get `action`.

    `guard_payment` rules run while the buyer may still be paying: they refuse to act on
    an escrow whose payment is still being processed, so the sweep can never close an
    escrow whose payment is in flight or was lost on the way (a failed receipt).
    """

    action: str
    status: str
    to_status: str
    deadline: str
    reason: str
    guard_payment: bool = False


RULES: tuple[Rule, ...] = (
    Rule("cancel", S.CREATED, S.CANCELLED, "expires_at", "payment window passed", True),
    Rule(
        "expire",
        S.PAYMENT_PENDING,
        S.EXPIRED,
        "expires_at",
        "payment window passed without payment",
        True,
    ),
    # Money is held once partially paid: the only legal way out is a refund of what
    # arrived, to the buyer's wallet (escrow.transitions).
    Rule(
        "refund_partial",
        S.PARTIALLY_PAID,
        S.REFUNDED,
        "expires_at",
        "payment window passed with only part of the payment; refunded to the buyer's wallet",
        True,
    ),
    Rule(
        "refund_unaccepted",
        S.PAYMENT_CONFIRMED,
        S.REFUNDED,
        "expires_at",
        "the seller did not accept before the deadline",
    ),
    Rule(
        "auto_release",
        S.DELIVERED,
        S.COMPLETED,
        "auto_release_at",
        "auto-release time passed without a dispute",
    ),
)
RULE_FOR_STATUS: dict[str, Rule] = {rule.status: rule for rule in RULES}


def _apply(rule: Rule, *, escrow_id: str, now: datetime) -> Escrow:
    """Call the escrow service for `rule` (looked up at call time, so tests can patch it)."""
    common: dict[str, Any] = {"escrow_id": escrow_id, "now": now, "source": SOURCE}
    if rule.action == "cancel":
        return services.cancel_escrow(**common, reason=rule.reason)
    if rule.action == "expire":
        return services.expire_escrow(**common, reason=rule.reason)
    if rule.action == "refund_partial":
        return services.refund_escrow(
            **common, reason=rule.reason, allowed_from=(S.PARTIALLY_PAID,)
        )
    if rule.action == "refund_unaccepted":
        return services.decline_escrow(**common, reason=rule.reason)
    if rule.action == "auto_release":
        return services.release_escrow(**common, reason=rule.reason)
    raise ValueError(f"no service for sweep action {rule.action!r}")


@dataclass(frozen=True)
class DeadlineWarning:
    """Before `deadline`, tell `roles` once that it is coming.

    The warning goes out ESCROW_WARN_BEFORE_HOURS before the deadline, or halfway through
    the window (from `window_start`) if the window is shorter than twice that.
    """

    name: str
    statuses: tuple[str, ...]
    deadline: str
    window_start: str
    roles: tuple[str, ...]

    @property
    def event(self) -> str:
        return f"{self.name}_warning"


WARNINGS: tuple[DeadlineWarning, ...] = (
    DeadlineWarning(
        "payment_deadline",
        (S.CREATED, S.PAYMENT_PENDING, S.PARTIALLY_PAID),
        "expires_at",
        "created_at",
        ("buyer",),
    ),
    DeadlineWarning(
        "seller_response_deadline",
        (S.PAYMENT_CONFIRMED,),
        "expires_at",
        "payment_confirmed_at",
        ("seller",),
    ),
    # The buyer's last chance to open a dispute before the seller is paid.
    DeadlineWarning("auto_release", (S.DELIVERED,), "auto_release_at", "delivered_at", ("buyer",)),
)
WARNING_NAMED: dict[str, DeadlineWarning] = {warning.name: warning for warning in WARNINGS}


def warning_key(*, escrow_id: str, warning: DeadlineWarning, deadline: datetime, role: str) -> str:
    """The outbox key of one warning: one per escrow, deadline and recipient.

    The deadline is part of the key, so a deadline that moves (a new window) gets its
    own warning, and the same deadline is never warned about twice.
    """
    stamp = deadline.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{escrow_id}:{warning.event}:{stamp}:{role}"


def _outbox_keys(base_keys: Iterable[str]) -> list[str]:
    # enqueue_notification appends the channel; look for every channel that may exist.
    return [f"{key}:{channel}" for key in base_keys for channel in Channel.values]

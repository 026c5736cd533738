"""After payment: accept, decline, deliver, release, refund, close unpaid escrows, disputes."""

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from escrow.models import Escrow, HoldingStatus, StatusChange
from escrow.services.common import (
    ZERO,
    S,
    _holding,
    _notification,
    _notify,
    _record,
    _require_status,
    _set_status,
    lock_escrow,
)
from escrow.transitions import check_transition
from escrowsite.errors import ApplicationError
from notifications.services import enqueue_notifications
from wallets import ledger
from wallets.models import (
    AccountKind,
    TransactionType,
    Transfer,
    TransferKind,
)
from wallets.money import quantize_usd

# --- after payment -------------------------------------------------------------------
# A buyer (or the auto-release sweep) may release only these; a disputed escrow is
# frozen until staff resolve it.
RELEASABLE = (S.ACTIVE, S.DELIVERED)
RESOLUTIONS = ("refund", "release", "split")
# What a release or refund changes on the escrow row besides the money.
_CLOSED_FIELDS = ["status", "status_changed_at", "completed_at", "expires_at", "auto_release_at"]


def _close_funded(escrow: Escrow, now: datetime) -> None:
    """Save a funded escrow that was just paid out: completed, no deadline left running."""
    escrow.completed_at = now
    escrow.expires_at = None
    escrow.auto_release_at = None
    escrow.save(update_fields=_CLOSED_FIELDS)


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
        _close_funded(escrow, now)
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
        _close_funded(escrow, now)
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
        _close_funded(escrow, now)
        _notify(escrow, "dispute_resolved", escrow.buyer_id, amount=buyer_amount)
        _notify(escrow, "dispute_resolved", escrow.seller_id, amount=seller_amount)
    return escrow

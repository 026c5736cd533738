"""Disputes: freeze a funded escrow, then staff refund it, release it or split it."""

from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from escrow.models import Escrow
from escrow.services.common import S, _holding, _notify, _require_status, _set_status, lock_escrow
from escrow.services.lifecycle.payout import _close_funded, _payout
from escrow.services.lifecycle.refund import refund_escrow
from escrow.services.lifecycle.release import _release
from escrowsite.errors import ApplicationError
from wallets.money import quantize_usd

RESOLUTIONS = ("refund", "release", "split")


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

"""Releasing a funded escrow: the seller is paid net of their fee share, fees go to revenue."""

from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from escrow.models import Escrow
from escrow.services.common import ZERO, S, _notify, _require_status, _set_status, lock_escrow
from escrow.services.lifecycle.payout import _close_funded, _payout

# A buyer (or the auto-release sweep) may release only these; a disputed escrow is
# frozen until staff resolve it.
RELEASABLE = (S.ACTIVE, S.DELIVERED)


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

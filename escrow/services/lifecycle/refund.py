"""Refunding a funded escrow: everything the holding holds goes back to the buyer."""

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from escrow.models import Escrow
from escrow.services.common import (
    ZERO,
    S,
    _holding,
    _notify,
    _require_status,
    _set_status,
    lock_escrow,
)
from escrow.services.lifecycle.payout import _close_funded, _payout


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

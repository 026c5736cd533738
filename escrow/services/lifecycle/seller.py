"""The seller's steps on a paid escrow: accept it, decline it, mark it delivered."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from escrow.models import Escrow
from escrow.services.common import S, _notify, _set_status, lock_escrow
from escrow.services.lifecycle.refund import refund_escrow


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

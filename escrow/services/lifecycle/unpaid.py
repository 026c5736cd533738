"""Closing escrows that hold no money: cancel or expire, one at a time or in a batch."""

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from escrow.models import Escrow, StatusChange
from escrow.services.common import S, _notification, _notify, _set_status, lock_escrow
from escrow.transitions import check_transition
from escrowsite.errors import ApplicationError
from notifications.services import enqueue_notifications


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

"""Outbox rows made the way the product makes them: through enqueue_notification."""

import itertools
from typing import Any

from notifications.models import Notification
from notifications.services import enqueue_notification

_seq = itertools.count(1)


def enqueue(
    *, key: str | None = None, event: str = "payment_confirmed", **payload: Any
) -> list[Notification]:
    """Enqueue one event for every enabled channel; returns the stored rows."""
    key = key or f"ES{next(_seq):010d}:{event}:buyer"
    enqueue_notification(
        event=event,
        recipient_id=None,
        escrow_id=None,
        key=key,
        payload={"event": event, "escrow_id": key.split(":")[0], **payload},
    )
    return list(Notification.objects.filter(key__startswith=f"{key}:").order_by("pk"))

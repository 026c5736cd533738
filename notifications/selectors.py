"""Read-only queries over the outbox."""

from collections.abc import Iterable
from datetime import datetime

from django.db.models import QuerySet

from notifications.models import Notification, NotificationStatus

# Rows a dispatcher may still send; sent and dead are final.
DUE_STATUSES = (NotificationStatus.PENDING, NotificationStatus.FAILED)


def due_notifications(*, now: datetime, channels: Iterable[str]) -> QuerySet[Notification]:
    """Rows of `channels` whose time has come, oldest first (served by notification_due_idx)."""
    return Notification.objects.filter(
        status__in=DUE_STATUSES, next_attempt_at__lte=now, channel__in=list(channels)
    ).order_by("next_attempt_at", "pk")

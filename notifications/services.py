"""Writing notifications into the outbox. Delivery lives in notifications.dispatch."""

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.models import Channel, Notification, NotificationStatus


def enabled_channels() -> list[str]:
    channels = []
    if settings.NOTIFICATIONS_BOT_WEBHOOK_URL:
        channels.append(Channel.BOT_WEBHOOK)
    if settings.NOTIFICATIONS_EMAIL_TO:
        channels.append(Channel.EMAIL)
    # With nothing configured, rows are still written (the bot can poll the admin); the
    # bot webhook is the product's primary channel.
    return channels or [Channel.BOT_WEBHOOK]


def enqueue_notification(
    *,
    event: str,
    recipient_id: int | None,
    escrow_id: int | None,
    key: str,
    payload: dict[str, Any],
) -> list[Notification]:
    """Add one row per enabled channel; a key already enqueued is left as it is.

    Must run inside the transaction that makes the change it announces. Delivery is
    scheduled after commit, so a rolled-back change never sends anything. Returns the
    rows as built: PostgreSQL gives no ids back for ON CONFLICT DO NOTHING.
    """
    return enqueue_notifications(
        [
            {
                "event": event,
                "recipient_id": recipient_id,
                "escrow_id": escrow_id,
                "key": key,
                "payload": payload,
            }
        ]
    )


def enqueue_notifications(items: list[dict[str, Any]]) -> list[Notification]:
    """enqueue_notification for many messages in one INSERT (bulk paths such as the
    sweep); each item has the keyword arguments of enqueue_notification."""
    rows = build_notifications(items)
    # ON CONFLICT DO NOTHING: the unique key makes a repeated event a no-op, never a
    # second message and never an error that could roll back the money transaction.
    Notification.objects.bulk_create(rows, ignore_conflicts=True)
    if rows:
        _dispatch_after_this_commit()
    return rows


def build_notifications(items: list[dict[str, Any]]) -> list[Notification]:
    """The outbox rows (one per enabled channel) for these messages, unsaved. Whoever
    inserts them does so with ON CONFLICT DO NOTHING and then calls schedule_dispatch()."""
    now = timezone.now()
    channels = enabled_channels()
    return [
        Notification(
            key=f"{item['key']}:{channel}",
            event=item["event"],
            channel=channel,
            customer_id=item["recipient_id"],
            escrow_id=item["escrow_id"],
            payload=item["payload"],
            next_attempt_at=now,
        )
        for item in items
        for channel in channels
    ]


def schedule_dispatch() -> None:
    """Deliver what this transaction enqueued once it commits (see build_notifications)."""
    _dispatch_after_this_commit()


def _dispatch_after_this_commit() -> None:
    """Schedule one dispatch kick per transaction, however many rows it enqueued."""
    connection = transaction.get_connection()
    if connection.in_atomic_block and any(
        func is _dispatch_soon for _, func, _ in connection.run_on_commit
    ):
        return
    transaction.on_commit(_dispatch_soon, robust=True)


def _dispatch_soon() -> None:
    from notifications.dispatch import dispatch_after_commit

    dispatch_after_commit()


def requeue_notifications(*, ids: list[int]) -> int:
    """Give failed or dead rows a fresh set of attempts, due now (a staff action).

    Sent rows are left alone: sending them again is what the outbox exists to prevent.
    """
    with transaction.atomic(durable=True):
        count = Notification.objects.filter(
            pk__in=ids, status__in=[NotificationStatus.FAILED, NotificationStatus.DEAD]
        ).update(status=NotificationStatus.PENDING, attempts=0, next_attempt_at=timezone.now())
    if count:
        _dispatch_after_this_commit()
    return count

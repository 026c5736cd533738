"""Every write the dispatcher makes to outbox rows: the leased claim, the note on rows that
wait for configuration, and each outcome, fenced on `attempts`; with the retry backoff."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F

from notifications import selectors
from notifications.dispatch.results import ItemResult
from notifications.models import Notification, NotificationStatus

# Named as before the split, not __name__, so log routing and filters keyed on it still apply.
logger = logging.getLogger("notifications.dispatch")

ERROR_CHARS = 2000


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff after the `attempts`-th failed attempt, capped.

    No jitter: one dispatcher works through rows one at a time, so retries of many
    rows do not arrive at the bot as a burst anyway.
    """
    base = settings.NOTIFICATIONS_RETRY_BASE_SECONDS
    cap = settings.NOTIFICATIONS_RETRY_MAX_SECONDS
    exponent = min(max(attempts - 1, 0), 32)
    return timedelta(seconds=min(base * 2**exponent, cap))


def _note_waiting(problems: dict[str, str], now: datetime) -> dict[str, tuple[int, str]]:
    """Say on each due row of an unconfigured channel why it waits; it stays due.

    Not counted as an attempt and not failed: the row goes out as soon as the setting
    is there. Written only when the note changes, so a loop does not rewrite rows.
    """
    waiting = {}
    for channel, problem in problems.items():
        due = selectors.due_notifications(now=now, channels=[channel])
        count = due.count()
        if count:
            with transaction.atomic(durable=True):
                # Locked in claim order, skipping rows another dispatcher holds.
                stale = list(
                    due.exclude(last_error=problem)
                    .select_for_update(skip_locked=True, of=("self",))
                    .values_list("pk", flat=True)
                )
                Notification.objects.filter(pk__in=stale).update(last_error=problem)
            waiting[channel] = (count, problem)
    return waiting


def _claim(*, channels: list[str], now: datetime, size: int) -> list[Notification]:
    """Lock up to `size` due rows nobody else holds, lease them, count the attempt."""
    lease_until = now + timedelta(seconds=settings.NOTIFICATIONS_LEASE_SECONDS)
    with transaction.atomic(durable=True):
        rows = list(
            selectors.due_notifications(now=now, channels=channels).select_for_update(
                skip_locked=True, of=("self",)
            )[:size]
        )
        if rows:
            Notification.objects.filter(pk__in=[row.pk for row in rows]).update(
                attempts=F("attempts") + 1, next_attempt_at=lease_until
            )
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = lease_until
    return rows


def _fenced(row: Notification):
    """This row, only if no other dispatcher has claimed it since we did."""
    return Notification.objects.filter(
        pk=row.pk, attempts=row.attempts, status__in=selectors.DUE_STATUSES
    )


def _record_sent(row: Notification, now: datetime) -> ItemResult:
    with transaction.atomic(durable=True):
        updated = _fenced(row).update(
            status=NotificationStatus.SENT, sent_at=now, next_attempt_at=None, last_error=""
        )
    if not updated:
        return _lease_lost(row, "sent")
    logger.info("notification %s (%s) sent by %s", row.pk, row.key, row.channel)
    return ItemResult(
        id=row.pk,
        key=row.key,
        channel=row.channel,
        event=row.event,
        outcome="sent",
        attempts=row.attempts,
    )


def _record_failure(row: Notification, error: str, now: datetime) -> ItemResult:
    error = error[:ERROR_CHARS]
    dead = row.attempts >= settings.NOTIFICATIONS_MAX_ATTEMPTS
    next_at = None if dead else now + retry_delay(row.attempts)
    status = NotificationStatus.DEAD if dead else NotificationStatus.FAILED
    with transaction.atomic(durable=True):
        updated = _fenced(row).update(status=status, next_attempt_at=next_at, last_error=error)
    if not updated:
        return _lease_lost(row, error)
    if dead:
        logger.error(
            "notification %s (%s) gave up after %s attempts: %s",
            row.pk,
            row.key,
            row.attempts,
            error,
        )
    else:
        logger.warning(
            "notification %s (%s) attempt %s failed, next at %s: %s",
            row.pk,
            row.key,
            row.attempts,
            next_at.isoformat(),
            error,
        )
    return ItemResult(
        id=row.pk,
        key=row.key,
        channel=row.channel,
        event=row.event,
        outcome=status.value,
        attempts=row.attempts,
        next_attempt_at=next_at,
        error=error,
    )


def _lease_lost(row: Notification, what: str) -> ItemResult:
    # Our send outlived the lease and another dispatcher claimed the row: its record
    # wins. Reported as a failure so the run exits non-zero: the lease is too short.
    error = f"lease expired before the outcome ({what}) was recorded; left to the new claim"
    logger.warning("notification %s (%s): %s", row.pk, row.key, error)
    return ItemResult(
        id=row.pk,
        key=row.key,
        channel=row.channel,
        event=row.event,
        outcome="lease_lost",
        attempts=row.attempts,
        error=error,
    )

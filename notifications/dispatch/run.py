"""One dispatch pass: which channels can send, claim due rows, send each, record it."""

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from django.utils import timezone

from notifications import channels, selectors
from notifications.dispatch.lease import _claim, _note_waiting, _record_failure, _record_sent
from notifications.dispatch.results import DispatchReport, ItemResult
from notifications.models import Channel, Notification

# Named as before the split, not __name__, so log routing and filters keyed on it still apply.
logger = logging.getLogger("notifications.dispatch")

BATCH_SIZE = 10

Clock = Callable[[], datetime]


def channel_status() -> tuple[list[str], dict[str, str]]:
    """(channels that can send now, {channel: why not} for the others)."""
    ready, problems = [], {}
    for channel in Channel.values:
        problem = channels.configuration_problem(channel)
        if problem is None:
            ready.append(channel)
        else:
            problems[channel] = problem
    return ready, problems


def dispatch_due(
    *,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    clock: Clock = timezone.now,
    on_item: Callable[[ItemResult], None] | None = None,
    stop: threading.Event | None = None,
) -> DispatchReport:
    """Send every due row (at most `limit`), keep going after failures, report each one.

    Must not run inside a transaction: the claim and each record are durable
    transactions of their own, so a send can never be inside, or roll back, anything.
    `stop` is checked between batches (a claimed batch is always finished).
    """
    report = DispatchReport()
    ready, problems = channel_status()
    if problems:
        report.waiting = _note_waiting(problems, clock())
    while ready and (limit is None or len(report.items) < limit):
        if stop is not None and stop.is_set():
            break
        size = batch_size if limit is None else min(batch_size, limit - len(report.items))
        batch = _claim(channels=ready, now=clock(), size=size)
        if not batch:
            break
        for row in batch:
            result = _deliver(row, clock)
            report.items.append(result)
            if on_item is not None:
                on_item(result)
    return report


def preview_due(*, limit: int | None = None, clock: Clock = timezone.now) -> DispatchReport:
    """What dispatch_due would attempt now, as "due" items; writes and sends nothing."""
    ready, problems = channel_status()
    now = clock()
    report = DispatchReport()
    for channel, problem in problems.items():
        count = selectors.due_notifications(now=now, channels=[channel]).count()
        if count:
            report.waiting[channel] = (count, problem)
    rows = selectors.due_notifications(now=now, channels=ready)
    for row in rows[:limit] if limit is not None else rows:
        report.items.append(
            ItemResult(
                id=row.pk,
                key=row.key,
                channel=row.channel,
                event=row.event,
                outcome="due",
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                error=row.last_error,
            )
        )
    return report


def _deliver(row: Notification, clock: Clock) -> ItemResult:
    try:
        channels.SENDERS[row.channel](row)
    except channels.DeliveryFailed as exc:
        return _record_failure(row, str(exc), clock())
    except Exception as exc:
        # A bug or an error class we did not foresee: recorded on the row and logged
        # with its traceback, then the run goes on with the next row. The row retries
        # and, if it keeps failing, goes dead instead of stopping every run.
        logger.exception("notification %s (%s): unexpected error while sending", row.pk, row.key)
        return _record_failure(row, f"unexpected {type(exc).__name__}: {exc}", clock())
    return _record_sent(row, clock())

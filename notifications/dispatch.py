"""Delivering due outbox rows: claim with a lease, send outside any transaction, record.

Why a lease and not a row lock held while sending: a lock lives only as long as its
transaction, so holding it through an HTTP call means an open transaction (and a pinned
connection, "idle in transaction") for up to the send timeout per dispatcher. The web
process's after-commit worker would hold one next to the requests that serve payments,
and a slow bot would hold back vacuum and exhaust connections. Instead a short
transaction claims a small batch with `SELECT ... FOR UPDATE SKIP LOCKED` (the only rows
it locks are notification rows), moves their `next_attempt_at` to the end of a lease,
counts the attempt, and commits. Sending then happens with no transaction open, and each
outcome is written in its own transaction, fenced on `attempts` so a dispatcher whose
lease ran out can never overwrite the row's newer state.

What remains is at-least-once: a process killed between a 2xx and its record, or a send
outliving the lease, can send a row again. The bot dedupes on `webhook-id`, which is
stable per row (see notifications.channels.message_id).
"""

import atexit
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from notifications import channels, selectors
from notifications.models import Channel, Notification, NotificationStatus

logger = logging.getLogger(__name__)

BATCH_SIZE = 10
# How long an exiting process lets its after-commit worker keep delivering.
EXIT_GRACE_SECONDS = 2.0
ERROR_CHARS = 2000

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class ItemResult:
    """What happened to one claimed row; `outcome` is sent, failed, dead or lease_lost."""

    id: int
    key: str
    channel: str
    event: str
    outcome: str
    attempts: int
    next_attempt_at: datetime | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "sent"


@dataclass
class DispatchReport:
    """One dispatch run: each claimed row's result, and due rows left waiting for config."""

    items: list[ItemResult] = field(default_factory=list)
    # channel -> (due rows left pending, why)
    waiting: dict[str, tuple[int, str]] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    @property
    def failures(self) -> list[ItemResult]:
        return [item for item in self.items if not item.ok]

    @property
    def waiting_count(self) -> int:
        return sum(count for count, _ in self.waiting.values())


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


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff after the `attempts`-th failed attempt, capped.

    No jitter: one dispatcher works through rows one at a time, so retries of many
    rows do not arrive at the bot as a burst anyway.
    """
    base = settings.NOTIFICATIONS_RETRY_BASE_SECONDS
    cap = settings.NOTIFICATIONS_RETRY_MAX_SECONDS
    exponent = min(max(attempts - 1, 0), 32)
    return timedelta(seconds=min(base * 2**exponent, cap))


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


# --- after-commit dispatch -------------------------------------------------------------


class _Worker:
    """One daemon thread per process that drains the outbox whenever it is kicked.

    Kicks coalesce: any number of commits while a pass runs cause one more pass. The
    kick only sets a flag and, the first time, starts the thread, so the committing
    request never waits for the database or the network.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also called in a forked child: the parent's thread does not exist there.
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._requested = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        with self._cond:
            self._requested = True
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(
                    target=self._run, name="notifications-dispatch", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:
                    # Out of threads: the rows are committed and stay due for
                    # notifications_dispatch; the request that committed must not fail.
                    logger.exception("could not start the notification dispatch thread")
                    self._requested = False
                    return
                self._thread = thread
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._requested and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requested)
                self._requested = False
                self._busy = True
            try:
                _drain(stop=self._stopping)
                # This thread's own connection only; an idle worker holds none.
                connections.close_all()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def shutdown(self, timeout: float) -> bool:
        """Finish the row being sent, claim no more, wait up to `timeout` seconds."""
        self._stopping.set()
        return self.wait_idle(timeout)


_worker = _Worker()
os.register_at_fork(after_in_child=_worker._reset)


@atexit.register
def _finish_on_exit() -> None:
    # A command or web worker that enqueued and is now exiting: give the pass a moment
    # to deliver what it just committed, then let only the row in flight finish rather
    # than cut it off mid-send (it would wait out its lease). What is left stays due.
    if not _worker.wait_idle(EXIT_GRACE_SECONDS):
        _worker.shutdown(timeout=settings.NOTIFICATIONS_TIMEOUT_SECONDS + 1)


def _drain(stop: threading.Event | None = None) -> None:
    """One pass over everything due, never raising: rows that fail wait for a retry.

    Claims one row at a time, so a process that exits mid-pass strands at most one
    row under its lease (notifications_dispatch picks it up when the lease ends).
    """
    try:
        ready, _ = channel_status()
        if not ready:
            # Nothing can be sent, so do not touch the database at all.
            return
        report = dispatch_due(batch_size=1, stop=stop)
        if report.items:
            logger.info(
                "after-commit dispatch: %s sent, %s not sent",
                report.count("sent"),
                len(report.failures),
            )
    except Exception:
        # Only infrastructure errors reach here (each row's failure is recorded on it).
        # The committed rows stay due and notifications_dispatch delivers them; raising
        # would reach the request that committed, or kill the worker thread.
        logger.exception("after-commit notification dispatch failed; rows stay due")


def dispatch_after_commit() -> None:
    """Deliver what the just-committed transaction enqueued, without delaying its caller.

    Called from an on_commit hook (notifications.services). Does nothing when
    NOTIFICATIONS_DISPATCH_AFTER_COMMIT is false; runs in the caller's thread when
    NOTIFICATIONS_DISPATCH_EAGER is true (tests).
    """
    if not settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT:
        return
    if settings.NOTIFICATIONS_DISPATCH_EAGER:
        _drain()
        return
    _worker.kick()


def wait_for_after_commit_dispatch(timeout: float = 10.0) -> bool:
    """Block until the background worker has nothing left to do (tests, shutdown hooks)."""
    return _worker.wait_idle(timeout)

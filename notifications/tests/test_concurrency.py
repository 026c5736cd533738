"""Dispatchers racing each other and the after-commit worker, on real PostgreSQL transactions."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from notifications.dispatch import ItemResult, dispatch_due, wait_for_after_commit_dispatch
from notifications.models import Notification, NotificationStatus
from notifications.services import enqueue_notification
from notifications.tests.factories import enqueue

pytestmark = pytest.mark.django_db(transaction=True)

S = NotificationStatus


def in_threads(count: int, target) -> list:
    """Run `target()` in `count` threads started together; each closes its connection.

    An exception in any thread is re-raised here by `future.result()`.
    """
    barrier = threading.Barrier(count)

    def run() -> object:
        try:
            barrier.wait()
            return target()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(run) for _ in range(count)]
        return [future.result(timeout=60) for future in futures]


def test_parallel_dispatchers_send_every_row_exactly_once(bot, settings):
    settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT = False  # only our dispatchers run
    for _ in range(120):
        enqueue()
    bot.delay = 0.002  # let the dispatchers overlap for real

    reports = in_threads(3, lambda: dispatch_due(batch_size=5))

    counts = Counter(bot.ids())
    assert len(counts) == 120
    assert set(counts.values()) == {1}, [i for i, n in counts.items() if n > 1]
    assert Notification.objects.filter(status=S.SENT, attempts=1).count() == 120
    per_thread = [len(r.items) for r in reports]
    assert sum(per_thread) == 120
    assert sum(1 for n in per_thread if n) >= 2, per_thread  # they really did share the work


def test_a_send_that_outlives_its_lease_cannot_overwrite_the_newer_claim(bot, settings):
    settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT = False
    settings.NOTIFICATIONS_LEASE_SECONDS = 0  # the row is claimable again at once
    [row] = enqueue()
    gate = threading.Event()
    bot.gate = gate  # the first delivery hangs until the gate opens
    slow: list[ItemResult] = []

    def slow_dispatcher() -> None:
        try:
            slow.extend(dispatch_due().items)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_dispatcher)
    thread.start()
    deadline = time.monotonic() + 5
    while not bot.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    bot.gate = None  # the next delivery is answered at once

    fast = dispatch_due().items
    gate.set()
    thread.join(10)

    assert [i.outcome for i in fast] == ["sent"]
    assert [i.outcome for i in slow] == ["lease_lost"]
    row.refresh_from_db()
    assert row.status == S.SENT and row.attempts == 2
    # At-least-once: the message went out twice, under one webhook-id the bot dedupes on.
    assert len(bot.requests) == 2 and len(set(bot.ids())) == 1


# --- after-commit dispatch -------------------------------------------------------------


def test_a_commit_hands_delivery_to_the_background_without_waiting_for_it(bot):
    bot.delay = 1.0  # a slow bot
    started = time.monotonic()
    with transaction.atomic(durable=True):
        [row] = enqueue()
    committed_in = time.monotonic() - started
    assert committed_in < 0.5, committed_in

    assert wait_for_after_commit_dispatch(timeout=10)
    row.refresh_from_db()
    assert row.status == S.SENT
    assert len(bot.requests) == 1


def test_a_failing_background_delivery_never_reaches_the_committer(bot_down):
    with transaction.atomic(durable=True):
        [row] = enqueue()
    assert wait_for_after_commit_dispatch(timeout=10)
    row.refresh_from_db()
    assert row.status == S.FAILED
    assert row.attempts == 1 and "refused" in row.last_error.lower()


def test_a_rolled_back_transaction_sends_nothing(bot):
    with pytest.raises(RuntimeError), transaction.atomic(durable=True):
        enqueue_notification(
            event="payment_confirmed",
            recipient_id=None,
            escrow_id=None,
            key="ES0000000001:payment_confirmed:buyer",
            payload={"event": "payment_confirmed"},
        )
        raise RuntimeError("the money transaction failed after enqueueing")
    assert wait_for_after_commit_dispatch(timeout=10)
    assert not Notification.objects.exists()
    assert dispatch_due().items == []
    assert bot.requests == []


def test_after_commit_dispatch_can_be_switched_off(bot, settings):
    settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT = False
    with transaction.atomic(durable=True):
        [row] = enqueue()
    assert wait_for_after_commit_dispatch(timeout=10)
    time.sleep(0.2)
    row.refresh_from_db()
    assert row.status == S.PENDING and row.attempts == 0
    assert bot.requests == []
    # The command (or any dispatcher) still delivers it.
    assert [i.outcome for i in dispatch_due().items] == ["sent"]


def test_many_commits_at_once_are_each_delivered_once(bot):
    def commit_one() -> None:
        with transaction.atomic(durable=True):
            enqueue()

    in_threads(8, commit_one)
    assert wait_for_after_commit_dispatch(timeout=10)
    assert len(bot.requests) == 8 and len(set(bot.ids())) == 8
    assert Notification.objects.filter(status=S.SENT).count() == 8

"""After-commit dispatch: one background worker per process drains the outbox when kicked."""

import atexit
import logging
import os
import threading

from django.conf import settings
from django.db import connections

from notifications.dispatch.run import channel_status, dispatch_due

# Named as before the split, not __name__, so log routing and filters keyed on it still apply.
logger = logging.getLogger("notifications.dispatch")

# How long an exiting process lets its after-commit worker keep delivering.
EXIT_GRACE_SECONDS = 2.0


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

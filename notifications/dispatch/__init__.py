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

A package: `results` (what a run reports), `lease` (every write to a row: the claim, the
waiting note, the fenced outcome, the backoff), `run` (one pass: claim, send, record) and
`after_commit` (the web process's background worker). Callers import from here; tests
that patch a step patch it in the module that looks it up. Every module logs as
`notifications.dispatch`.
"""

from notifications.dispatch.after_commit import (
    EXIT_GRACE_SECONDS,
    dispatch_after_commit,
    wait_for_after_commit_dispatch,
)
from notifications.dispatch.lease import ERROR_CHARS, retry_delay
from notifications.dispatch.results import DispatchReport, ItemResult
from notifications.dispatch.run import BATCH_SIZE, Clock, channel_status, dispatch_due, preview_due

__all__ = [
    "BATCH_SIZE",
    "ERROR_CHARS",
    "EXIT_GRACE_SECONDS",
    "Clock",
    "DispatchReport",
    "ItemResult",
    "channel_status",
    "dispatch_after_commit",
    "dispatch_due",
    "preview_due",
    "retry_delay",
    "wait_for_after_commit_dispatch",
]

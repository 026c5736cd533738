"""After payment: accept, decline, deliver, release, refund, close unpaid escrows, disputes.

A package: `seller` (accept, decline, mark delivered), `release` and `refund` (paying a
funded escrow out to one side), `disputes` (freeze, then refund, release or split),
`unpaid` (cancel and expire escrows that hold no money, one at a time or in a batch) and
`payout` (emptying the holding, which release, refund and split share). Callers import
from `escrow.services`; tests that patch a helper patch it in the module that looks it up.
"""

from escrow.services.lifecycle.disputes import RESOLUTIONS, open_dispute, resolve_dispute
from escrow.services.lifecycle.refund import refund_escrow
from escrow.services.lifecycle.release import RELEASABLE, release_escrow
from escrow.services.lifecycle.seller import accept_escrow, decline_escrow, mark_delivered
from escrow.services.lifecycle.unpaid import cancel_escrow, close_unpaid_batch, expire_escrow

__all__ = [
    "RELEASABLE",
    "RESOLUTIONS",
    "accept_escrow",
    "cancel_escrow",
    "close_unpaid_batch",
    "decline_escrow",
    "expire_escrow",
    "mark_delivered",
    "open_dispute",
    "refund_escrow",
    "release_escrow",
    "resolve_dispute",
]

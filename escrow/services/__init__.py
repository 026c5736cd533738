"""Escrow lifecycle services: every status change and every escrow money movement.

Each service locks the escrow row first (select_for_update), checks the transition table,
then writes the status, the ledger transfers (one wallets.ledger call), the transaction
records and the outbox rows. Services join the caller's transaction inside a savepoint, so
a refusal undoes only the service's own writes and leaves the caller's transaction usable;
top-level callers (webhook processing, commands, admin actions) wrap them in
transaction.atomic(durable=True).

A package: `common` (values, the row lock, history, records, outbox, holding, and where
writes go), `creation`, `payment` (the payment policy), `batched` (the PostgreSQL webhook
hot path's way into that same policy) and `lifecycle` (everything after payment). Callers import
from here. Tests that patch a helper patch it where it is looked up: the payment path's
helpers in `escrow.services.payment`, the outbox call of `_notify` in `common`.
"""

from escrow.services.batched import confirm_payment_batched
from escrow.services.common import IncomingPayment, PaymentOutcome, lock_escrow
from escrow.services.creation import ESCROW_ID_FORMAT, create_escrow, new_escrow_id
from escrow.services.lifecycle import (
    RELEASABLE,
    RESOLUTIONS,
    accept_escrow,
    cancel_escrow,
    close_unpaid_batch,
    decline_escrow,
    expire_escrow,
    mark_delivered,
    open_dispute,
    refund_escrow,
    release_escrow,
    resolve_dispute,
)
from escrow.services.payment import confirm_payment

__all__ = [
    "ESCROW_ID_FORMAT",
    "RELEASABLE",
    "RESOLUTIONS",
    "IncomingPayment",
    "PaymentOutcome",
    "accept_escrow",
    "cancel_escrow",
    "close_unpaid_batch",
    "confirm_payment",
    "confirm_payment_batched",
    "create_escrow",
    "decline_escrow",
    "expire_escrow",
    "lock_escrow",
    "mark_delivered",
    "new_escrow_id",
    "open_dispute",
    "refund_escrow",
    "release_escrow",
    "resolve_dispute",
]

"""What every escrow service shares: the payment values, the row lock, status changes with
history, transaction records, outbox rows and the holding."""

import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Model

from escrow.models import Escrow, EscrowHolding, EscrowStatus, StatusChange
from escrow.transitions import check_transition
from escrowsite.errors import ApplicationError, IllegalTransition, NotFound
from escrowsite.sqlbatch import StatementBatch
from notifications.services import (
    build_notifications,
    enqueue_notifications,
    schedule_dispatch,
)
from wallets import ledger
from wallets.models import (
    Transaction,
    Transfer,
)

S = EscrowStatus
ZERO = Decimal("0.00")

# --- values and helpers ------------------------------------------------------------------

ESCROW_ID_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class IncomingPayment:
    """A provider-neutral payment: what arrived, from whom, for which transaction.

    `usd_amount` is authoritative for the escrow; the crypto amount is kept for records.
    """

    provider: str
    tx_id: str
    usd_amount: Decimal
    crypto_amount: Decimal | None = None
    crypto_currency: str = ""
    paid_at: datetime | None = None
    provider_payment_id: str = ""


@dataclass
class PaymentOutcome:
    """What confirm_payment did.

    `kind` is `confirmed`, `partial`, `late_credit`, or `duplicate` (this provider
    transaction was already applied to this escrow: nothing moved, and `transactions` and
    `transfers` are the ones the first application wrote).
    """

    kind: str
    escrow: Escrow
    transactions: list[Transaction] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    excess: Decimal = Decimal("0.00")
    shortfall: Decimal = Decimal("0.00")
    status_before: str = ""


def lock_escrow(*, escrow_id: str) -> Escrow:
    """The escrow row, locked for the rest of the transaction. Raises NotFound.

    Every service takes this lock before anything else, so two moves of one escrow are
    serialised and the second one sees the status the first one left.
    """
    try:
        return Escrow.objects.select_for_update().get(escrow_id=escrow_id)
    except Escrow.DoesNotExist:
        raise NotFound(f"Escrow {escrow_id} does not exist.", {"escrow_id": escrow_id}) from None


def _require_status(escrow: Escrow, allowed_from: Iterable[str], to_status: str) -> None:
    """Refuse a move the table allows but this particular service may not make
    (e.g. a buyer's release of a disputed escrow, which only staff may resolve)."""
    if escrow.status not in allowed_from:
        raise IllegalTransition(
            f"Escrow {escrow.escrow_id} cannot move from {escrow.status} to {to_status} this way.",
            {"escrow_id": escrow.escrow_id, "from": escrow.status, "to": to_status},
        )


def _set_status(
    escrow: Escrow,
    to_status: str,
    *,
    now: datetime,
    source: str,
    actor_id: int | None = None,
    reason: str = "",
    writes: "Writes | None" = None,
) -> None:
    """Check the move against the table, then record it; the caller saves the escrow."""
    check_transition(escrow_id=escrow.escrow_id, from_status=escrow.status, to_status=to_status)
    writes = writes or ORM_WRITES
    writes.add(
        StatusChange(
            escrow=escrow,
            from_status=escrow.status,
            to_status=to_status,
            actor_id=actor_id,
            source=source,
            reason=reason,
        )
    )
    escrow.status = to_status
    escrow.status_changed_at = now


def _record(
    *,
    prefix: str,
    escrow: Escrow,
    type: str,
    customer_id: int,
    amount: Decimal,
    transfers: list[Transfer],
    description: str,
    now: datetime,
    payment: IncomingPayment | None = None,
    with_crypto: bool = True,
    writes: "Writes | None" = None,
) -> Transaction:
    """Write a transaction record such as ESC_ES101325WZY2_6462e85a and link its transfers.

    `with_crypto=False` leaves the coin amount off a record that carries only part of a
    payment, so a USD figure never sits next to a coin amount that is not its own.
    """
    writes = writes or ORM_WRITES
    tx_id = payment.tx_id if payment else ""
    if payment:
        transaction_id = record_id(prefix, escrow.escrow_id, tx_id)
        if writes.transaction_id_taken(transaction_id):
            # Two provider transactions that share their first 8 characters.
            transaction_id = f"{prefix}_{escrow.escrow_id}_{tx_id}"[:100]
    else:
        transaction_id = f"{prefix}_{escrow.escrow_id}"
    crypto = payment is not None and with_crypto
    record = Transaction(
        transaction_id=transaction_id,
        customer_id=customer_id,
        type=type,
        amount=amount,
        currency=escrow.currency,
        crypto_amount=payment.crypto_amount if crypto else None,
        crypto_currency=payment.crypto_currency if crypto else "",
        provider=payment.provider if payment else "",
        external_tx_id=tx_id,
        escrow=escrow,
        description=description,
        confirmed_at=now,
    )
    writes.add_record(record, transfers)
    return record


def record_id(prefix: str, escrow_id: str, tx_id: str) -> str:
    """A payment's transaction record id, e.g. ESC_ES101325WZY2_6462e85a."""
    return f"{prefix}_{escrow_id}_{tx_id[:8]}"


def _notify(
    escrow: Escrow,
    event: str,
    recipient_id: int,
    *,
    writes: "Writes | None" = None,
    **payload: object,
) -> None:
    """One outbox row per party and event: written now, delivered after commit."""
    (writes or ORM_WRITES).notify([_notification(escrow, event, recipient_id, **payload)])


# --- where writes go -------------------------------------------------------------------


class Writes:
    """Where a service's writes go. The services decide what to write; a Writes decides
    how: saved one by one through the ORM (any database), or collected into one
    StatementBatch (the PostgreSQL webhook hot path, see escrowsite.sqlbatch)."""

    def post(self, legs: list[ledger.Leg]) -> list[Transfer]:
        raise NotImplementedError

    def add(self, obj: Model) -> None:
        raise NotImplementedError

    def add_record(self, record: Transaction, transfers: list[Transfer]) -> None:
        raise NotImplementedError

    def save(self, obj: Model, fields: list[str]) -> None:
        raise NotImplementedError

    def notify(self, items: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def transaction_id_taken(self, transaction_id: str) -> bool:
        raise NotImplementedError


class OrmWrites(Writes):
    def post(self, legs: list[ledger.Leg]) -> list[Transfer]:
        return ledger.post_transfers(legs)

    def add(self, obj: Model) -> None:
        obj.save(force_insert=True)

    def add_record(self, record: Transaction, transfers: list[Transfer]) -> None:
        record.save(force_insert=True)
        record.transfers.add(*transfers)

    def save(self, obj: Model, fields: list[str]) -> None:
        obj.save(update_fields=fields)

    def notify(self, items: list[dict[str, Any]]) -> None:
        enqueue_notifications(items)

    def transaction_id_taken(self, transaction_id: str) -> bool:
        return Transaction.objects.filter(transaction_id=transaction_id).exists()


ORM_WRITES = OrmWrites()


class BatchWrites(Writes):
    """Writes collected into `batch`, with primary keys preallocated in `ids` (by model)
    and the record ids already in use read beforehand (`taken`)."""

    def __init__(
        self, batch: StatementBatch, ids: dict[type[Model], list[int]], taken: set[str]
    ) -> None:
        self.batch = batch
        self.ids = {model: list(pks) for model, pks in ids.items()}
        self.taken = taken

    def take_id(self, model: type[Model]) -> int:
        pks = self.ids.get(model)
        if not pks:
            raise RuntimeError(f"no preallocated {model.__name__} id left")
        return pks.pop(0)

    def post(self, legs: list[ledger.Leg]) -> list[Transfer]:
        pks = [self.take_id(Transfer) for _ in legs]
        return ledger.post_transfers_batched(legs, batch=self.batch, ids=pks)

    def add(self, obj: Model) -> None:
        if obj.pk is None and type(obj) in self.ids:
            obj.pk = self.take_id(type(obj))
        self.batch.insert([obj])

    def add_record(self, record: Transaction, transfers: list[Transfer]) -> None:
        self.add(record)
        link = Transaction.transfers.through
        self.batch.insert([link(transaction_id=record.pk, transfer_id=t.pk) for t in transfers])

    def save(self, obj: Model, fields: list[str]) -> None:
        self.batch.update_instance(obj, fields)

    def notify(self, items: list[dict[str, Any]]) -> None:
        self.batch.insert(build_notifications(items), ignore_conflicts=True)
        schedule_dispatch()

    def transaction_id_taken(self, transaction_id: str) -> bool:
        return transaction_id in self.taken


def _notification(
    escrow: Escrow, event: str, recipient_id: int, **payload: object
) -> dict[str, Any]:
    role = "buyer" if recipient_id == escrow.buyer_id else "seller"
    return {
        "event": event,
        "recipient_id": recipient_id,
        "escrow_id": escrow.pk,
        "key": f"{escrow.escrow_id}:{event}:{role}",
        "payload": {
            "event": event,
            "escrow_id": escrow.escrow_id,
            "status": escrow.status,
            "recipient": recipient_id,
            "role": role,
            **{k: str(v) for k, v in payload.items()},
        },
    }


def _holding(escrow: Escrow) -> EscrowHolding:
    try:
        return EscrowHolding.objects.select_related("account").get(escrow=escrow)
    except EscrowHolding.DoesNotExist:
        raise ApplicationError(
            f"Escrow {escrow.escrow_id} holds no money.", {"escrow_id": escrow.escrow_id}
        ) from None


def _open_holding(escrow: Escrow) -> EscrowHolding:
    """The escrow's holding, created with its ledger account on the first payment.

    The caller holds the escrow's row lock, so nobody else can be creating this holding:
    plain INSERTs are enough (no get_or_create savepoints on the payment path).
    """
    holding = EscrowHolding.objects.select_related("account").filter(escrow=escrow).first()
    if holding is None:
        account = ledger.open_holding_account(escrow_id=escrow.pk, currency=escrow.currency)
        holding = EscrowHolding.objects.create(escrow=escrow, account=account)
    return holding

"""Processing a stored receipt in one durable transaction: dedupe claim, handler, effects
and outcome in the same commit (or a dry-run preview that rolls back).

Two ways to write the same thing. On PostgreSQL a confirmed payment for an escrow awaiting
it goes through _apply_batched: the payment policy's rows, the claim and the outcome in
one statement (escrowsite.sqlbatch). Every other case, and every other database, goes
through the general path: the claim, then the event's handler inside a savepoint, one ORM
query per row. payments/tests/test_hot_path.py holds the two to the same rows.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from escrow import services as escrow_services
from escrow.audit import record_staff_action
from escrow.models import Escrow
from escrowsite import sqlbatch
from escrowsite.errors import ApplicationError, NotFound
from payments.models import FINAL_OUTCOMES, Outcome, PaymentEvent, WebhookReceipt
from payments.parsing import (
    PROVIDER,
    EventType,
    MalformedPayload,
    PaymentNotification,
    parse_notification,
)
from payments.services.receipts import STATUS_FOR_OUTCOME
from wallets import ledger
from wallets.models import AccountKind, Transaction, TransactionType, Transfer, TransferKind

logger = logging.getLogger(__name__)


@dataclass
class ProcessResult:
    """What processing a receipt did (or, in a preview, would do)."""

    receipt_id: int
    outcome: str
    detail: str = ""
    escrow_id: str = ""
    status_before: str = ""
    status_after: str = ""
    transfers: list[dict[str, Any]] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    already_final: bool = False
    # The outcome was written with the effects, in the hot path's one statement.
    saved: bool = False

    @property
    def http_status(self) -> int:
        return STATUS_FOR_OUTCOME[Outcome(self.outcome)]

    def as_json(self) -> dict[str, Any]:
        return {
            "receipt": self.receipt_id,
            "outcome": self.outcome,
            "detail": self.detail,
            "escrow_id": self.escrow_id or None,
            "status_before": self.status_before or None,
            "status_after": self.status_after or None,
            "transfers": self.transfers,
            "transactions": self.transactions,
        }


# --- processing ------------------------------------------------------------------------


def _claim(receipt: WebhookReceipt, note: PaymentNotification) -> PaymentEvent | None:
    """Insert the dedupe row; None if another delivery of the same event got there first.

    ON CONFLICT DO NOTHING waits for a concurrent inserter of the same key to commit or
    roll back, so exactly one of any number of simultaneous deliveries proceeds.
    """
    table = PaymentEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (provider, tx_id, event, payload_hash, receipt_id, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (provider, tx_id, event) DO NOTHING RETURNING id",
            [PROVIDER, note.tx_id, note.event, note.payload_hash, receipt.pk, timezone.now()],
        )
        row = cursor.fetchone()
    return None if row is None else PaymentEvent(pk=row[0])


def _apply_confirmed(
    receipt: WebhookReceipt,
    note: PaymentNotification,
    result: ProcessResult,
    source: str,
    actor_id: int | None,
) -> None:
    if not note.escrow_ref:
        _park_in_suspense(receipt, note, result, actor_id)
        return
    try:
        outcome = escrow_services.confirm_payment(
            escrow_id=note.escrow_ref,
            payment=note.to_incoming_payment(),
            source=source,
            actor_id=actor_id,
            reason=f"webhook receipt #{receipt.pk}",
        )
    except NotFound:
        # No such escrow (the service's savepoint undid nothing yet written): the money
        # is kept in suspense for staff, never dropped.
        _park_in_suspense(receipt, note, result, actor_id)
        return
    _describe_outcome(receipt, note, result, outcome)


def _describe_outcome(
    receipt: WebhookReceipt,
    note: PaymentNotification,
    result: ProcessResult,
    outcome: escrow_services.PaymentOutcome,
) -> None:
    receipt.escrow_id = outcome.escrow.pk
    result.escrow_id = note.escrow_ref
    result.status_before = outcome.status_before
    result.status_after = outcome.escrow.status
    result.outcome = Outcome.APPLIED
    result.transfers = [_describe(t) for t in outcome.transfers]
    result.transactions = [t.transaction_id for t in outcome.transactions]
    amount = note.base_amount
    if outcome.kind == "confirmed":
        result.detail = f"{amount} USD confirmed {note.escrow_ref}"
        if outcome.excess:
            result.detail += f"; {outcome.excess} overpayment credited to the buyer's wallet"
        if outcome.shortfall:
            result.detail += f"; underpaid by {outcome.shortfall} within tolerance"
            receipt.flagged = True
    elif outcome.kind == "duplicate":
        # The escrow already holds this very payment (e.g. entered by staff): nothing moved.
        result.outcome = Outcome.DUPLICATE
        result.detail = f"payment {note.tx_id} was already applied to {note.escrow_ref}"
    elif outcome.kind == "partial":
        result.detail = f"{amount} USD held for {note.escrow_ref}; still partially paid"
    else:
        result.detail = (
            f"late/extra payment: {amount} USD credited to the buyer's wallet because "
            f"{note.escrow_ref} was {result.status_before}"
        )
        receipt.flagged = True


def _park_in_suspense(
    receipt: WebhookReceipt, note: PaymentNotification, result: ProcessResult, actor_id: int | None
) -> None:
    """Money for an escrow we do not know: keep it in suspense for staff to place."""
    assert note.base_amount is not None
    key = f"{PROVIDER}:{note.tx_id}"
    transfer = ledger.post_transfer(
        debit=ledger.clearing_account(provider=PROVIDER),
        credit=ledger.system_account(kind=AccountKind.SUSPENSE),
        amount=note.base_amount,
        kind=TransferKind.SUSPENSE,
        idempotency_key=f"{key}:suspense",
        reference=key,
        memo=f"unknown escrow reference {note.escrow_ref!r}",
        actor_id=actor_id,
    )
    record = Transaction.objects.create(
        transaction_id=f"SUS_{note.tx_id}"[:100],
        type=TransactionType.SUSPENSE,
        amount=note.base_amount,
        crypto_amount=note.paid_amount,
        crypto_currency=note.paid_currency,
        provider=PROVIDER,
        external_tx_id=note.tx_id,
        description=f"Payment for unknown escrow reference {note.escrow_ref!r} held in suspense",
        confirmed_at=timezone.now(),
    )
    record.transfers.add(transfer)
    result.outcome = Outcome.PARKED
    result.detail = (
        f"no escrow {note.escrow_ref!r}: {note.base_amount} USD held in suspense for staff"
        if note.escrow_ref
        else f"no escrow reference: {note.base_amount} USD held in suspense for staff"
    )
    result.transfers = [_describe(transfer)]
    result.transactions = [record.transaction_id]
    receipt.flagged = True


def _record_only(
    receipt: WebhookReceipt,
    note: PaymentNotification,
    result: ProcessResult,
    source: str,
    actor_id: int | None,
) -> None:
    """payment.pending / payment.failed: kept on the receipt; no money moves, no status
    changes, so such an event arriving late can never move an escrow backwards."""
    escrow = (
        Escrow.objects.filter(escrow_id=note.escrow_ref).only("pk", "status").first()
        if note.escrow_ref
        else None
    )
    if escrow is not None:
        receipt.escrow_id = escrow.pk
        result.escrow_id = note.escrow_ref
        result.status_before = result.status_after = escrow.status
    result.outcome = Outcome.RECORDED
    what = "pending" if note.event == EventType.PENDING else "failed at the provider"
    result.detail = f"payment {note.payment_id} {what}; no money moves"
    if escrow is None:
        result.detail += f" (no escrow {note.escrow_ref!r})"


Handler = Callable[[WebhookReceipt, PaymentNotification, ProcessResult, str, int | None], None]
HANDLERS: dict[str, Handler] = {
    EventType.CONFIRMED: _apply_confirmed,
    EventType.PENDING: _record_only,
    EventType.FAILED: _record_only,
}


def _describe(transfer: Transfer) -> dict[str, Any]:
    # Labels, not just ids: in a preview the accounts may not exist once it rolls back.
    return {
        "kind": transfer.kind,
        "amount": str(transfer.amount),
        "debit_account": transfer.debit_account_id,
        "credit_account": transfer.credit_account_id,
        "debit": str(transfer.debit_account),
        "credit": str(transfer.credit_account),
    }


def _lock_receipt(receipt_id: int) -> tuple[WebhookReceipt, Escrow | None]:
    """The receipt, locked, and on PostgreSQL also the escrow it names (the reference
    stored when it arrived), locked in that order, as the general path locks them. The
    hot path uses that escrow if the parsed body names the same one."""
    if not sqlbatch.supported():
        return WebhookReceipt.objects.select_for_update().get(pk=receipt_id), None
    table = WebhookReceipt._meta.db_table
    receipt, escrow = sqlbatch.lock_rows(
        [
            (WebhookReceipt, '"id" = %s', [receipt_id]),
            (Escrow, f'"escrow_id" = (SELECT "escrow_ref" FROM "{table}" WHERE "id" = %s)',
             [receipt_id]),
        ]
    )  # fmt: skip
    if receipt is None:
        raise WebhookReceipt.DoesNotExist(f"webhook receipt #{receipt_id} does not exist")
    return receipt, escrow


def _process_locked(
    receipt: WebhookReceipt, *, source: str, actor_id: int | None, escrow: Escrow | None = None
) -> ProcessResult:
    result = ProcessResult(receipt_id=receipt.pk, outcome=receipt.outcome)
    if receipt.outcome in FINAL_OUTCOMES:
        # Retrying something that already ended is a no-op, never a second application.
        result.already_final = True
        result.detail = receipt.detail
        return result
    try:
        note = parse_notification(bytes(receipt.body))
    except MalformedPayload as exc:
        result.outcome = Outcome.MALFORMED
        result.detail = str(exc)
        return result

    receipt.event = note.event
    receipt.tx_id = note.tx_id
    receipt.provider_payment_id = note.payment_id
    receipt.escrow_ref = note.escrow_ref
    receipt.payload_hash = note.payload_hash

    hot = note.event == EventType.CONFIRMED and note.escrow_ref and sqlbatch.supported()
    if hot and _apply_batched(receipt, note, result, source, actor_id, escrow):
        return result
    try:
        # A savepoint: if a business rule refuses the event, the claim and every effect
        # are undone together, so staff can still apply the payment later.
        with transaction.atomic():
            _claim_and_handle(receipt, note, result, source, actor_id)
    except ApplicationError as exc:
        result.outcome = Outcome.CONFLICT
        result.detail = f"refused, nothing applied: {exc.message}"
        result.transfers, result.transactions = [], []
        receipt.flagged = True
    return result


def _apply_batched(
    receipt: WebhookReceipt,
    note: PaymentNotification,
    result: ProcessResult,
    source: str,
    actor_id: int | None,
    escrow: Escrow | None,
) -> bool:
    """The PostgreSQL hot path for a confirmed payment to an escrow awaiting it: the claim,
    every effect and the receipt's outcome written by one statement (escrowsite.sqlbatch).

    False, having written nothing, for every other case: the general path below handles
    it (and refuses what the policy refuses, inside its savepoint). The claim is a plain
    INSERT here: the escrow's row lock already serialises deliveries of one payment, so
    a clash means something unusual, which fails visibly and is retried on the general
    path, never applied twice.
    """
    batch = sqlbatch.StatementBatch()
    try:
        outcome = escrow_services.confirm_payment_batched(
            escrow_id=note.escrow_ref,
            payment=note.to_incoming_payment(),
            batch=batch,
            locked=escrow,
            source=source,
            actor_id=actor_id,
            reason=f"webhook receipt #{receipt.pk}",
        )
    except ApplicationError:
        return False
    if outcome is None:
        return False
    batch.insert(
        [
            PaymentEvent(
                provider=PROVIDER,
                tx_id=note.tx_id,
                event=note.event,
                payload_hash=note.payload_hash,
                receipt_id=receipt.pk,
            )
        ]
    )
    _describe_outcome(receipt, note, result, outcome)
    _save_outcome(receipt, result, batch=batch)
    batch.execute()
    result.saved = True
    return True


def _claim_and_handle(
    receipt: WebhookReceipt,
    note: PaymentNotification,
    result: ProcessResult,
    source: str,
    actor_id: int | None,
) -> None:
    if _claim(receipt, note) is None:
        first = PaymentEvent.objects.select_related("receipt").get(
            provider=PROVIDER, tx_id=note.tx_id, event=note.event
        )
        receipt.escrow_id = first.receipt.escrow_id
        if first.payload_hash == note.payload_hash:
            result.outcome = Outcome.DUPLICATE
            result.detail = f"duplicate of receipt #{first.receipt_id} ({first.receipt.outcome})"
        else:
            result.outcome = Outcome.CONFLICT
            result.detail = (
                f"same event as receipt #{first.receipt_id} but a different payload; "
                "nothing applied"
            )
            receipt.flagged = True
        return
    HANDLERS[note.event](receipt, note, result, source, actor_id)


@dataclass(frozen=True)
class StaffAudit:
    """Who asked for a staff-initiated processing, and why: written with its effects."""

    actor_id: int
    action: str
    reason: str


def process_receipt(
    *,
    receipt_id: int,
    source: str = "webhook",
    actor_id: int | None = None,
    audit: StaffAudit | None = None,
) -> ProcessResult:
    """Apply a stored delivery in one durable transaction, outcome included.

    Raises whatever went wrong, after the transaction rolled back: the caller records
    the failure (record_failure) and answers 5xx.
    """
    with transaction.atomic(durable=True), ledger.deferred_system_balances():
        receipt, escrow = _lock_receipt(receipt_id)
        result = _process_locked(receipt, source=source, actor_id=actor_id, escrow=escrow)
        if not result.already_final and not result.saved:
            _save_outcome(receipt, result)
        if audit is not None:
            record_staff_action(
                actor_id=audit.actor_id,
                action=audit.action,
                reason=audit.reason,
                escrow=receipt.escrow,
                target=f"webhook receipt #{receipt.pk}",
                changes=result.as_json(),
            )
    return result


def preview_receipt(*, receipt_id: int, actor_id: int | None = None) -> ProcessResult:
    """What process_receipt would do now, computed for real and then rolled back."""
    with transaction.atomic(durable=True):
        receipt = WebhookReceipt.objects.select_for_update().get(pk=receipt_id)
        result = _process_locked(receipt, source="preview", actor_id=actor_id)
        transaction.set_rollback(True)
    return result


def _save_outcome(
    receipt: WebhookReceipt, result: ProcessResult, *, batch: sqlbatch.StatementBatch | None = None
) -> None:
    receipt.outcome = result.outcome
    receipt.detail = result.detail
    receipt.attempts += 1
    receipt.processed_at = timezone.now()
    receipt.response_status = result.http_status
    receipt.last_error = ""
    if batch is not None:
        batch.update_instance(receipt, _OUTCOME_FIELDS)
    else:
        receipt.save(update_fields=_OUTCOME_FIELDS)


_OUTCOME_FIELDS = [
    "outcome",
    "detail",
    "attempts",
    "processed_at",
    "response_status",
    "last_error",
    "event",
    "tx_id",
    "provider_payment_id",
    "escrow_ref",
    "payload_hash",
    "escrow",
    "flagged",
]

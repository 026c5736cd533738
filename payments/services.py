"""The webhook path: store every delivery first, then apply it completely or fail visibly.

Every delivery ends in exactly one of: applied (all effects and the outcome in one
commit), a recognised duplicate, recorded (no money moves for this event), parked for
staff with the money safe in suspense, a conflict, rejected as unauthenticated /
malformed / too large, or failed with its traceback stored and a 5xx so the provider
retries. There is no other ending: an exception is never turned into a success value.
"""

import hashlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from escrow import services as escrow_services
from escrow.audit import record_staff_action
from escrow.models import Escrow
from escrowsite.errors import ApplicationError, NotFound
from payments.models import FINAL_OUTCOMES, Outcome, PaymentEvent, WebhookReceipt
from payments.parsing import (
    PROVIDER,
    EventType,
    MalformedPayload,
    PaymentNotification,
    is_storable,
    load_json,
    parse_notification,
)
from payments.signing import SIGNATURE_HEADER, verify
from wallets import ledger
from wallets.models import AccountKind, Transaction, TransactionType, Transfer, TransferKind

logger = logging.getLogger(__name__)

# HTTP status the provider gets for each outcome. 5xx only where a retry could help.
STATUS_FOR_OUTCOME = {
    Outcome.APPLIED: 200,
    Outcome.RECORDED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.PARKED: 200,
    Outcome.CONFLICT: 409,
    Outcome.UNAUTHENTICATED: 401,
    Outcome.MALFORMED: 400,
    Outcome.TOO_LARGE: 413,
    Outcome.FAILED: 500,
}
# Headers never worth keeping in the receipt log.
_DROPPED_HEADERS = {"cookie", "authorization", "proxy-authorization"}
_MAX_HEADER_VALUE = 2000


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


# --- receipt log -----------------------------------------------------------------------


def clean_headers(headers: dict[str, str]) -> dict[str, str]:
    # jsonb cannot hold NUL: drop it rather than fail to store the receipt at all.
    return {
        name.replace("\x00", ""): value.replace("\x00", "")[:_MAX_HEADER_VALUE]
        for name, value in headers.items()
        if name.lower() not in _DROPPED_HEADERS
    }


def store_receipt(
    *,
    body: bytes,
    headers: dict[str, str],
    remote_ip: str | None,
    body_size: int | None = None,
    provider: str = PROVIDER,
) -> WebhookReceipt:
    """Store one delivery as it arrived, in its own short transaction, before processing.

    `body_size` is the declared size when the body was too large to read in full; such a
    delivery is stored truncated and never processed.
    """
    body_size = len(body) if body_size is None else body_size
    too_large = body_size > settings.WEBHOOK_MAX_BODY_BYTES
    signature = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
    signed = not too_large and verify(body, signature, settings.DYNOPAY_WEBHOOK_SECRET)
    if too_large:
        outcome, detail = Outcome.TOO_LARGE, f"body of {body_size} bytes exceeds the cap"
    elif not signed:
        outcome = Outcome.UNAUTHENTICATED
        detail = "missing signature" if not signature else "signature does not match any secret"
    else:
        outcome, detail = Outcome.RECEIVED, ""
    stored = body[: settings.WEBHOOK_MAX_BODY_BYTES]
    # Identified from the start, so even a delivery whose processing fails or never
    # finishes can be found by escrow and transaction.
    ids = identify(body) if signed else {}
    with transaction.atomic(durable=True):
        receipt = WebhookReceipt.objects.create(
            **ids,
            provider=provider,
            remote_ip=remote_ip,
            headers=clean_headers(headers),
            body=stored,
            body_size=body_size,
            body_sha256=hashlib.sha256(stored).hexdigest(),
            signature_valid=signed,
            outcome=outcome,
            detail=detail,
            response_status=STATUS_FOR_OUTCOME.get(outcome),
            processed_at=None if outcome == Outcome.RECEIVED else timezone.now(),
        )
    if outcome == Outcome.UNAUTHENTICATED:
        logger.warning("webhook receipt %s rejected: %s (from %s)", receipt.pk, detail, remote_ip)
    return receipt


def record_failure(*, receipt_id: int, exc: BaseException) -> None:
    """Mark a receipt failed with its traceback, in a transaction of its own.

    Called after the processing transaction rolled back, so nothing of it remains. If
    this write fails too (database gone), the receipt stays `received`; the integrity
    checker reports it and payments_retry picks it up.
    """
    text = "".join(traceback.format_exception(exc))
    with transaction.atomic(durable=True):
        # The rolled-back processing took the escrow link with it; staff need it to find
        # this failure from the escrow's page, so set it again from the stored reference.
        ref = WebhookReceipt.objects.filter(pk=receipt_id).values_list("escrow_ref", flat=True)
        escrow_id = Escrow.objects.filter(escrow_id__in=ref).values_list("pk", flat=True).first()
        WebhookReceipt.objects.filter(pk=receipt_id).update(
            escrow_id=escrow_id,
            outcome=Outcome.FAILED,
            attempts=F("attempts") + 1,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=text[-20000:],
            processed_at=timezone.now(),
            response_status=500,
        )


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


def _process_locked(receipt: WebhookReceipt, *, source: str, actor_id: int | None) -> ProcessResult:
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
        receipt = WebhookReceipt.objects.select_for_update().get(pk=receipt_id)
        result = _process_locked(receipt, source=source, actor_id=actor_id)
        if not result.already_final:
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


def _save_outcome(receipt: WebhookReceipt, result: ProcessResult) -> None:
    receipt.outcome = result.outcome
    receipt.detail = result.detail
    receipt.attempts += 1
    receipt.processed_at = timezone.now()
    receipt.response_status = result.http_status
    receipt.last_error = ""
    receipt.save(
        update_fields=[
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
    )


@dataclass(frozen=True)
class DeliveryResponse:
    status: int
    body: dict[str, Any]


def handle_delivery(
    *, body: bytes, headers: dict[str, str], remote_ip: str | None, body_size: int | None = None
) -> DeliveryResponse:
    """The whole webhook path: store, verify, process, answer. Used by the view."""
    receipt = store_receipt(body=body, headers=headers, remote_ip=remote_ip, body_size=body_size)
    if receipt.outcome != Outcome.RECEIVED:
        return DeliveryResponse(
            STATUS_FOR_OUTCOME[Outcome(receipt.outcome)],
            {"receipt": receipt.pk, "outcome": receipt.outcome, "detail": receipt.detail},
        )
    return run_processing(receipt_id=receipt.pk, source="webhook")


def run_processing(
    *,
    receipt_id: int,
    source: str,
    actor_id: int | None = None,
    audit: StaffAudit | None = None,
) -> DeliveryResponse:
    """Process a receipt; on any failure record it (traceback, attempts) and answer 500."""
    try:
        result = process_receipt(
            receipt_id=receipt_id, source=source, actor_id=actor_id, audit=audit
        )
    except Exception as exc:  # noqa: BLE001 - recorded on the receipt, logged, answered 500
        # Not swallowed: the failure is stored on the receipt with its traceback, logged at
        # ERROR, and answered with a 500 so the provider retries.
        record_failure(receipt_id=receipt_id, exc=exc)
        ids = WebhookReceipt.objects.filter(pk=receipt_id).values("escrow_ref", "tx_id", "event")
        found = ids.first() or {}
        logger.error(
            "webhook receipt %s failed (escrow %s, key %s:%s:%s)",
            receipt_id,
            found.get("escrow_ref") or "?",
            PROVIDER,
            found.get("tx_id") or "?",
            found.get("event") or "?",
            exc_info=exc,
        )
        return DeliveryResponse(
            500,
            {
                "receipt": receipt_id,
                "outcome": Outcome.FAILED,
                "detail": "processing failed; retry",
            },
        )
    if result.outcome == Outcome.APPLIED:
        logger.info("webhook receipt %s applied: %s", receipt_id, result.detail)
    return DeliveryResponse(result.http_status, result.as_json())


def identify(body: bytes) -> dict[str, str]:
    """Event, transaction id, payment id and escrow reference read leniently from a raw
    body, for the receipt log and log lines before (or whatever the outcome of) full
    parsing: strings only, cut to their columns, empty when absent or unreadable."""
    try:
        data = load_json(body)
    except MalformedPayload:
        return {"event": "", "tx_id": "", "provider_payment_id": "", "escrow_ref": ""}
    meta = data.get("meta_data") if isinstance(data.get("meta_data"), dict) else {}

    def text(value: object, length: int) -> str:
        # Whatever the body holds must never stop the receipt itself from being stored.
        return value.strip()[:length] if isinstance(value, str) and is_storable(value) else ""

    payment_id = text(data.get("id"), 200)
    return {
        "event": text(data.get("event"), 64),
        "tx_id": text(data.get("txId"), 200) or payment_id,
        "provider_payment_id": payment_id,
        "escrow_ref": text(meta.get("refId"), 64) or text(data.get("customer_reference"), 64),
    }


# --- retries ---------------------------------------------------------------------------


def retryable_receipts(
    *, stale_after: timedelta = timedelta(minutes=5)
) -> QuerySet[WebhookReceipt]:
    """Failed receipts, and signed ones left `received` (e.g. by a killed process) for
    longer than `stale_after`, oldest first."""
    cutoff = timezone.now() - stale_after
    return WebhookReceipt.objects.filter(
        Q(outcome=Outcome.FAILED) | Q(outcome=Outcome.RECEIVED, received_at__lt=cutoff),
        signature_valid=True,
    ).order_by("received_at", "pk")


def retry_receipt(
    *, receipt_id: int, dry_run: bool = False, actor_id: int | None = None
) -> DeliveryResponse:
    """Re-process one stored receipt (applied ones are a no-op); dry_run writes nothing."""
    if dry_run:
        try:
            result = preview_receipt(receipt_id=receipt_id, actor_id=actor_id)
        except Exception as exc:  # noqa: BLE001 - reported as a failed preview and logged
            # A preview writes nothing, so there is nothing to record; report the error.
            logger.warning("preview of receipt %s failed", receipt_id, exc_info=exc)
            return DeliveryResponse(
                500,
                {
                    "receipt": receipt_id,
                    "outcome": Outcome.FAILED,
                    "detail": f"{type(exc).__name__}: {exc}",
                },
            )
        return DeliveryResponse(result.http_status, result.as_json() | {"dry_run": True})
    return run_processing(receipt_id=receipt_id, source="retry", actor_id=actor_id)

"""The receipt log: every delivery stored as it arrived, before anything else happens, and
failures recorded on it with their traceback."""

import hashlib
import logging
import traceback

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from escrow.models import Escrow
from escrowsite import sqlbatch
from payments.models import Outcome, WebhookReceipt
from payments.parsing import (
    PROVIDER,
    MalformedPayload,
    is_storable,
    load_json,
)
from payments.signing import SIGNATURE_HEADER, verify

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
    receipt = WebhookReceipt(
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
    _insert_receipt(receipt)
    if outcome == Outcome.UNAUTHENTICATED:
        logger.warning("webhook receipt %s rejected: %s (from %s)", receipt.pk, detail, remote_ip)
    return receipt


def _insert_receipt(receipt: WebhookReceipt) -> None:
    """Store the receipt in its own transaction, committed before processing starts."""
    if not sqlbatch.supported():
        with transaction.atomic(durable=True):
            receipt.save(force_insert=True)
    elif connection.get_autocommit():
        # One prepared statement in autocommit mode: its own transaction, in one round
        # trip instead of three (BEGIN, INSERT, COMMIT).
        sqlbatch.insert_one(receipt)
    else:
        with transaction.atomic(durable=True):
            sqlbatch.insert_one(receipt)


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

"""The whole webhook path for the view (store, verify, process, answer) and retries."""

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from payments.models import Outcome, WebhookReceipt
from payments.parsing import (
    PROVIDER,
)
from payments.services.processing import (
    StaffAudit,
    preview_receipt,
    process_receipt,
)
from payments.services.receipts import (
    STATUS_FOR_OUTCOME,
    record_failure,
    store_receipt,
)

logger = logging.getLogger(__name__)


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

"""The webhook path: store every delivery first, then apply it completely or fail visibly.

Every delivery ends in exactly one of: applied (all effects and the outcome in one
commit), a recognised duplicate, recorded (no money moves for this event), parked for
staff with the money safe in suspense, a conflict, rejected as unauthenticated /
malformed / too large, or failed with its traceback stored and a 5xx so the provider
retries. There is no other ending: an exception is never turned into a success value.

A package: `receipts` (the log, stored first; failures recorded), `processing` (one
durable transaction per receipt) and `delivery` (the view's whole path, and retries).
Callers import from here; tests that patch a processing step patch it in `processing`.
"""

from payments.services.delivery import (
    DeliveryResponse,
    handle_delivery,
    retry_receipt,
    retryable_receipts,
    run_processing,
)
from payments.services.processing import (
    ProcessResult,
    StaffAudit,
    preview_receipt,
    process_receipt,
)
from payments.services.receipts import (
    STATUS_FOR_OUTCOME,
    clean_headers,
    identify,
    record_failure,
    store_receipt,
)

__all__ = [
    "STATUS_FOR_OUTCOME",
    "DeliveryResponse",
    "ProcessResult",
    "StaffAudit",
    "clean_headers",
    "handle_delivery",
    "identify",
    "preview_receipt",
    "process_receipt",
    "record_failure",
    "retry_receipt",
    "retryable_receipts",
    "run_processing",
    "store_receipt",
]

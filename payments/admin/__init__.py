"""Staff view of the webhook receipt log and its repairs: reprocess, attach, credit, acknowledge.

A package: `common` (admin links, and what processing a delivery did or would do, in
staff terms), `actions` (the repairs on one receipt, with their forms), `bulk` (the
changelist's repairs over many receipts), `receipts` (the receipt log's admin) and
`events` (the dedupe table's admin). Importing it, as the admin's autodiscovery does,
registers both admins. Callers import from here; a test that patches a name patches it
in the submodule that looks it up (e.g. `payments.admin.bulk.BULK_REPROCESS_MAX`).
"""

from payments.admin.actions import RECEIPT_ACTIONS, AttachForm, CreditForm
from payments.admin.bulk import BULK_ACKNOWLEDGE_MAX, BULK_REPROCESS_MAX, ReceiptBulkActions
from payments.admin.common import ACKNOWLEDGEABLE, delivery_done, reprocess_preview
from payments.admin.events import PaymentEventAdmin
from payments.admin.receipts import QueueFilter, ReceiptChangeList, WebhookReceiptAdmin

__all__ = [
    "ACKNOWLEDGEABLE",
    "BULK_ACKNOWLEDGE_MAX",
    "BULK_REPROCESS_MAX",
    "RECEIPT_ACTIONS",
    "AttachForm",
    "CreditForm",
    "PaymentEventAdmin",
    "QueueFilter",
    "ReceiptBulkActions",
    "ReceiptChangeList",
    "WebhookReceiptAdmin",
    "delivery_done",
    "reprocess_preview",
]

"""Staff wallet adjustments: audited ledger transfers, with four-eyes approval above a limit.

Staff never edit balances: an adjustment is a transfer between the staff-adjustments system
account and the customer's wallet, a `staff_adjustment` transaction record and a StaffAction
audit row, all in the caller's transaction. Services join an enclosing transaction;
top-level callers (commands, admin actions) wrap them in transaction.atomic(durable=True).

A package: `common` (the audit action names, the outcome and the checks), `posting` (one
adjustment's transfer, record and audit row), `adjust` (adjust_wallet: posted at once or
a pending request) and `approval` (approving or rejecting a request). Callers import from
here; tests that patch a step patch it in the module that looks it up.
"""

from wallets.services.adjust import adjust_wallet
from wallets.services.approval import approve_adjustment, reject_adjustment
from wallets.services.common import (
    ACTION_ADJUSTED,
    ACTION_APPROVED,
    ACTION_REJECTED,
    ACTION_REQUESTED,
    AdjustmentOutcome,
    approval_threshold,
    approval_window_hours,
)

__all__ = [
    "ACTION_ADJUSTED",
    "ACTION_APPROVED",
    "ACTION_REJECTED",
    "ACTION_REQUESTED",
    "AdjustmentOutcome",
    "adjust_wallet",
    "approval_threshold",
    "approval_window_hours",
    "approve_adjustment",
    "reject_adjustment",
]

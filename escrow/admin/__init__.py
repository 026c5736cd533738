"""Staff view of escrows: the list, the timeline page, and the audited repairs.

A package: `actions` (the repairs on one escrow, with their forms), `escrows` (the escrow
admin: filters, search, timeline) and `records` (holdings, status history and the staff
audit log, read-only). Importing it, as the admin's autodiscovery does, registers all
four admins. Callers import from here; a test that patches a name patches it in the
submodule that looks it up (e.g. `escrow.admin.escrows.escrow_timeline`).
"""

from escrow.admin.actions import (
    ESCROW_ACTIONS,
    MONEY,
    ConfirmByHandForm,
    ExtendDeadlineForm,
    ResolveDisputeForm,
)
from escrow.admin.escrows import DeadlineFilter, DeliveryProblemFilter, EscrowAdmin, ProviderFilter
from escrow.admin.records import EscrowHoldingAdmin, StaffActionAdmin, StatusChangeAdmin

__all__ = [
    "ESCROW_ACTIONS",
    "MONEY",
    "ConfirmByHandForm",
    "DeadlineFilter",
    "DeliveryProblemFilter",
    "EscrowAdmin",
    "EscrowHoldingAdmin",
    "ExtendDeadlineForm",
    "ProviderFilter",
    "ResolveDisputeForm",
    "StaffActionAdmin",
    "StatusChangeAdmin",
]

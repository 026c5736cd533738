"""Whole-database integrity checks: named invariants as set-based SQL over one snapshot.

Each check is one (or a few) read-only queries whatever the size of the database, and
reports the ids of what breaks its invariant: escrows by their public id, everything else
by primary key. All checks run in one REPEATABLE READ, READ ONLY transaction, so they see
one consistent snapshot and cannot write. A check whose own query fails (a missing column,
a timeout) is reported as an error, never as "nothing found": the blind monitor of the
incident's service reported "no issues" from a query against a column that did not exist.

A package: `base` (results, the `@check` registry, the runner) and the checks by subject,
registered on import in reporting order: `ledger_checks`, `escrow_checks`,
`payment_checks`.
"""

# isort: off
# Imported for their @check registrations, in the order reports list them.
from wallets.integrity import ledger_checks  # noqa: F401
from wallets.integrity import escrow_checks  # noqa: F401
from wallets.integrity import payment_checks  # noqa: F401

# isort: on
from wallets.integrity.base import (
    CHECKS,
    DEFAULT_MAX_IDS,
    ERROR,
    WARNING,
    Check,
    CheckResult,
    Context,
    Finding,
    Report,
    UnknownCheck,
    run_checks,
    select_checks,
)

__all__ = [
    "CHECKS",
    "DEFAULT_MAX_IDS",
    "ERROR",
    "WARNING",
    "Check",
    "CheckResult",
    "Context",
    "Finding",
    "Report",
    "UnknownCheck",
    "run_checks",
    "select_checks",
]

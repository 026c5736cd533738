"""Deadline sweeps: close, refund or release escrows whose deadline passed, and warn before.

Every deadline is compared with the database clock (`now()`), never the app server's, so
several hosts with drifting clocks agree on what is overdue. The sweep selects candidate
ids with a plain read, then handles each one in its own durable transaction that locks
the row with `SELECT ... FOR UPDATE SKIP LOCKED` and re-checks status and deadline under
that lock. So an escrow that changed since it was selected (paid, accepted, disputed) is
left alone, and of two sweeps running at once exactly one handles each escrow: the other
either skips the locked row or, once the first has committed, no longer finds it due.

The money-moving work is done by the escrow services (which lock the row again in the same
transaction); this module only decides which service applies and when.

A package: `rules` (the deadline table and the warnings), `selection` (candidates by the
database clock, and the result types), `items` (one item under its row lock) and `run`
(the whole sweep). Callers import from here; tests that patch a step patch it in the
module that looks it up (plan_sweep: `escrow.sweeps.run`).
"""

from escrow.sweeps.items import run_item, sweep_escrow, sweep_unpaid_batch, warn_escrow
from escrow.sweeps.rules import (
    RULE_FOR_STATUS,
    RULES,
    WARNING_NAMED,
    WARNINGS,
    DeadlineWarning,
    Result,
    Rule,
    warning_key,
)
from escrow.sweeps.run import plan_sweep, run_sweep
from escrow.sweeps.selection import (
    Candidate,
    ItemResult,
    SweepReport,
    deadline_candidates,
    warning_candidates,
)
from escrowsite.dbclock import db_now

__all__ = [
    "RULES",
    "RULE_FOR_STATUS",
    "WARNINGS",
    "WARNING_NAMED",
    "Candidate",
    "DeadlineWarning",
    "ItemResult",
    "Result",
    "Rule",
    "SweepReport",
    "db_now",
    "deadline_candidates",
    "plan_sweep",
    "run_item",
    "run_sweep",
    "sweep_escrow",
    "sweep_unpaid_batch",
    "warn_escrow",
    "warning_candidates",
    "warning_key",
]

"""What every check shares: results, the registry (`@check`), query helpers, and the
runner that executes checks on one read-only snapshot."""

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from escrow.models import (
    Escrow,
    EscrowHolding,
    EscrowStatus,
    HoldingStatus,
    StaffAction,
    StatusChange,
)
from escrow.transitions import AWAITING_PAYMENT, FUNDED
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from wallets.models import (
    Account,
    Transaction,
    Transfer,
)

logger = logging.getLogger(__name__)

S = EscrowStatus
H = HoldingStatus
ERROR = "error"
WARNING = "warning"
DEFAULT_MAX_IDS = 100

# Escrows that hold (or held) the buyer's money: each has a holding and a payment record.
MONEY_RECEIVED = sorted({S.PARTIALLY_PAID, *FUNDED, S.COMPLETED, S.REFUNDED})
# Escrows whose payment was confirmed (a refunded one only if its history says so).
CONFIRMED = sorted({*FUNDED, S.COMPLETED})
# Escrows that do not hold a confirmed payment: a confirmed payment for one of these that
# is not in the ledger is the incident (ES101325WZY2 stayed payment_pending).
UNFUNDED = sorted({*AWAITING_PAYMENT, S.CANCELLED, S.EXPIRED})
# What an escrow's status may be for each status of its holding.
ESCROW_STATUSES_FOR_HOLDING: dict[str, frozenset[str]] = {
    H.COLLECTING: frozenset({S.PARTIALLY_PAID}),
    H.HELD: FUNDED,
    H.RELEASED: frozenset({S.COMPLETED}),
    H.SPLIT: frozenset({S.COMPLETED}),
    H.REFUNDED: frozenset({S.REFUNDED}),
}
# Receipt outcomes whose processing committed a dedupe claim.
CLAIMING_OUTCOMES = [Outcome.APPLIED, Outcome.RECORDED, Outcome.PARKED]

TABLES = {
    "account": Account._meta.db_table,
    "transfer": Transfer._meta.db_table,
    "record": Transaction._meta.db_table,
    "record_transfers": Transaction.transfers.through._meta.db_table,
    "escrow": Escrow._meta.db_table,
    "holding": EscrowHolding._meta.db_table,
    "status_change": StatusChange._meta.db_table,
    "staff_action": StaffAction._meta.db_table,
    "receipt": WebhookReceipt._meta.db_table,
    "claim": PaymentEvent._meta.db_table,
}


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One offending row: its id and, in words staff read, what is wrong with it."""

    id: int | str
    detail: str = ""


@dataclass
class CheckResult:
    """What one check found. `count` is the total; `findings` is capped at max_ids."""

    name: str
    subject: str
    severity: str
    description: str
    hint: str
    count: int = 0
    findings: list[Finding] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.count == 0

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.count == 0:
            return "ok"
        return "failed" if self.severity == ERROR else "warning"

    @property
    def failed(self) -> bool:
        """True when this result should make the run fail (a warning does not)."""
        return self.status in ("error", "failed")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "severity": self.severity,
            "subject": self.subject,
            "description": self.description,
            "count": self.count,
            "ids": [f.id for f in self.findings],
            "ids_truncated": self.count > len(self.findings),
            "offending": [{"id": f.id, "detail": f.detail} for f in self.findings],
            "hint": self.hint if not self.ok else "",
            "error": self.error or None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Report:
    snapshot_at: datetime
    stale_after: timedelta
    results: list[CheckResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "warning"]

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshot_at": self.snapshot_at,
            "stale_after_seconds": int(self.stale_after.total_seconds()),
            "seconds": round(self.seconds, 3),
            "failed": [r.name for r in self.failed],
            "warnings": [r.name for r in self.warnings],
            "checks": [r.as_json() for r in self.results],
        }


# --- the registry -----------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a check may use: the snapshot's cursor and the run's parameters.

    `vendor` is "postgresql" in production; "sqlite" for the embedded demo database,
    where the few PostgreSQL-only constructs a check needs have a SQLite spelling.
    """

    cursor: Any
    stale_after: timedelta
    max_ids: int
    snapshot_at: datetime = field(default_factory=lambda: datetime.min)
    vendor: str = "postgresql"

    @property
    def stale_before(self) -> Any:
        """The snapshot's time less --stale-after, as a query parameter."""
        return connection.ops.adapt_datetimefield_value(self.snapshot_at - self.stale_after)


CheckFunction = Callable[[Context], tuple[int, list[Finding]]]


@dataclass(frozen=True)
class Check:
    name: str
    subject: str
    severity: str
    description: str
    hint: str
    run: CheckFunction


CHECKS: dict[str, Check] = {}


def check(name: str, *, subject: str, hint: str, severity: str = ERROR):
    """Register a check; its docstring's first paragraph is its description."""

    def register(function: CheckFunction) -> CheckFunction:
        doc = " ".join((function.__doc__ or "").split("\n\n")[0].split())
        CHECKS[name] = Check(name, subject, severity, doc, hint, function)
        return function

    return register


def _rows(
    ctx: Context, sql: str, params: dict[str, Any] | None = None
) -> tuple[int, list[Finding]]:
    """Run a query yielding (id, detail) rows: the total count and the first max_ids."""
    capped = (
        "SELECT q.id, q.detail, count(*) OVER () FROM ("
        + sql.format(**TABLES)
        + ") AS q ORDER BY q.id LIMIT %(max_ids)s"
    )
    ctx.cursor.execute(capped, {**(params or {}), "max_ids": ctx.max_ids})
    rows = ctx.cursor.fetchall()
    return (rows[0][2] if rows else 0), [Finding(row[0], row[1] or "") for row in rows]


def _capped_ids(ctx: Context, ids: Sequence[int]) -> list[int]:
    return list(ids[: ctx.max_ids])


def sql_literal(value: str) -> str:
    """A string literal, for the code's own constants (statuses, kinds) only."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(values: Iterable[str]) -> str:
    """A parenthesised list of the code's constants for `x IN (...)`: the spelling of
    `x = ANY(%(list)s)` that SQLite reads too (it has no arrays)."""
    quoted = [sql_literal(value) for value in values]
    if not quoted:
        raise ValueError("sql_in needs at least one value")
    return "(" + ", ".join(quoted) + ")"


# --- the embedded SQLite of the demo --------------------------------------------------------


def _concat_ws(separator: str, *parts: Any) -> str:
    return separator.join(str(p) for p in parts if p is not None)


def _strpos(text: str | None, part: str | None) -> int | None:
    if text is None or part is None:
        return None
    return text.find(part) + 1


def _regexp_group(pattern: str, text: str | None) -> str | None:
    match = re.search(pattern, text or "")
    return match.group(1) if match else None


def _regexp_groups(pattern: str, text: str | None) -> str:
    return json.dumps(re.findall(pattern, text or ""))


def _prepare_sqlite(raw_connection: Any) -> None:
    """Give SQLite the PostgreSQL functions the checks call, with PostgreSQL's meaning
    (concat_ws skips NULLs; strpos is 1-based, 0 when absent), and the regular
    expression helpers its spelling of the raw-body scan uses."""
    raw_connection.create_function("concat_ws", -1, _concat_ws, deterministic=True)
    raw_connection.create_function("strpos", 2, _strpos, deterministic=True)
    raw_connection.create_function("regexp_group", 2, _regexp_group, deterministic=True)
    raw_connection.create_function("regexp_groups", 2, _regexp_groups, deterministic=True)


# --- running them -------------------------------------------------------------------------


class UnknownCheck(ValueError):
    """A check name that is not registered."""


def select_checks(names: Iterable[str] | None = None) -> list[Check]:
    """The named checks in registry order (all when no names); UnknownCheck otherwise."""
    wanted = list(dict.fromkeys(names or []))
    unknown = [n for n in wanted if n not in CHECKS]
    if unknown:
        raise UnknownCheck(f"unknown check(s): {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    return [c for name, c in CHECKS.items() if not wanted or name in wanted]


def _run_one(check_: Check, ctx: Context) -> CheckResult:
    result = CheckResult(
        name=check_.name,
        subject=check_.subject,
        severity=check_.severity,
        description=check_.description,
        hint=check_.hint,
    )
    started = time.perf_counter()
    try:
        # A savepoint per check: a failing query aborts only its own check, and the
        # others still run on the same snapshot.
        with transaction.atomic():
            result.count, result.findings = check_.run(ctx)
    except DatabaseError as exc:
        # Not swallowed: the check is reported as an error and the run fails.
        logger.error("integrity check %s could not run", check_.name, exc_info=exc)
        result.error = f"{type(exc).__name__}: {exc}".strip()
    result.seconds = time.perf_counter() - started
    return result


def run_checks(
    *,
    names: Iterable[str] | None = None,
    checks: Sequence[Check] | None = None,
    stale_after: timedelta = timedelta(minutes=5),
    max_ids: int = DEFAULT_MAX_IDS,
    wrap: Callable[[Iterable[Check], int], Iterator[Check]] | None = None,
) -> Report:
    """Run the checks (all, the named ones, or the given ones) on one read-only snapshot.

    Must not be called inside another transaction: the snapshot's isolation level has to
    be set by its first statement.
    """
    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        raise DatabaseError(f"the integrity checks need PostgreSQL (or SQLite), not {vendor}")
    selected = list(checks) if checks is not None else select_checks(names)
    started = time.perf_counter()
    results = []
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # For this transaction only: JIT compilation costs more than it saves on these
            # one-off scans (up to a second per query on a million-row ledger).
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SELECT now()")
            snapshot_at = cursor.fetchone()[0]
        else:
            # One SQLite transaction is one snapshot already; query_only makes it read-only.
            _prepare_sqlite(connection.connection)
            cursor.execute("PRAGMA query_only = ON")
            snapshot_at = timezone.now()
        ctx = Context(
            cursor=cursor,
            stale_after=stale_after,
            max_ids=max_ids,
            snapshot_at=snapshot_at,
            vendor=vendor,
        )
        try:
            items = wrap(selected, len(selected)) if wrap else selected
            for check_ in items:
                results.append(_run_one(check_, ctx))
        finally:
            if vendor == "sqlite":
                cursor.execute("PRAGMA query_only = OFF")
    return Report(
        snapshot_at=snapshot_at,
        stale_after=stale_after,
        results=results,
        seconds=time.perf_counter() - started,
    )

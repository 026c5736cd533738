"""Whole-database integrity checks: named invariants as set-based SQL over one snapshot.

Each check is one (or a few) read-only queries whatever the size of the database, and
reports the ids of what breaks its invariant: escrows by their public id, everything else
by primary key. All checks run in one REPEATABLE READ, READ ONLY transaction, so they see
one consistent snapshot and cannot write. A check whose own query fails (a missing column,
a timeout) is reported as an error, never as "nothing found": the blind monitor of the
incident's service reported "no issues" from a query against a column that did not exist.
"""

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import Sum

from escrow.models import (
    Escrow,
    EscrowHolding,
    EscrowStatus,
    HoldingStatus,
    StaffAction,
    StatusChange,
)
from escrow.services import ESCROW_ID_FORMAT
from escrow.transitions import AWAITING_PAYMENT, FUNDED
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.parsing import EventType
from wallets import selectors
from wallets.models import (
    Account,
    AccountKind,
    Transaction,
    TransactionStatus,
    TransactionType,
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
    """What a check may use: the snapshot's cursor and the run's parameters."""

    cursor: Any
    stale_after: timedelta
    max_ids: int


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


# --- the ledger (wallets.selectors) -------------------------------------------------------


@check(
    "ledger_balanced",
    subject="currency",
    hint=(
        "A balance was written outside wallets.ledger or a transfer is missing; "
        "balance_matches_ledger names the accounts."
    ),
)
def _ledger_balanced(ctx: Context) -> tuple[int, list[Finding]]:
    """The balances of all accounts in each currency sum to zero (double entry)."""
    sums = selectors.unbalanced_currency_violations()
    findings = [Finding(c, f"balances sum to {total} {c}") for c, total in sorted(sums.items())]
    return len(findings), findings[: ctx.max_ids]


@check(
    "balance_matches_ledger",
    subject="account",
    hint=(
        "The cached balance was edited by hand or a transfer was lost; correct it with a "
        "ledger transfer (staff adjustment), never by editing the balance."
    ),
)
def _balance_matches_ledger(ctx: Context) -> tuple[int, list[Finding]]:
    """Each account's cached balance equals credits minus debits of its transfers."""
    ids = selectors.stale_balance_violations()
    shown = _capped_ids(ctx, ids)
    credits = dict(
        Transfer.objects.filter(credit_account__in=shown)
        .values("credit_account")
        .annotate(total=Sum("amount"))
        .values_list("credit_account", "total")
    )
    debits = dict(
        Transfer.objects.filter(debit_account__in=shown)
        .values("debit_account")
        .annotate(total=Sum("amount"))
        .values_list("debit_account", "total")
    )
    accounts = Account.objects.in_bulk(shown)
    zero = Decimal("0.00")
    findings = [
        Finding(
            pk,
            f"{accounts[pk].kind} balance {accounts[pk].balance}, ledger says "
            f"{credits.get(pk, zero) - debits.get(pk, zero)} {accounts[pk].currency}",
        )
        for pk in shown
    ]
    return len(ids), findings


@check(
    "no_negative_balance",
    subject="account",
    hint="A customer wallet or escrow holding is overdrawn: the CHECK constraint was bypassed.",
)
def _no_negative_balance(ctx: Context) -> tuple[int, list[Finding]]:
    """No customer wallet or escrow holding has a balance below zero."""
    ids = selectors.negative_balance_violations()
    accounts = Account.objects.in_bulk(_capped_ids(ctx, ids))
    findings = [
        Finding(pk, f"{a.kind} balance {a.balance} {a.currency}") for pk, a in accounts.items()
    ]
    return len(ids), sorted(findings, key=lambda f: f.id)


@check(
    "transfer_currency_matches_accounts",
    subject="transfer",
    hint="A transfer mixes units (e.g. a USD amount under another currency's label).",
)
def _transfer_currency(ctx: Context) -> tuple[int, list[Finding]]:
    """Every transfer is in the currency of both of its accounts."""
    ids = selectors.currency_mismatch_violations()
    transfers = (
        Transfer.objects.filter(pk__in=_capped_ids(ctx, ids))
        .select_related("debit_account", "credit_account")
        .order_by("pk")
    )
    findings = [
        Finding(
            t.pk,
            f"transfer in {t.currency}: debit account #{t.debit_account_id} in "
            f"{t.debit_account.currency}, credit account #{t.credit_account_id} in "
            f"{t.credit_account.currency}",
        )
        for t in transfers
    ]
    return len(ids), findings


@check(
    "holding_transfer_names_its_escrow",
    subject="transfer",
    hint="Money moved in or out of an escrow's holding on behalf of another escrow (or none).",
)
def _holding_transfer_escrow(ctx: Context) -> tuple[int, list[Finding]]:
    """Every transfer into or out of an escrow holding names that holding's escrow."""
    return _rows(
        ctx,
        """
        SELECT t.id, concat_ws(' ', t.kind, t.amount::text, 'names escrow',
                               coalesce(t.escrow_id::text, 'none'), 'but moves money of escrow',
                               CASE WHEN d.kind = %(holding)s THEN d.escrow_id
                                    ELSE c.escrow_id END::text) AS detail
        FROM {transfer} t
        JOIN {account} d ON d.id = t.debit_account_id
        JOIN {account} c ON c.id = t.credit_account_id
        WHERE (d.kind = %(holding)s AND d.escrow_id IS DISTINCT FROM t.escrow_id)
           OR (c.kind = %(holding)s AND c.escrow_id IS DISTINCT FROM t.escrow_id)
        """,
        {"holding": AccountKind.ESCROW_HOLDING},
    )


@check(
    "transaction_record_matches_transfers",
    subject="transaction",
    hint=(
        "A customer-facing record claims money the ledger did not move (like the incident's "
        "hand-inserted ESC_ record), or its transfers differ from its amount."
    ),
)
def _record_matches_transfers(ctx: Context) -> tuple[int, list[Finding]]:
    """Every completed transaction record links transfers whose amounts add up to its
    amount, in its currency."""
    return _rows(
        ctx,
        """
        SELECT x.transaction_id AS id,
               concat_ws(' ', x.type, x.amount::text, x.currency, 'but its transfers',
                         CASE WHEN s.total IS NULL THEN 'are missing'
                              ELSE 'add up to ' || s.total::text || ' '
                                   || s.low_currency END) AS detail
        FROM {record} x
        LEFT JOIN (
            SELECT m.transaction_id, sum(t.amount) AS total,
                   min(t.currency) AS low_currency, max(t.currency) AS high_currency
            FROM {record_transfers} m JOIN {transfer} t ON t.id = m.transfer_id
            GROUP BY m.transaction_id
        ) s ON s.transaction_id = x.id
        WHERE x.status = %(completed)s
          AND (s.total IS DISTINCT FROM x.amount
               OR s.low_currency <> x.currency OR s.high_currency <> x.currency)
        """,
        {"completed": TransactionStatus.COMPLETED},
    )


@check(
    "suspense_holds_money",
    subject="account",
    severity=WARNING,
    hint=(
        "Payments that matched no escrow are parked in suspense: staff attach them to an "
        "escrow or credit a wallet (payment receipts queue in the admin)."
    ),
)
def _suspense(ctx: Context) -> tuple[int, list[Finding]]:
    """Suspense accounts are empty (a warning: parked payments wait for staff)."""
    return _rows(
        ctx,
        """
        SELECT a.id, concat_ws(' ', 'suspense holds', a.balance::text, a.currency || ';',
                               (SELECT count(*) FROM {receipt} r
                                WHERE r.outcome = %(parked)s AND r.flagged)::text,
                               'parked receipt(s) flagged for staff') AS detail
        FROM {account} a
        WHERE a.kind = %(suspense)s AND a.balance <> 0
        """,
        {"suspense": AccountKind.SUSPENSE, "parked": Outcome.PARKED},
    )


# --- escrows and their holdings ------------------------------------------------------------


@check(
    "paid_escrow_has_holding",
    subject="escrow",
    hint=(
        "The escrow says it holds money but has no holding: its payment was lost or its "
        "status was edited by hand. Find the payment (receipts, provider) before acting."
    ),
)
def _paid_escrow_has_holding(ctx: Context) -> tuple[int, list[Finding]]:
    """Every escrow partially paid, payment_confirmed or later (active, delivered,
    disputed, completed, refunded) has its holding."""
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id, e.status || ', no holding' AS detail
        FROM {escrow} e
        WHERE e.status = ANY(%(statuses)s)
          AND NOT EXISTS (SELECT 1 FROM {holding} h WHERE h.escrow_id = e.id)
        """,
        {"statuses": MONEY_RECEIVED},
    )


@check(
    "paid_escrow_has_payment_record",
    subject="escrow",
    hint="The escrow holds money with no escrow_payment transaction record saying where from.",
)
def _paid_escrow_has_record(ctx: Context) -> tuple[int, list[Finding]]:
    """Every escrow partially paid, payment_confirmed or later has at least one
    escrow_payment transaction record."""
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id, e.status || ', no escrow_payment record' AS detail
        FROM {escrow} e
        WHERE e.status = ANY(%(statuses)s)
          AND NOT EXISTS (SELECT 1 FROM {record} x
                          WHERE x.escrow_id = e.id AND x.type = %(payment)s)
        """,
        {"statuses": MONEY_RECEIVED, "payment": TransactionType.ESCROW_PAYMENT},
    )


@check(
    "confirmed_escrow_has_deadline",
    subject="escrow",
    hint=(
        "A confirmed escrow without payment_confirmed_at or delivery_deadline is invisible "
        "to the deadline sweeps; its status was probably set by hand."
    ),
)
def _confirmed_escrow_dates(ctx: Context) -> tuple[int, list[Finding]]:
    """Every escrow whose payment was confirmed (payment_confirmed, active, delivered,
    disputed, completed, and refunded ones whose history passed payment_confirmed) has
    payment_confirmed_at and a delivery deadline."""
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id,
               concat_ws(', ', e.status,
                         CASE WHEN e.payment_confirmed_at IS NULL
                              THEN 'no payment_confirmed_at' END,
                         CASE WHEN e.delivery_deadline IS NULL
                              THEN 'no delivery_deadline' END) AS detail
        FROM {escrow} e
        WHERE (e.payment_confirmed_at IS NULL OR e.delivery_deadline IS NULL)
          AND (e.status = ANY(%(confirmed)s)
               OR (e.status = %(refunded)s
                   AND EXISTS (SELECT 1 FROM {status_change} sc
                               WHERE sc.escrow_id = e.id AND sc.to_status = %(paid)s)))
        """,
        {"confirmed": CONFIRMED, "refunded": S.REFUNDED, "paid": S.PAYMENT_CONFIRMED},
    )


@check(
    "holding_balance_matches_status",
    subject="escrow",
    hint=(
        "The money held differs from what the holding's status says: held = total due "
        "less any accepted shortfall; collecting = more than 0, less than total due; "
        "released, refunded or split = 0."
    ),
)
def _holding_balance(ctx: Context) -> tuple[int, list[Finding]]:
    """Every holding holds what its status says: held → total_due − accepted_shortfall;
    collecting → more than zero and less than total_due; released/refunded/split → zero."""
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id,
               concat_ws(' ', 'holding', h.status, 'holds', a.balance::text,
                         '; escrow', e.status, 'total due', e.total_due::text,
                         'accepted shortfall', e.accepted_shortfall::text) AS detail
        FROM {holding} h
        JOIN {escrow} e ON e.id = h.escrow_id
        JOIN {account} a ON a.id = h.account_id
        WHERE NOT CASE h.status
            WHEN %(held)s THEN a.balance = e.total_due - e.accepted_shortfall
            WHEN %(collecting)s THEN a.balance > 0 AND a.balance < e.total_due
            ELSE a.balance = 0 END
        """,
        {"held": H.HELD, "collecting": H.COLLECTING},
    )


@check(
    "holding_status_matches_escrow",
    subject="escrow",
    hint=(
        "The escrow's status and its holding's disagree (collecting ↔ partially_paid, "
        "held ↔ payment_confirmed/active/delivered/disputed, released or split ↔ "
        "completed, refunded ↔ refunded)."
    ),
)
def _holding_status(ctx: Context) -> tuple[int, list[Finding]]:
    """Every holding's status agrees with its escrow's status."""
    pairs = sorted((h, e) for h, statuses in ESCROW_STATUSES_FOR_HOLDING.items() for e in statuses)
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id, 'escrow ' || e.status || ' but holding ' || h.status AS detail
        FROM {holding} h
        JOIN {escrow} e ON e.id = h.escrow_id
        LEFT JOIN unnest(%(holding_statuses)s::text[], %(escrow_statuses)s::text[])
            AS allowed(holding_status, escrow_status)
            ON allowed.holding_status = h.status AND allowed.escrow_status = e.status
        WHERE allowed.holding_status IS NULL
        """,
        {
            "holding_statuses": [h for h, _ in pairs],
            "escrow_statuses": [e for _, e in pairs],
        },
    )


@check(
    "holding_account_consistent",
    subject="escrow",
    hint=(
        "A holding row and its ledger account disagree, or a holding account has no holding "
        "row (the row was deleted, or money was put in an account no escrow tracks)."
    ),
)
def _holding_account(ctx: Context) -> tuple[int, list[Finding]]:
    """Every holding uses its own escrow's holding account in the escrow's currency, and
    every escrow holding account belongs to a holding."""
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id,
               concat_ws(' ', 'holding uses account', '#' || a.id, '(' || a.kind, 'of escrow',
                         coalesce(a.escrow_id::text, 'none') || ',', a.currency || ')',
                         'for an escrow in', e.currency) AS detail
        FROM {holding} h
        JOIN {escrow} e ON e.id = h.escrow_id
        JOIN {account} a ON a.id = h.account_id
        WHERE a.kind <> %(holding)s OR a.escrow_id IS DISTINCT FROM h.escrow_id
           OR a.currency <> e.currency
        UNION ALL
        SELECT coalesce(e.escrow_id, 'escrow #' || a.escrow_id::text) AS id,
               concat_ws(' ', 'holding account', '#' || a.id, 'holds', a.balance::text,
                         a.currency, 'but no holding row uses it') AS detail
        FROM {account} a
        LEFT JOIN {escrow} e ON e.id = a.escrow_id
        WHERE a.kind = %(holding)s
          AND NOT EXISTS (SELECT 1 FROM {holding} h WHERE h.account_id = a.id)
        """,
        {"holding": AccountKind.ESCROW_HOLDING},
    )


@check(
    "escrow_status_matches_history",
    subject="escrow",
    hint=(
        "The status was changed without going through escrow.services (which records "
        "every move): a hand edit, like the incident's UPDATE escrows SET status = ..."
    ),
)
def _status_history(ctx: Context) -> tuple[int, list[Finding]]:
    """Every escrow's status is the last status its history moved it to."""
    # Moves of one escrow are made one at a time under its row lock, so the highest id is
    # the latest move (cheaper than ordering by time).
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id,
               'status ' || e.status || ', history ends at '
               || coalesce(sc.to_status, 'nothing') AS detail
        FROM {escrow} e
        LEFT JOIN (SELECT escrow_id, max(id) AS id FROM {status_change} GROUP BY escrow_id)
            last ON last.escrow_id = e.id
        LEFT JOIN {status_change} sc ON sc.id = last.id
        WHERE sc.to_status IS DISTINCT FROM e.status
        """,
    )


# --- payments: receipts, records and the ledger --------------------------------------------


@check(
    "confirmed_payment_escrow_unfunded",
    subject="escrow",
    hint=(
        "A signed payment.confirmed delivery is on record but the escrow never got the "
        "money (incident ES101325WZY2). Run payments_retry (it re-processes failed and "
        "stuck receipts); if the receipt says applied, the ledger lost it: escalate."
    ),
)
def _confirmed_payment_unfunded(ctx: Context) -> tuple[int, list[Finding]]:
    """No escrow awaiting payment, cancelled or expired has a signed payment.confirmed
    delivery on record (applied, failed, or received longer than --stale-after ago)
    whose payment is not in the ledger."""
    # A receipt whose processing was killed or rolled back has no parsed fields: the
    # escrow reference and the transaction id are read from its raw body instead. Only
    # failed and received receipts can be like that (the few the partial index holds).
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id,
               string_agg(concat_ws(' ', 'receipt', '#' || p.id, '(' || p.outcome || ')',
                                    p.provider || ':' || p.tx_id || ';', 'escrow', e.status,
                                    CASE WHEN h.id IS NULL THEN 'with no holding'
                                         ELSE 'with its holding ' || h.status END,
                                    'and no ledger transfer for this payment'),
                          '; ' ORDER BY p.id) AS detail
        FROM (
            SELECT r.id, r.outcome, r.provider, r.tx_id, r.escrow_ref AS ref
            FROM {receipt} r
            WHERE r.signature_valid AND r.event = %(confirmed)s
              AND (r.outcome = ANY(%(settled)s)
                   OR (r.outcome = %(received)s AND r.received_at < now() - %(stale)s))
            UNION ALL
            SELECT DISTINCT r.id, r.outcome, r.provider,
                   coalesce(substring(b.raw FROM %(tx_pattern)s), ''), m.ref[1]
            FROM {receipt} r
            CROSS JOIN LATERAL (SELECT encode(r.body, 'escape') AS raw) b
            CROSS JOIN LATERAL regexp_matches(b.raw, %(escrow_pattern)s, 'g') AS m(ref)
            WHERE r.signature_valid AND r.event = ''
              AND (r.outcome = %(failed)s
                   OR (r.outcome = %(received)s AND r.received_at < now() - %(stale)s))
              AND b.raw ~ %(event_pattern)s
        ) p
        JOIN {escrow} e ON e.escrow_id = p.ref AND e.status = ANY(%(unfunded)s)
        LEFT JOIN {holding} h ON h.escrow_id = e.id
        WHERE NOT EXISTS (SELECT 1 FROM {transfer} t
                          WHERE t.escrow_id = e.id AND p.tx_id <> ''
                            AND t.reference = p.provider || ':' || p.tx_id)
        GROUP BY e.escrow_id
        """,
        {
            "confirmed": EventType.CONFIRMED,
            "settled": [Outcome.APPLIED, Outcome.FAILED],
            "failed": Outcome.FAILED,
            "received": Outcome.RECEIVED,
            "stale": ctx.stale_after,
            "unfunded": UNFUNDED,
            "escrow_pattern": ESCROW_ID_FORMAT.pattern,
            "tx_pattern": r'"txId"\s*:\s*"?([^",}\s\\]+)',
            "event_pattern": r'"event"\s*:\s*"payment\.confirmed"',
        },
    )


@check(
    "money_receipt_has_transfers",
    subject="receipt",
    hint=(
        "The receipt's outcome was committed without its ledger transfers (the incident's "
        "silent rollback). Compare with the provider before acting; do not re-mark it."
    ),
)
def _receipt_has_transfers(ctx: Context) -> tuple[int, list[Finding]]:
    """Every receipt marked applied has ledger transfers referencing `<provider>:<tx_id>`
    for its escrow, and every parked one has its suspense transfer."""
    # Applied ones are matched by escrow and reference, parked ones by their suspense
    # transfer's idempotency key: two anti-joins, each read the ledger at most once.
    return _rows(
        ctx,
        """
        SELECT r.id, concat_ws(' ', r.outcome, r.provider || ':' || r.tx_id,
                               coalesce('for ' || e.escrow_id, '(no escrow linked)'),
                               'has no ledger transfer') AS detail
        FROM {receipt} r
        LEFT JOIN {escrow} e ON e.id = r.escrow_id
        WHERE r.outcome = %(applied)s
          AND NOT EXISTS (SELECT 1 FROM {transfer} t
                          WHERE t.escrow_id = r.escrow_id
                            AND t.reference = r.provider || ':' || r.tx_id)
        UNION ALL
        SELECT r.id, concat_ws(' ', r.outcome, r.provider || ':' || r.tx_id,
                               'has no suspense transfer') AS detail
        FROM {receipt} r
        WHERE r.outcome = %(parked)s
          AND NOT EXISTS (SELECT 1 FROM {transfer} t
                          WHERE t.idempotency_key = r.provider || ':' || r.tx_id || ':suspense')
        """,
        {"applied": Outcome.APPLIED, "parked": Outcome.PARKED},
    )


@check(
    "payment_record_has_receipt",
    subject="transaction",
    hint=(
        "An escrow_payment record with no applied provider delivery and no staff action "
        "explaining it: money that arrived without a trace of where from (or a hand-"
        "inserted record, like the incident's repair)."
    ),
)
def _record_has_receipt(ctx: Context) -> tuple[int, list[Finding]]:
    """Every escrow_payment transaction record has an applied receipt for its provider
    transaction and escrow, or a staff action on its escrow that names it."""
    return _rows(
        ctx,
        """
        SELECT x.transaction_id AS id,
               concat_ws(' ', 'escrow', coalesce(e.escrow_id, 'none') || ',',
                         nullif(x.provider || ':' || x.external_tx_id, ':'),
                         'has no applied receipt or staff action') AS detail
        FROM {record} x
        LEFT JOIN {escrow} e ON e.id = x.escrow_id
        WHERE x.type = %(payment)s
          AND NOT EXISTS (
              SELECT 1 FROM {receipt} r
              WHERE r.provider = x.provider AND r.tx_id = x.external_tx_id
                AND r.event = %(confirmed)s AND r.outcome = %(applied)s
                AND r.escrow_id = x.escrow_id AND x.external_tx_id <> '')
          AND NOT EXISTS (
              SELECT 1 FROM {staff_action} sa
              WHERE sa.escrow_id = x.escrow_id
                AND (strpos(sa.changes::text || ' ' || sa.target, x.transaction_id) > 0
                     OR (x.external_tx_id <> ''
                         AND strpos(sa.changes::text || ' ' || sa.target,
                                    x.external_tx_id) > 0)))
        """,
        {
            "payment": TransactionType.ESCROW_PAYMENT,
            "confirmed": EventType.CONFIRMED,
            "applied": Outcome.APPLIED,
        },
    )


@check(
    "receipt_claim_matches_outcome",
    subject="receipt",
    hint=(
        "Dedupe claims are committed with the outcome in one transaction: a mismatch means "
        "an outcome was written without its processing (or the reverse)."
    ),
)
def _receipt_claim(ctx: Context) -> tuple[int, list[Finding]]:
    """Every applied, recorded or parked receipt holds its dedupe claim (PaymentEvent),
    and no other receipt does."""
    return _rows(
        ctx,
        """
        SELECT r.id,
               CASE WHEN c.id IS NULL THEN r.outcome || ' but holds no dedupe claim'
                    ELSE r.outcome || ' but holds the claim of ' || c.provider || ':'
                         || c.tx_id || ':' || c.event END AS detail
        FROM {receipt} r
        LEFT JOIN {claim} c ON c.receipt_id = r.id
        WHERE (r.outcome = ANY(%(claiming)s)) <> (c.id IS NOT NULL)
        """,
        {"claiming": CLAIMING_OUTCOMES},
    )


@check(
    "receipt_stuck_received",
    subject="receipt",
    hint=(
        "Left 'received' (e.g. by a killed process) longer than --stale-after: "
        "payments_retry picks these up and processes them from the stored body."
    ),
)
def _receipt_stuck(ctx: Context) -> tuple[int, list[Finding]]:
    """Every signed receipt older than --stale-after has reached an outcome."""
    return _rows(
        ctx,
        """
        SELECT r.id, 'received ' || date_trunc('second', now() - r.received_at)::text
                     || ' ago, never processed' AS detail
        FROM {receipt} r
        WHERE r.signature_valid AND r.outcome = %(received)s
          AND r.received_at < now() - %(stale)s
        """,
        {"received": Outcome.RECEIVED, "stale": ctx.stale_after},
    )


@check(
    "receipt_failed",
    subject="receipt",
    hint=(
        "Processing failed (traceback on the receipt in the admin); payments_retry "
        "re-processes failed receipts once the cause is fixed."
    ),
)
def _receipt_failed(ctx: Context) -> tuple[int, list[Finding]]:
    """No signed receipt is left failed."""
    return _rows(
        ctx,
        """
        SELECT r.id, concat_ws(' ', 'failed after', r.attempts::text, 'attempt(s):',
                               left(r.last_error, 200)) AS detail
        FROM {receipt} r
        WHERE r.signature_valid AND r.outcome = %(failed)s
        """,
        {"failed": Outcome.FAILED},
    )


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
    if connection.vendor != "postgresql":
        raise DatabaseError(f"the integrity checks need PostgreSQL, not {connection.vendor}")
    selected = list(checks) if checks is not None else select_checks(names)
    started = time.perf_counter()
    results = []
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # For this transaction only: JIT compilation costs more than it saves on these
        # one-off scans (up to a second per query on a million-row ledger).
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SELECT now()")
        snapshot_at = cursor.fetchone()[0]
        ctx = Context(cursor=cursor, stale_after=stale_after, max_ids=max_ids)
        items = wrap(selected, len(selected)) if wrap else selected
        for check_ in items:
            results.append(_run_one(check_, ctx))
    return Report(
        snapshot_at=snapshot_at,
        stale_after=stale_after,
        results=results,
        seconds=time.perf_counter() - started,
    )

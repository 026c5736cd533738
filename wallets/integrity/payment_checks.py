"""Checks of payment receipts against the ledger, records and escrows (the incident)."""

import logging

from escrow.services import ESCROW_ID_FORMAT
from payments.models import Outcome
from payments.parsing import EventType
from wallets.integrity.base import (
    CLAIMING_OUTCOMES,
    UNFUNDED,
    Context,
    Finding,
    _rows,
    check,
    sql_in,
)
from wallets.models import (
    TransactionType,
)

logger = logging.getLogger(__name__)

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
    sql = """
        SELECT e.escrow_id AS id, {aggregate} AS detail
        FROM (
            SELECT r.id, r.outcome, r.provider, r.tx_id, r.escrow_ref AS ref
            FROM {receipt} r
            WHERE r.signature_valid AND r.event = %(confirmed)s
              AND (r.outcome IN {settled}
                   OR (r.outcome = %(received)s AND r.received_at < %(stale_before)s))
            UNION ALL
            {from_raw_body}
        ) p
        JOIN {escrow} e ON e.escrow_id = p.ref AND e.status IN {unfunded}
        LEFT JOIN {holding} h ON h.escrow_id = e.id
        WHERE NOT EXISTS (SELECT 1 FROM {transfer} t
                          WHERE t.escrow_id = e.id AND p.tx_id <> ''
                            AND t.reference = p.provider || ':' || p.tx_id)
        GROUP BY e.escrow_id
        """
    part = """concat_ws(' ', 'receipt', '#' || p.id, '(' || p.outcome || ')',
                        p.provider || ':' || p.tx_id || ';', 'escrow', e.status,
                        CASE WHEN h.id IS NULL THEN 'with no holding'
                             ELSE 'with its holding ' || h.status END,
                        'and no ledger transfer for this payment')"""
    unparsed = """r.signature_valid AND r.event = ''
              AND (r.outcome = %(failed)s
                   OR (r.outcome = %(received)s AND r.received_at < %(stale_before)s))"""
    if ctx.vendor == "postgresql":
        aggregate = f"string_agg({part}, '; ' ORDER BY p.id)"
        from_raw_body = f"""
            SELECT DISTINCT r.id, r.outcome, r.provider,
                   coalesce(substring(b.raw FROM %(tx_pattern)s), ''), m.ref[1]
            FROM {{receipt}} r
            CROSS JOIN LATERAL (SELECT encode(r.body, 'escape') AS raw) b
            CROSS JOIN LATERAL regexp_matches(b.raw, %(escrow_pattern)s, 'g') AS m(ref)
            WHERE {unparsed} AND b.raw ~ %(event_pattern)s"""
    else:
        # SQLite: the escrow references found in the body come back as a JSON array, and
        # json_each turns them into rows (its table-valued functions see earlier tables,
        # as LATERAL does). group_concat keeps the order of the rows it is given.
        aggregate = f"group_concat({part}, '; ')"
        from_raw_body = f"""
            SELECT DISTINCT r.id, r.outcome, r.provider,
                   coalesce(regexp_group(%(tx_pattern)s, CAST(r.body AS TEXT)), ''), m.value
            FROM {{receipt}} r,
                 json_each(regexp_groups(%(escrow_pattern)s, CAST(r.body AS TEXT))) m
            WHERE {unparsed} AND CAST(r.body AS TEXT) REGEXP %(event_pattern)s"""
    sql = sql.replace("{aggregate}", aggregate).replace("{from_raw_body}", from_raw_body)
    sql = sql.replace("{settled}", sql_in([Outcome.APPLIED, Outcome.FAILED]))
    sql = sql.replace("{unfunded}", sql_in(UNFUNDED))
    return _rows(
        ctx,
        sql,
        {
            "confirmed": EventType.CONFIRMED,
            "failed": Outcome.FAILED,
            "received": Outcome.RECEIVED,
            "stale_before": ctx.stale_before,
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
                AND (strpos(CAST(sa.changes AS TEXT) || ' ' || sa.target, x.transaction_id) > 0
                     OR (x.external_tx_id <> ''
                         AND strpos(CAST(sa.changes AS TEXT) || ' ' || sa.target,
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
        WHERE (r.outcome IN """
        + sql_in(CLAIMING_OUTCOMES)
        + """) <> (c.id IS NOT NULL)
        """,
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
        SELECT r.id, 'received ' || CAST(r.received_at AS TEXT)
                     || ', never processed' AS detail
        FROM {receipt} r
        WHERE r.signature_valid AND r.outcome = %(received)s
          AND r.received_at < %(stale_before)s
        """,
        {"received": Outcome.RECEIVED, "stale_before": ctx.stale_before},
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
        SELECT r.id, concat_ws(' ', 'failed after', CAST(r.attempts AS TEXT), 'attempt(s):',
                               substr(r.last_error, 1, 200)) AS detail
        FROM {receipt} r
        WHERE r.signature_valid AND r.outcome = %(failed)s
        """,
        {"failed": Outcome.FAILED},
    )

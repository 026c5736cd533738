"""Checks of escrows against their holdings, records, deadlines and history."""

import logging

from wallets.integrity.base import (
    CONFIRMED,
    ESCROW_STATUSES_FOR_HOLDING,
    MONEY_RECEIVED,
    Context,
    Finding,
    H,
    S,
    _rows,
    check,
    sql_in,
    sql_literal,
)
from wallets.models import (
    AccountKind,
    TransactionType,
)

logger = logging.getLogger(__name__)

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
        WHERE e.status IN """
        + sql_in(MONEY_RECEIVED)
        + """
          AND NOT EXISTS (SELECT 1 FROM {holding} h WHERE h.escrow_id = e.id)
        """,
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
        WHERE e.status IN """
        + sql_in(MONEY_RECEIVED)
        + """
          AND NOT EXISTS (SELECT 1 FROM {record} x
                          WHERE x.escrow_id = e.id AND x.type = %(payment)s)
        """,
        {"payment": TransactionType.ESCROW_PAYMENT},
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
          AND (e.status IN """
        + sql_in(CONFIRMED)
        + """
               OR (e.status = %(refunded)s
                   AND EXISTS (SELECT 1 FROM {status_change} sc
                               WHERE sc.escrow_id = e.id AND sc.to_status = %(paid)s)))
        """,
        {"refunded": S.REFUNDED, "paid": S.PAYMENT_CONFIRMED},
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
               concat_ws(' ', 'holding', h.status, 'holds', CAST(a.balance AS TEXT),
                         '; escrow', e.status, 'total due', CAST(e.total_due AS TEXT),
                         'accepted shortfall', CAST(e.accepted_shortfall AS TEXT)) AS detail
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
    allowed = ", ".join(f"({sql_literal(h)}, {sql_literal(e)})" for h, e in pairs)
    return _rows(
        ctx,
        """
        SELECT e.escrow_id AS id, 'escrow ' || e.status || ' but holding ' || h.status AS detail
        FROM {holding} h
        JOIN {escrow} e ON e.id = h.escrow_id
        WHERE (h.status, e.status) NOT IN (VALUES """
        + allowed
        + """)
        """,
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
                         coalesce(CAST(a.escrow_id AS TEXT), 'none') || ',', a.currency || ')',
                         'for an escrow in', e.currency) AS detail
        FROM {holding} h
        JOIN {escrow} e ON e.id = h.escrow_id
        JOIN {account} a ON a.id = h.account_id
        WHERE a.kind <> %(holding)s OR a.escrow_id IS DISTINCT FROM h.escrow_id
           OR a.currency <> e.currency
        UNION ALL
        SELECT coalesce(e.escrow_id, 'escrow #' || CAST(a.escrow_id AS TEXT)) AS id,
               concat_ws(' ', 'holding account', '#' || a.id, 'holds', CAST(a.balance AS TEXT),
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

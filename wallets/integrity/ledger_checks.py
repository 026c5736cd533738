"""Checks of the ledger itself: sums, cached balances, signs, currencies, records."""

import logging
from decimal import Decimal

from django.db.models import Sum

from payments.models import Outcome
from wallets import selectors
from wallets.integrity.base import (
    WARNING,
    Context,
    Finding,
    _capped_ids,
    _rows,
    check,
)
from wallets.models import (
    Account,
    AccountKind,
    TransactionStatus,
    Transfer,
)

logger = logging.getLogger(__name__)

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
        SELECT t.id, concat_ws(' ', t.kind, CAST(t.amount AS TEXT), 'names escrow',
                               coalesce(CAST(t.escrow_id AS TEXT), 'none'),
                               'but moves money of escrow',
                               CAST(CASE WHEN d.kind = %(holding)s THEN d.escrow_id
                                         ELSE c.escrow_id END AS TEXT)) AS detail
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
               concat_ws(' ', x.type, CAST(x.amount AS TEXT), x.currency, 'but its transfers',
                         CASE WHEN s.total IS NULL THEN 'are missing'
                              ELSE 'add up to ' || CAST(s.total AS TEXT) || ' '
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
        SELECT a.id, concat_ws(' ', 'suspense holds', CAST(a.balance AS TEXT), a.currency || ';',
                               CAST((SELECT count(*) FROM {receipt} r
                                     WHERE r.outcome = %(parked)s AND r.flagged) AS TEXT),
                               'parked receipt(s) flagged for staff') AS detail
        FROM {account} a
        WHERE a.kind = %(suspense)s AND a.balance <> 0
        """,
        {"suspense": AccountKind.SUSPENSE, "parked": Outcome.PARKED},
    )

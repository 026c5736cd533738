"""Read-only ledger queries: the invariants an integrity check asserts, as set-based SQL.

Each `*_violations` selector returns the offending ids (empty means the invariant holds)
and runs a fixed number of queries whatever the size of the ledger. They only read, so an
integrity check may run them at any time; inside one transaction they see one snapshot
only under REPEATABLE READ, so a checker that wants the three to agree should use that
isolation level or tolerate a transfer committed in between.
"""

from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import DecimalField, F, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from wallets.models import (
    NON_NEGATIVE_KINDS,
    Account,
    AccountKind,
    AdjustmentRequest,
    AdjustmentStatus,
    Transfer,
)
from wallets.money import MONEY_DIGITS, MONEY_PLACES

_MONEY = DecimalField(max_digits=MONEY_DIGITS + 4, decimal_places=MONEY_PLACES)
_ZERO = Value(Decimal("0"), output_field=_MONEY)


def _sum_of_transfers(account_field: str) -> Coalesce:
    """Sum of transfer amounts whose `account_field` is the outer account (0 if none).

    A correlated subquery per side instead of joining both relations: a join of debits and
    credits would multiply rows and inflate both sums.
    """
    per_account = (
        Transfer.objects.filter(**{account_field: OuterRef("pk")})
        .order_by()
        .values(account_field)
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Coalesce(Subquery(per_account, output_field=_MONEY), _ZERO)


def unbalanced_currency_violations() -> dict[str, Decimal]:
    """Currencies whose account balances do not sum to zero, with the non-zero sum.

    Double entry means every transfer adds to one balance what it takes from another, so a
    non-zero sum means a balance was written outside the ledger (or a transfer was lost).
    """
    rows = (
        Account.objects.order_by()
        .values("currency")
        .annotate(total=Sum("balance"))
        .exclude(total=0)
        .values_list("currency", "total")
    )
    return dict(rows)


def stale_balance_violations() -> list[int]:
    """Ids of accounts whose cached `balance` differs from credits minus debits of transfers.

    The cache may only change together with its transfers; a difference means a hand edit,
    a lost transfer or a bug in wallets.ledger.
    """
    return list(
        Account.objects.annotate(
            credited=_sum_of_transfers("credit_account"),
            debited=_sum_of_transfers("debit_account"),
        )
        .exclude(balance=F("credited") - F("debited"))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def negative_balance_violations() -> list[int]:
    """Ids of customer wallets and escrow holdings with a balance below zero.

    The CHECK constraint forbids it, so a hit means the constraint was dropped or bypassed.
    """
    return list(
        Account.objects.filter(kind__in=NON_NEGATIVE_KINDS, balance__lt=0)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def currency_mismatch_violations() -> list[int]:
    """Ids of transfers whose currency differs from their debit or credit account's.

    Unit mixing (a USD figure under another currency's label) would make the per-currency
    sums meaningless even while they are zero.
    """
    return list(
        Transfer.objects.filter(
            ~Q(currency=F("debit_account__currency")) | ~Q(currency=F("credit_account__currency"))
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def pending_adjustment_requests() -> list[AdjustmentRequest]:
    """Staff adjustment requests waiting for a second staff member, oldest first."""
    return list(
        AdjustmentRequest.objects.filter(status=AdjustmentStatus.PENDING)
        .select_related("customer", "requested_by")
        .order_by("requested_at", "pk")
    )


def wallet_balance(*, customer_id: int, currency: str) -> Decimal:
    """The customer's wallet balance in `currency`; zero if the wallet was never opened."""
    balance = (
        Account.objects.filter(
            kind=AccountKind.CUSTOMER, customer_id=customer_id, currency=currency
        )
        .values_list("balance", flat=True)
        .first()
    )
    return balance if balance is not None else Decimal("0.00")


@dataclass(frozen=True)
class LedgerViolations:
    """Everything the ledger invariants selectors found; falsy when the ledger is sound."""

    unbalanced_currencies: dict[str, Decimal] = field(default_factory=dict)
    stale_balance_accounts: list[int] = field(default_factory=list)
    negative_accounts: list[int] = field(default_factory=list)
    currency_mismatch_transfers: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.unbalanced_currencies
            or self.stale_balance_accounts
            or self.negative_accounts
            or self.currency_mismatch_transfers
        )


def ledger_violations() -> LedgerViolations:
    """Run every ledger invariant selector (four queries)."""
    return LedgerViolations(
        unbalanced_currencies=unbalanced_currency_violations(),
        stale_balance_accounts=stale_balance_violations(),
        negative_accounts=negative_balance_violations(),
        currency_mismatch_transfers=currency_mismatch_violations(),
    )

"""The double-entry ledger: the only code that moves money or writes balances.

Every movement is a Transfer from a debit account to a credit account. Cached balances
change in the same transaction as their transfers. Lock order is global and fixed:
accounts that may not go negative (customer wallets, escrow holdings) first, by primary
key, then system accounts (clearing, revenue, suspense, staff) by primary key, so two
units of work never wait on each other in opposite orders. Hot system accounts are
updated last so that their row locks are held for the shortest time.

Callers post everything one unit of work moves in a single `post_transfers` call.
A hot path may wrap its unit of work in `deferred_system_balances()` so that the system
accounts' balance UPDATEs run as its very last statements (see there).
"""

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import F

from escrowsite import sqlbatch
from escrowsite.errors import IdempotencyConflict, InsufficientFunds, LedgerError
from escrowsite.sqlbatch import Add
from wallets.models import (
    NON_NEGATIVE_KINDS,
    Account,
    AccountKind,
    Customer,
    Transfer,
    TransferKind,
)
from wallets.money import CENT, MONEY_DIGITS, MONEY_PLACES, USD, quantize_usd

if TYPE_CHECKING:
    from escrowsite.sqlbatch import StatementBatch

SYSTEM_KINDS = (
    AccountKind.PLATFORM_REVENUE,
    AccountKind.SUSPENSE,
    AccountKind.STAFF_ADJUSTMENTS,
)


@dataclass(frozen=True)
class Leg:
    """One transfer to post. `idempotency_key` must be unique across the ledger."""

    debit: Account
    credit: Account
    amount: Decimal
    kind: str
    idempotency_key: str
    escrow_id: int | None = None
    reference: str = ""
    memo: str = ""
    actor_id: int | None = None
    reverses_id: int | None = None


# --- accounts --------------------------------------------------------------------------


def _get_or_create(lookup: dict, defaults: dict | None = None) -> Account:
    # get_or_create retries the read after a unique-constraint race inside a savepoint,
    # so concurrent first payments of one customer end with one wallet.
    account, _ = Account.objects.get_or_create(**lookup, defaults=defaults or {})
    return account


def customer_wallet(*, customer: Customer | int, currency: str = USD) -> Account:
    """The customer's wallet in `currency`, created empty (with the customer, if need be)
    on first use. An existing wallet costs one query: this is on every payment's path."""
    customer_id = customer if isinstance(customer, int) else customer.pk
    lookup = {"kind": AccountKind.CUSTOMER, "customer_id": customer_id, "currency": currency}
    wallet = Account.objects.filter(**lookup).first()
    if wallet is not None:
        return wallet
    if not isinstance(customer, Customer):
        Customer.objects.get_or_create(telegram_id=customer_id)
    return _get_or_create(lookup)


def open_wallet_locked(*, customer_id: int, currency: str = USD) -> Account:
    """The customer's wallet, opened if need be, row-locked: two statements, no ORM.

    For the webhook hot path (the customer exists: it is an escrow's buyer). INSERT ...
    ON CONFLICT DO NOTHING waits for a concurrent opener to commit, and the locking
    SELECT then sees whichever wallet won, so simultaneous first credits of one
    customer queue on the wallet instead of failing on its unique constraint.
    """
    table = Account._meta.db_table
    with sqlbatch.hot_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (kind, currency, customer_id, provider, balance, created_at) "
            "VALUES (%s, %s, %s, '', 0, now()) "
            "ON CONFLICT (customer_id, currency) WHERE kind = 'customer' DO NOTHING",
            [AccountKind.CUSTOMER, currency, customer_id],
        )
    return sqlbatch.select_for_update(
        Account,
        None,
        where={"kind": AccountKind.CUSTOMER, "customer_id": customer_id, "currency": currency},
    )


def system_account(*, kind: str, currency: str = USD) -> Account:
    """Platform revenue, suspense or staff adjustments in `currency`."""
    if kind not in SYSTEM_KINDS:
        raise LedgerError(f"{kind} is not a system account kind")
    return _get_or_create({"kind": kind, "currency": currency})


def clearing_account(*, provider: str, currency: str = USD) -> Account:
    """Where money arriving from a payment provider is debited from."""
    return _get_or_create(
        {"kind": AccountKind.PROVIDER_CLEARING, "provider": provider, "currency": currency}
    )


def open_holding_account(*, escrow_id: int, currency: str = USD) -> Account:
    """The escrow's own holding account (one per escrow, created on first payment).

    Call it under the escrow's row lock: then nobody else can be creating it, and a plain
    INSERT does (without it, a race ends in a visible unique-constraint error, never in
    two accounts).
    """
    lookup = {"kind": AccountKind.ESCROW_HOLDING, "escrow_id": escrow_id}
    account = Account.objects.filter(**lookup).first()
    return account or Account.objects.create(**lookup, currency=currency)


def _lock_for_posting(given: Sequence[Account]) -> dict[int, Account]:
    """Fresh, row-locked copies of the guarded accounts (their balances are checked);
    system accounts as given: their balances are never read here and their rows are
    locked by the balance UPDATE at the end. An account's kind never changes."""
    by_id = {a.pk: a for a in given}
    guarded = sorted(pk for pk, a in by_id.items() if a.kind in NON_NEGATIVE_KINDS)
    if guarded:
        by_id.update(
            (a.pk, a)
            for a in Account.objects.select_for_update().filter(pk__in=guarded).order_by("pk")
        )
    return by_id


# --- deferred system balances ---------------------------------------------------------

_deferred = threading.local()


class _DeferredDelta:
    """Balance changes of one posting, waiting for the flush.

    Registered as a (no-op) on-commit callback so that Django's own savepoint bookkeeping
    tells us whether it survived: rolling back a savepoint drops the callbacks registered
    inside it, and with them these changes, exactly like the transfers they belong to.
    """

    def __init__(self, changes: dict[int, Decimal]) -> None:
        self.changes = changes

    def __call__(self) -> None:  # runs after commit; the work was done before it
        pass


@contextmanager
def deferred_system_balances() -> Iterator[None]:
    """Apply system accounts' balance changes as the last writes of the enclosing block.

    Every payment debits its provider's clearing account, and an UPDATE row-locks that
    one row until COMMIT: updated mid-transaction, all payments would queue for each
    other's whole transaction. Deferred, the lock is held only from the flush to the
    commit. Customer wallets and holdings are never deferred (their non-negative check
    needs the real balance). Use inside the transaction, around everything up to its
    commit; on an exception nothing is flushed and the transaction rolls back anyway.
    Changes posted inside a savepoint that rolls back are discarded with it.
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("deferred_system_balances needs an enclosing transaction")
    if getattr(_deferred, "pending", None) is not None:
        yield  # already deferring: the outermost block flushes
        return
    pending: list[_DeferredDelta] = []
    _deferred.pending = pending
    try:
        yield
    finally:
        _deferred.pending = None
    alive = {id(func) for _, func, _ in connection.run_on_commit}
    totals: dict[int, Decimal] = defaultdict(Decimal)
    for entry in pending:
        if id(entry) in alive:
            for account_id, change in entry.changes.items():
                totals[account_id] += change
    for account_id in sorted(totals):
        if totals[account_id]:
            Account.objects.filter(pk=account_id).update(balance=F("balance") + totals[account_id])


def _defer(changes: dict[int, Decimal]) -> None:
    entry = _DeferredDelta(changes)
    _deferred.pending.append(entry)
    transaction.on_commit(entry)


# --- posting ---------------------------------------------------------------------------


# The largest amount the numeric(MONEY_DIGITS, MONEY_PLACES) columns can store.
MAX_AMOUNT = Decimal(10) ** (MONEY_DIGITS - MONEY_PLACES) - CENT


def _validate(leg: Leg) -> None:
    if not isinstance(leg.amount, Decimal):
        raise LedgerError(f"amount must be a Decimal, got {type(leg.amount).__name__}")
    if not leg.amount.is_finite() or leg.amount <= 0:
        raise LedgerError(f"amount must be positive, got {leg.amount}")
    # Checked before quantizing: quantize raises InvalidOperation past 28 digits, and an
    # amount the column cannot hold would otherwise surface as a DataError mid-posting.
    if leg.amount > MAX_AMOUNT:
        raise LedgerError(f"amount {leg.amount} is larger than the ledger can hold")
    if quantize_usd(leg.amount) != leg.amount:
        raise LedgerError(f"amount {leg.amount} has more precision than cents")
    if leg.debit.pk is None or leg.credit.pk is None:
        raise LedgerError("both accounts must be saved before posting")
    if leg.debit.pk == leg.credit.pk:
        raise LedgerError("debit and credit accounts must differ")
    if leg.debit.currency != leg.credit.currency:
        raise LedgerError("debit and credit accounts have different currencies")
    if not leg.idempotency_key:
        raise LedgerError("an idempotency key is required")


def _same(existing: Transfer, leg: Leg) -> bool:
    return (
        existing.debit_account_id == leg.debit.pk
        and existing.credit_account_id == leg.credit.pk
        and existing.amount == leg.amount
        and existing.kind == leg.kind
        and existing.escrow_id == leg.escrow_id
        and existing.reverses_id == leg.reverses_id
    )


def _checked_keys(legs: Sequence[Leg]) -> list[str]:
    for leg in legs:
        _validate(leg)
    keys = [leg.idempotency_key for leg in legs]
    if len(set(keys)) != len(keys):
        raise LedgerError("idempotency keys repeat within one posting")
    return keys


def _checked_deltas(legs: Sequence[Leg], accounts: dict[int, Account]) -> dict[int, Decimal]:
    """Each account's balance change; InsufficientFunds if a wallet or holding would go
    below zero (`accounts` must carry their current, locked balances)."""
    delta: dict[int, Decimal] = defaultdict(Decimal)
    for leg in legs:
        delta[leg.debit.pk] -= leg.amount
        delta[leg.credit.pk] += leg.amount
    for account_id, change in delta.items():
        account = accounts[account_id]
        if account.kind in NON_NEGATIVE_KINDS and account.balance + change < 0:
            raise InsufficientFunds(
                f"{account} has {account.balance}, cannot pay out {-change}",
                {"account_id": account_id, "balance": str(account.balance)},
            )
    return delta


def _transfer(leg: Leg, pk: int | None = None) -> Transfer:
    return Transfer(
        pk=pk,
        kind=leg.kind,
        amount=leg.amount,
        currency=leg.debit.currency,
        # The objects, not just ids: callers describing the transfers (e.g. a dry-run
        # preview) then need no further queries.
        debit_account=leg.debit,
        credit_account=leg.credit,
        idempotency_key=leg.idempotency_key,
        escrow_id=leg.escrow_id,
        reference=leg.reference,
        memo=leg.memo,
        actor_id=leg.actor_id,
        reverses_id=leg.reverses_id,
    )


def post_transfers(legs: Sequence[Leg]) -> list[Transfer]:
    """Post all legs atomically and return their transfers, in the order given.

    A leg whose idempotency key was already posted with the same fields returns the
    existing transfer and moves nothing; with different fields the whole call raises
    IdempotencyConflict and writes nothing. Raises InsufficientFunds if a customer wallet
    or holding would go negative.
    """
    if not legs:
        return []
    keys = _checked_keys(legs)

    with transaction.atomic(savepoint=False):
        accounts = _lock_for_posting([a for leg in legs for a in (leg.debit, leg.credit)])
        # Read after locking, so a concurrent post of the same key has committed by now.
        existing = {
            t.idempotency_key: t
            for t in Transfer.objects.filter(idempotency_key__in=keys).select_related(
                "debit_account", "credit_account"
            )
        }
        new_legs = []
        for leg in legs:
            found = existing.get(leg.idempotency_key)
            if found is None:
                new_legs.append(leg)
            elif not _same(found, leg):
                raise IdempotencyConflict(
                    f"idempotency key {leg.idempotency_key!r} was used for a different transfer",
                    {"existing_transfer_id": found.pk},
                )
        # Checked under the same locks as the original's accounts, so of two concurrent
        # reversals the second sees the first and gets a clear error, not an IntegrityError.
        reversing = [leg.reverses_id for leg in new_legs if leg.reverses_id is not None]
        if len(set(reversing)) != len(reversing):
            raise LedgerError("one posting reverses the same transfer twice")
        if reversing:
            already = (
                Transfer.objects.filter(reverses_id__in=reversing)
                .values_list("reverses_id", "pk")
                .first()
            )
            if already:
                original_id, reversal_id = already
                raise LedgerError(
                    f"transfer #{original_id} was already reversed by transfer #{reversal_id}",
                    {"transfer_id": original_id, "reversal_id": reversal_id},
                )

        delta = _checked_deltas(new_legs, accounts)
        try:
            created = Transfer.objects.bulk_create([_transfer(leg) for leg in new_legs])
        except IntegrityError as exc:
            # A concurrent post of the same key among accounts we did not lock: let the
            # caller's unit of work fail visibly and be retried; on retry it is idempotent.
            raise LedgerError(f"concurrent posting of the same transfer: {exc}") from exc

        deferring = getattr(_deferred, "pending", None) is not None
        later: dict[int, Decimal] = {}
        for account_id in sorted(
            delta, key=lambda pk: (accounts[pk].kind not in NON_NEGATIVE_KINDS, pk)
        ):
            if not delta[account_id]:
                continue
            if deferring and accounts[account_id].kind not in NON_NEGATIVE_KINDS:
                later[account_id] = delta[account_id]
                continue
            Account.objects.filter(pk=account_id).update(balance=F("balance") + delta[account_id])
            accounts[account_id].balance += delta[account_id]
        if later:
            _defer(later)

    by_key = {t.idempotency_key: t for t in created} | existing
    return [by_key[key] for key in keys]


def post_transfers_batched(
    legs: Sequence[Leg], *, batch: "StatementBatch", ids: list[int]
) -> list[Transfer]:
    """post_transfers for the webhook hot path: the same checks and rows, written as part
    of a StatementBatch (one statement) instead of one query each.

    The caller guarantees what post_transfers would otherwise check with queries: every
    customer wallet or holding in `legs` is row-locked by this transaction or is a pending
    insert of `batch`, and the keys are new (the unique key still enforces it: a repeat
    fails the whole batch, visibly). `ids` are preallocated transfer primary keys.
    System accounts are updated by the batch, i.e. by the unit of work's last statement.
    """
    if not legs:
        return []
    _checked_keys(legs)
    if any(leg.reverses_id is not None for leg in legs):
        raise LedgerError("reversals go through post_transfers")
    if len(ids) < len(legs):
        raise LedgerError("not enough preallocated transfer ids")
    accounts = {a.pk: a for leg in legs for a in (leg.debit, leg.credit)}
    delta = _checked_deltas(legs, accounts)
    transfers = [_transfer(leg, pk) for pk, leg in zip(ids, legs, strict=False)]
    batch.insert(transfers)
    for account_id, change in delta.items():
        if not change:
            continue
        account = accounts[account_id]
        if batch.is_pending_insert(account):
            # Inserted by the same statement, so an UPDATE could not see it: it is
            # inserted with its balance instead.
            account.balance += change
        else:
            batch.update(Account, account_id, balance=Add(change))
            account.balance += change
    return transfers


def post_transfer(
    *,
    debit: Account,
    credit: Account,
    amount: Decimal,
    kind: str,
    idempotency_key: str,
    escrow_id: int | None = None,
    reference: str = "",
    memo: str = "",
    actor_id: int | None = None,
) -> Transfer:
    """Post one transfer; see post_transfers."""
    leg = Leg(debit, credit, amount, kind, idempotency_key, escrow_id, reference, memo, actor_id)
    return post_transfers([leg])[0]


def reverse_transfer(
    *, transfer: Transfer, idempotency_key: str, memo: str = "", actor_id: int | None = None
) -> Transfer:
    """Post the exact opposite of `transfer`: ledger rows are never edited.

    A transfer can be reversed once (unique `reverses`); reversing a payout that the
    recipient already spent raises InsufficientFunds.
    """
    accounts = Account.objects.in_bulk([transfer.debit_account_id, transfer.credit_account_id])
    leg = Leg(
        debit=accounts[transfer.credit_account_id],
        credit=accounts[transfer.debit_account_id],
        amount=transfer.amount,
        kind=TransferKind.REVERSAL,
        idempotency_key=idempotency_key,
        escrow_id=transfer.escrow_id,
        reference=f"reverses transfer #{transfer.pk}",
        memo=memo,
        actor_id=actor_id,
        reverses_id=transfer.pk,
    )
    return post_transfers([leg])[0]

"""The PostgreSQL webhook hot path's way into the payment policy.

confirm_payment_batched runs the very policy confirm_payment runs
(payment._apply_to_holding), for its common case only, with its writes collected into
an escrowsite.sqlbatch.StatementBatch that the caller runs as one statement. The reads
it needs come in two statements. Everything it does not handle it hands back (None)
before writing anything, and the general path takes over.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from escrow.models import Escrow, EscrowHolding
from escrow.services import payment as policy
from escrow.services.common import BatchWrites, IncomingPayment, PaymentOutcome, record_id
from escrow.transitions import AWAITING_PAYMENT
from escrowsite.errors import ApplicationError
from escrowsite.sqlbatch import StatementBatch, allocate_ids, hot_cursor, lock_rows
from wallets import ledger
from wallets.models import Account, AccountKind, Transaction, Transfer


def confirm_payment_batched(
    *,
    escrow_id: str,
    payment: IncomingPayment,
    batch: StatementBatch,
    locked: Escrow | None = None,
    source: str = "webhook",
    actor_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> PaymentOutcome | None:
    """confirm_payment for the PostgreSQL webhook hot path, for its common case: a payment
    for an escrow awaiting it. The same policy (_apply_to_holding) with its writes added
    to `batch`, which the caller runs (with its own rows) as one statement.

    Reads take two statements: the escrow's row lock (unless the caller passes the
    escrow it `locked`), then (with a snapshot taken after the lock, so nothing read is
    older than the locked row) its holding, the accounts, whether this provider
    transaction moved money before, and preallocated ids.

    Returns None, having written nothing (the escrow row stays locked, as the general path
    would lock it anyway), when the case is the general path's: no such escrow, one not
    awaiting payment, a provider transaction that moved money before, or no clearing
    account yet.
    Raises ApplicationError, having written nothing, where confirm_payment would.
    """
    amount = policy._payment_amount(payment)
    if not payment.tx_id or not payment.provider:
        raise ApplicationError("A payment needs its provider and provider transaction id.")
    now = now or timezone.now()
    key = f"{payment.provider}:{payment.tx_id}"
    # The caller may have locked the escrow already (with the receipt naming it).
    if locked is not None and locked.escrow_id == escrow_id:
        escrow = locked
    else:
        (escrow,) = lock_rows([(Escrow, '"escrow_id" = %s', [escrow_id])])
    if escrow is None or escrow.status not in AWAITING_PAYMENT:
        return None
    state = _payment_state(escrow, payment, key)
    if state is None:
        return None
    writes = BatchWrites(batch, state.ids, state.taken)
    holding = state.holding
    if holding is None:
        account = Account(
            pk=writes.take_id(Account),
            kind=AccountKind.ESCROW_HOLDING,
            escrow_id=escrow.pk,
            currency=escrow.currency,
            balance=Decimal("0.00"),
        )
        holding = EscrowHolding(pk=writes.take_id(EscrowHolding), escrow=escrow, account=account)
        batch.insert([account])
        batch.insert([holding])

    opened_in: list[str] = []  # the savepoint a first wallet was opened in, if any

    def buyer_wallet() -> Account:
        # Row-locked by _payment_state, or opened now (race-safe, row-locked) inside a
        # savepoint, so that a refusal by the policy undoes the new wallet as well.
        if state.wallet is None:
            opened_in.append(transaction.savepoint())
            state.wallet = ledger.open_wallet_locked(
                customer_id=escrow.buyer_id, currency=escrow.currency
            )
        return state.wallet

    status_before = escrow.status
    try:
        # Looked up on the module, so that a test patching the policy patches both paths.
        outcome = policy._apply_to_holding(
            escrow,
            payment,
            amount,
            state.clearing,
            key,
            now,
            source,
            actor_id,
            reason,
            holding=holding,
            buyer_wallet=buyer_wallet,
            writes=writes,
        )
    except ApplicationError:
        for savepoint in opened_in:
            transaction.savepoint_rollback(savepoint)
        raise
    for savepoint in opened_in:
        transaction.savepoint_commit(savepoint)
    outcome.status_before = status_before
    return outcome


# Both records a payment may write: their ids are checked for a clash (see _record).
_RECORD_PREFIXES = ("ESC", "OVP")


@dataclass
class _PaymentState:
    holding: EscrowHolding | None
    clearing: Account
    wallet: Account | None
    ids: dict[type[Model], list[int]]
    taken: set[str]


# Prepared once per connection and planned once (a generic plan): the account kinds are
# literals, not parameters, so the planner can use the partial unique indexes on them.
_STATE_SQL = f"""
    SELECT h.id, h.status, h.created_at, ha.id, ha.balance, ha.created_at,
        w.id, w.balance, w.created_at,
        (SELECT id FROM wallets_account WHERE kind = '{AccountKind.PROVIDER_CLEARING.value}'
            AND provider = %s AND currency = %s),
        EXISTS (SELECT 1 FROM wallets_transfer WHERE reference = %s),
        ARRAY(SELECT transaction_id FROM wallets_transaction
            WHERE transaction_id IN (%s, %s)),
        {allocate_ids(Transfer, 2)},
        {allocate_ids(Transaction, 2)},
        CASE WHEN h.id IS NULL THEN {allocate_ids(Account, 1)} END,
        CASE WHEN h.id IS NULL THEN {allocate_ids(EscrowHolding, 1)} END
    FROM (SELECT 1) AS one
    LEFT JOIN escrow_escrowholding h ON h.escrow_id = %s
    LEFT JOIN wallets_account ha ON ha.id = h.account_id
    LEFT JOIN LATERAL (
        SELECT id, balance, created_at FROM wallets_account
        WHERE kind = '{AccountKind.CUSTOMER.value}' AND customer_id = %s AND currency = %s
        FOR UPDATE
    ) w ON true
"""


def _payment_state(escrow: Escrow, payment: IncomingPayment, key: str) -> _PaymentState | None:
    """What the policy reads, in one statement run after the escrow's lock was granted (so
    its snapshot is no older than the locked row): the holding, the clearing account, the
    buyer's wallet (row-locked: the batch may credit it, and wallets are locked before
    system accounts), record ids in use, and preallocated primary keys.

    None if this is the general path's case: no clearing account yet, or this provider
    transaction moved money before, to any account (an escrow, a wallet, suspense). Then
    the general path decides between duplicate, conflict and late payment; the hot path
    would only fail on the dedupe row, on every retry.
    """
    record_ids = [record_id(p, escrow.escrow_id, payment.tx_id) for p in _RECORD_PREFIXES]
    with hot_cursor() as cursor:
        cursor.execute(
            _STATE_SQL,
            [
                payment.provider,
                escrow.currency,
                key,
                *record_ids,
                escrow.pk,
                escrow.buyer_id,
                escrow.currency,
            ],
        )
        row = cursor.fetchone()
    (
        h_id, h_status, h_created, a_id, a_balance, a_created,
        w_id, w_balance, w_created,
        clearing_id, applied_before, taken,
        transfer_ids, record_pks, account_ids, holding_ids,
    ) = row  # fmt: skip
    if applied_before or clearing_id is None:
        # This provider transaction moved money before, or this is the first payment
        # ever from this provider in this currency (the general path opens its clearing
        # account).
        return None
    clearing = Account(
        pk=clearing_id,
        kind=AccountKind.PROVIDER_CLEARING,
        provider=payment.provider,
        currency=escrow.currency,
    )
    holding = None
    if h_id is not None:
        account = Account(
            pk=a_id,
            kind=AccountKind.ESCROW_HOLDING,
            escrow_id=escrow.pk,
            currency=escrow.currency,
            balance=a_balance,
            created_at=a_created,
        )
        holding = EscrowHolding(
            pk=h_id, escrow=escrow, account=account, status=h_status, created_at=h_created
        )
    wallet = None
    if w_id is not None:
        wallet = Account(
            pk=w_id,
            kind=AccountKind.CUSTOMER,
            customer_id=escrow.buyer_id,
            currency=escrow.currency,
            balance=w_balance,
            created_at=w_created,
        )
    ids: dict[type[Model], list[int]] = {Transfer: transfer_ids, Transaction: record_pks}
    if account_ids:
        ids[Account] = account_ids
    if holding_ids:
        ids[EscrowHolding] = holding_ids
    return _PaymentState(holding, clearing, wallet, ids, set(taken))

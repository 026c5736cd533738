"""Applying a payment to an escrow: confirm it, add to it, or credit it back (the policy)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from escrow.fees import payment_tolerance
from escrow.models import Escrow, EscrowHolding, HoldingStatus
from escrow.services.common import (
    ORM_WRITES,
    BatchWrites,
    IncomingPayment,
    PaymentOutcome,
    S,
    Writes,
    _notify,
    _open_holding,
    _record,
    _set_status,
    lock_escrow,
    record_id,
)
from escrow.transitions import AWAITING_PAYMENT
from escrowsite.errors import ApplicationError
from escrowsite.sqlbatch import StatementBatch, allocate_ids, hot_cursor
from notifications.services import enqueue_notification
from wallets import ledger
from wallets.models import (
    Account,
    AccountKind,
    Transaction,
    TransactionType,
    Transfer,
    TransferKind,
)
from wallets.money import quantize_usd

# --- payment -------------------------------------------------------------------------


def _payment_amount(payment: IncomingPayment) -> Decimal:
    value = payment.usd_amount
    if not isinstance(value, Decimal) or isinstance(value, bool):
        raise ApplicationError("A payment amount must be a Decimal.", {"amount": repr(value)})
    if not value.is_finite():
        raise ApplicationError("A payment amount must be a finite number.", {"amount": str(value)})
    amount = quantize_usd(value)
    if amount <= 0:
        raise ApplicationError("A payment must be positive.", {"amount": str(value)})
    return amount


def confirm_payment(
    *,
    escrow_id: str,
    payment: IncomingPayment,
    source: str = "webhook",
    actor_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> PaymentOutcome:
    """Apply one confirmed payment to an escrow: confirm it, add to it, or credit it back.

    - Awaiting payment and the total paid reaches the total due within tolerance: the
      holding gets at most the total due, any excess goes to the buyer's wallet as its own
      transfer and record, and the escrow moves to payment_confirmed with its deadlines.
    - Awaiting payment and still short beyond tolerance: the amount is held and the escrow
      is partially_paid until later payments add up.
    - Anything else (cancelled, expired, already paid, ...): the whole amount is credited
      to the buyer's wallet as a late/extra payment. It is never rejected or lost.
    - The same provider transaction again: nothing moves (kind `duplicate`). Raises
      ApplicationError if it was applied to another escrow or with another amount.
    """
    amount = _payment_amount(payment)
    if not payment.tx_id or not payment.provider:
        raise ApplicationError("A payment needs its provider and provider transaction id.")
    now = now or timezone.now()
    key = f"{payment.provider}:{payment.tx_id}"
    with transaction.atomic():
        escrow = lock_escrow(escrow_id=escrow_id)
        status_before = escrow.status
        outcome = _previous_application(escrow, payment, key, amount)
        if outcome is None:
            clearing = ledger.clearing_account(provider=payment.provider, currency=escrow.currency)
            if escrow.status not in AWAITING_PAYMENT:
                outcome = _credit_late_payment(
                    escrow, payment, amount, clearing, key, now, actor_id
                )
            else:
                outcome = _apply_to_holding(
                    escrow,
                    payment,
                    amount,
                    clearing,
                    key,
                    now,
                    source,
                    actor_id,
                    reason,
                    holding=_open_holding(escrow),
                    buyer_wallet=lambda: ledger.customer_wallet(
                        customer=escrow.buyer_id, currency=escrow.currency
                    ),
                    writes=ORM_WRITES,
                )
        outcome.status_before = status_before
        return outcome


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
    transaction was applied before, and preallocated ids.

    Returns None, having written nothing (the escrow row stays locked, as the general path
    would lock it anyway), when the case is the general path's: no such escrow, one not
    awaiting payment, a provider transaction seen before, or no clearing account yet.
    Raises ApplicationError, having written nothing, where confirm_payment would.
    """
    amount = _payment_amount(payment)
    if not payment.tx_id or not payment.provider:
        raise ApplicationError("A payment needs its provider and provider transaction id.")
    now = now or timezone.now()
    key = f"{payment.provider}:{payment.tx_id}"
    # The caller may have locked the escrow already (in its first round trip).
    escrow = locked if locked and locked.escrow_id == escrow_id else _lock_escrow_row(escrow_id)
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
        outcome = _apply_to_holding(
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


def _lock_escrow_row(escrow_id: str) -> Escrow | None:
    fields = Escrow._meta.concrete_fields
    columns = ", ".join(f'"{f.column}"' for f in fields)
    with hot_cursor() as cursor:
        cursor.execute(
            f'SELECT {columns} FROM "{Escrow._meta.db_table}" WHERE "escrow_id" = %s FOR UPDATE',
            [escrow_id],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return Escrow.from_db(connection.alias, [f.attname for f in fields], row)


# Both records a payment may write: their ids are checked for a clash (see _record).
_RECORD_PREFIXES = ("ESC", "OVP")


@dataclass
class _PaymentState:
    holding: EscrowHolding | None
    clearing: Account
    wallet: Account | None
    ids: dict[type[Model], list[int]]
    taken: set[str]


def _payment_state(escrow: Escrow, payment: IncomingPayment, key: str) -> _PaymentState | None:
    """What the policy reads, in one statement run after the escrow's lock was granted (so
    its snapshot is no older than the locked row): the holding, the clearing account, the
    buyer's wallet (row-locked: the batch may credit it, and wallets are locked before
    system accounts), record ids in use, and preallocated primary keys. None if this is
    the general path's case (applied before, or no clearing account yet)."""
    record_ids = [record_id(p, escrow.escrow_id, payment.tx_id) for p in _RECORD_PREFIXES]
    sql = f"""
        SELECT h.id, h.status, h.created_at, ha.id, ha.balance, ha.created_at,
            w.id, w.balance, w.created_at,
            (SELECT id FROM wallets_account WHERE kind = %s AND provider = %s
                AND currency = %s),
            EXISTS (SELECT 1 FROM wallets_transfer WHERE idempotency_key = ANY(%s)),
            ARRAY(SELECT transaction_id FROM wallets_transaction
                WHERE transaction_id = ANY(%s)),
            {allocate_ids(Transfer, 2)},
            {allocate_ids(Transaction, 2)},
            CASE WHEN h.id IS NULL THEN {allocate_ids(Account, 1)} END,
            CASE WHEN h.id IS NULL THEN {allocate_ids(EscrowHolding, 1)} END
        FROM (SELECT 1) AS one
        LEFT JOIN escrow_escrowholding h ON h.escrow_id = %s
        LEFT JOIN wallets_account ha ON ha.id = h.account_id
        LEFT JOIN LATERAL (
            SELECT id, balance, created_at FROM wallets_account
            WHERE kind = %s AND customer_id = %s AND currency = %s FOR UPDATE
        ) w ON true
    """
    with hot_cursor() as cursor:
        cursor.execute(
            sql,
            [
                AccountKind.PROVIDER_CLEARING,
                payment.provider,
                escrow.currency,
                [f"{key}:escrow_payment", f"{key}:late_payment_credit"],
                record_ids,
                escrow.pk,
                AccountKind.CUSTOMER,
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
        # Applied before, or the first payment ever from this provider in this currency
        # (whose clearing account the general path opens).
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


def _previous_application(
    escrow: Escrow, payment: IncomingPayment, key: str, amount: Decimal
) -> PaymentOutcome | None:
    """The outcome of an earlier application of this provider transaction, if any.

    Without this, a replay after confirmation would be credited again as a "late"
    payment, and a replay while partially paid would count the same money twice.
    """
    first_keys = [f"{key}:escrow_payment", f"{key}:late_payment_credit"]
    first = Transfer.objects.select_related("escrow").filter(idempotency_key__in=first_keys).first()
    if first is None:
        return None
    if first.escrow_id != escrow.pk:
        other = first.escrow.escrow_id if first.escrow else "none"
        raise ApplicationError(
            f"Payment {key} was already applied to escrow {other}; not applying it to "
            f"{escrow.escrow_id}.",
            {"payment": key, "applied_to": other, "escrow_id": escrow.escrow_id},
        )
    transfers = list(Transfer.objects.filter(escrow=escrow, reference=key).order_by("pk"))
    applied = sum((t.amount for t in transfers), Decimal("0.00"))
    if applied != amount:
        raise ApplicationError(
            f"Payment {key} was already applied to {escrow.escrow_id} as {applied}, not {amount}.",
            {"payment": key, "applied": str(applied), "amount": str(amount)},
        )
    records = Transaction.objects.filter(
        escrow=escrow, provider=payment.provider, external_tx_id=payment.tx_id
    ).order_by("pk")
    return PaymentOutcome(
        kind="duplicate", escrow=escrow, transactions=list(records), transfers=transfers
    )


def _apply_to_holding(
    escrow: Escrow,
    payment: IncomingPayment,
    amount: Decimal,
    clearing: Account,
    key: str,
    now: datetime,
    source: str,
    actor_id: int | None,
    reason: str,
    *,
    holding: EscrowHolding,
    buyer_wallet: Callable[[], Account],
    writes: Writes,
) -> PaymentOutcome:
    """Add a payment to the escrow's holding and confirm the escrow once it is paid.

    The one place this policy lives; `writes` decides whether the rows are saved one by
    one (ORM, any database) or collected into one statement (the PostgreSQL hot path).
    `buyer_wallet()` gives the wallet, row-locked if the writes need it so.
    """
    if escrow.status == S.CREATED:
        # Money never waits on a missed step: move on to payment_pending first.
        _set_status(
            escrow, S.PAYMENT_PENDING, now=now, source=source, actor_id=actor_id, writes=writes
        )
    paid_before = holding.account.balance
    # The holding never holds more than the total due: the excess is its own transfer.
    to_holding = min(amount, escrow.total_due - paid_before)
    excess = amount - to_holding
    paid = paid_before + to_holding
    reached = paid >= escrow.total_due - payment_tolerance(escrow.total_due)

    legs = [
        ledger.Leg(
            clearing,
            holding.account,
            to_holding,
            TransferKind.ESCROW_PAYMENT,
            f"{key}:escrow_payment",
            escrow.pk,
            key,
            actor_id=actor_id,
        )
    ]
    if excess:
        legs.append(
            ledger.Leg(
                clearing,
                buyer_wallet(),
                excess,
                TransferKind.OVERPAYMENT_CREDIT,
                f"{key}:overpayment_credit",
                escrow.pk,
                key,
                actor_id=actor_id,
            )
        )
    transfers = writes.post(legs)
    outcome = PaymentOutcome(kind="partial", escrow=escrow, transfers=transfers, excess=excess)
    note = f"{to_holding} applied" + (f", {excess} credited to wallet" if excess else "")
    outcome.transactions.append(
        _record(
            prefix="ESC",
            escrow=escrow,
            type=TransactionType.ESCROW_PAYMENT,
            customer_id=escrow.buyer_id,
            amount=amount,
            transfers=transfers,
            description=f"Escrow payment for {escrow.escrow_id} ({note})",
            now=now,
            payment=payment,
            writes=writes,
        )
    )
    if excess:
        outcome.transactions.append(
            _record(
                prefix="OVP",
                escrow=escrow,
                type=TransactionType.OVERPAYMENT_CREDIT,
                customer_id=escrow.buyer_id,
                amount=excess,
                transfers=transfers[1:],
                description=f"Overpayment on {escrow.escrow_id} credited to wallet",
                now=now,
                payment=payment,
                with_crypto=False,
                writes=writes,
            )
        )

    update = []
    if reached:
        outcome.kind = "confirmed"
        outcome.shortfall = escrow.total_due - paid
        _set_status(
            escrow,
            S.PAYMENT_CONFIRMED,
            now=now,
            source=source,
            actor_id=actor_id,
            reason=reason,
            writes=writes,
        )
        escrow.accepted_shortfall = outcome.shortfall
        escrow.payment_confirmed_at = now
        escrow.delivery_deadline = now + timedelta(hours=escrow.delivery_hours)
        escrow.expires_at = now + timedelta(hours=settings.ESCROW_SELLER_RESPONSE_HOURS)
        escrow.deposit_tx_hash = payment.tx_id
        update += [
            "status",
            "status_changed_at",
            "accepted_shortfall",
            "payment_confirmed_at",
            "delivery_deadline",
            "expires_at",
            "deposit_tx_hash",
        ]
        holding.status = HoldingStatus.HELD
        writes.save(holding, ["status"])
        _notify(
            escrow,
            "offer_to_seller",
            escrow.seller_id,
            writes=writes,
            amount=escrow.amount,
            delivery_hours=escrow.delivery_hours,
        )
        _notify(
            escrow,
            "payment_confirmed",
            escrow.buyer_id,
            writes=writes,
            paid=amount,
            excess=excess,
            shortfall=outcome.shortfall,
        )
    else:
        if escrow.status != S.PARTIALLY_PAID:
            _set_status(
                escrow,
                S.PARTIALLY_PAID,
                now=now,
                source=source,
                actor_id=actor_id,
                reason=reason,
                writes=writes,
            )
        update += ["status", "status_changed_at"]
        writes.notify(
            [
                {
                    "event": "partial_payment",
                    "recipient_id": escrow.buyer_id,
                    "escrow_id": escrow.pk,
                    "key": f"{escrow.escrow_id}:partial_payment:{key}",
                    "payload": {
                        "event": "partial_payment",
                        "escrow_id": escrow.escrow_id,
                        "paid": str(paid),
                        "total_due": str(escrow.total_due),
                    },
                }
            ]
        )
    if payment.provider_payment_id and not escrow.provider_payment_id:
        escrow.provider_payment_id = payment.provider_payment_id
        escrow.provider = payment.provider
        update += ["provider_payment_id", "provider"]
    writes.save(escrow, update)
    return outcome


def _credit_late_payment(
    escrow: Escrow,
    payment: IncomingPayment,
    amount: Decimal,
    clearing: Account,
    key: str,
    now: datetime,
    actor_id: int | None = None,
) -> PaymentOutcome:
    """Money for an escrow that no longer takes payments goes to the buyer's wallet."""
    wallet = ledger.customer_wallet(customer=escrow.buyer_id, currency=escrow.currency)
    transfers = ledger.post_transfers(
        [
            ledger.Leg(
                clearing,
                wallet,
                amount,
                TransferKind.LATE_PAYMENT_CREDIT,
                f"{key}:late_payment_credit",
                escrow.pk,
                key,
                memo=f"payment arrived while escrow was {escrow.status}",
                actor_id=actor_id,
            )
        ]
    )
    record = _record(
        prefix="LATE",
        escrow=escrow,
        type=TransactionType.LATE_PAYMENT_CREDIT,
        customer_id=escrow.buyer_id,
        amount=amount,
        transfers=transfers,
        description=(
            f"Payment for {escrow.escrow_id} arrived while it was {escrow.status}; "
            "credited to wallet"
        ),
        now=now,
        payment=payment,
    )
    enqueue_notification(
        event="late_payment_credited",
        recipient_id=escrow.buyer_id,
        escrow_id=escrow.pk,
        key=f"{escrow.escrow_id}:late_payment_credited:{key}",
        payload={
            "event": "late_payment_credited",
            "escrow_id": escrow.escrow_id,
            "amount": str(amount),
            "status": escrow.status,
        },
    )
    return PaymentOutcome(
        kind="late_credit", escrow=escrow, transactions=[record], transfers=transfers
    )

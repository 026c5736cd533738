"""Read-only escrow queries for commands and the admin: one escrow and everything about it."""

from decimal import Decimal
from typing import Any

from django.db.models import Prefetch

from escrow.models import Escrow, EscrowHolding, StatusChange
from escrowsite.errors import NotFound
from wallets.models import Account, AccountKind, Transaction, Transfer

ZERO = Decimal("0.00")
TIMESTAMPS = (
    "created_at",
    "expires_at",
    "payment_confirmed_at",
    "seller_accepted_at",
    "delivery_deadline",
    "delivered_at",
    "auto_release_at",
    "completed_at",
    "status_changed_at",
)


def get_escrow(escrow_id: str) -> Escrow:
    """The escrow with its parties and holding (account included) loaded. Raises NotFound."""
    try:
        return Escrow.objects.select_related("buyer", "seller", "holding__account").get(
            escrow_id=escrow_id
        )
    except Escrow.DoesNotExist:
        raise NotFound(f"Escrow {escrow_id} does not exist.", {"escrow_id": escrow_id}) from None


def _holding(escrow: Escrow) -> EscrowHolding | None:
    try:
        return escrow.holding
    except EscrowHolding.DoesNotExist:
        return None


def _wallet_balances(escrow: Escrow) -> dict[int, Decimal]:
    """Both parties' wallet balances in the escrow's currency, without creating wallets."""
    rows = Account.objects.filter(
        kind=AccountKind.CUSTOMER,
        customer_id__in=[escrow.buyer_id, escrow.seller_id],
        currency=escrow.currency,
    ).values_list("customer_id", "balance")
    return dict(rows)


def escrow_summary(escrow_id: str) -> dict[str, Any]:
    """Everything staff need to judge one escrow, as plain values (Decimal, datetime).

    A fixed number of queries whatever the number of records, transfers or status changes.
    """
    escrow = get_escrow(escrow_id)
    holding = _holding(escrow)
    transfers = list(
        Transfer.objects.filter(escrow=escrow)
        .select_related("debit_account", "credit_account")
        .order_by("pk")
    )
    records = (
        Transaction.objects.filter(escrow=escrow)
        .order_by("pk")
        .prefetch_related(
            Prefetch("transfers", queryset=Transfer.objects.order_by("pk").only("pk"))
        )
    )
    history = StatusChange.objects.filter(escrow=escrow).select_related("actor").order_by("pk")
    wallets = _wallet_balances(escrow)

    def party(customer_id: int, username: str) -> dict[str, Any]:
        return {
            "telegram_id": customer_id,
            "username": username,
            "wallet_balance": wallets.get(customer_id, ZERO),
        }

    return {
        "escrow_id": escrow.escrow_id,
        "status": escrow.status,
        "status_label": escrow.get_status_display(),
        "description": escrow.description,
        "buyer": party(escrow.buyer_id, escrow.buyer.username),
        "seller": party(escrow.seller_id, escrow.seller.username),
        "amounts": {
            "currency": escrow.currency,
            "amount": escrow.amount,
            "fee_split": escrow.fee_split,
            "fee_amount": escrow.fee_amount,
            "buyer_fee": escrow.buyer_fee,
            "seller_fee": escrow.seller_fee,
            "total_due": escrow.total_due,
            "accepted_shortfall": escrow.accepted_shortfall,
        },
        "delivery_hours": escrow.delivery_hours,
        "timestamps": {name: getattr(escrow, name) for name in TIMESTAMPS},
        "payment": {
            "provider": escrow.provider,
            "provider_payment_id": escrow.provider_payment_id,
            "deposit_address": escrow.deposit_address,
            "deposit_tx_hash": escrow.deposit_tx_hash,
        },
        "holding": None
        if holding is None
        else {
            "status": holding.status,
            "balance": holding.account.balance,
            "account_id": holding.account_id,
            "created_at": holding.created_at,
            "resolved_at": holding.resolved_at,
        },
        "transactions": [
            {
                "transaction_id": t.transaction_id,
                "type": t.type,
                "customer_id": t.customer_id,
                "amount": t.amount,
                "currency": t.currency,
                "crypto_amount": t.crypto_amount,
                "crypto_currency": t.crypto_currency,
                "status": t.status,
                "provider": t.provider,
                "external_tx_id": t.external_tx_id,
                "description": t.description,
                "created_at": t.created_at,
                "confirmed_at": t.confirmed_at,
                "transfer_ids": [x.pk for x in t.transfers.all()],
            }
            for t in records
        ],
        "transfers": [
            {
                "id": t.pk,
                "kind": t.kind,
                "amount": t.amount,
                "currency": t.currency,
                "debit_account": str(t.debit_account),
                "credit_account": str(t.credit_account),
                "idempotency_key": t.idempotency_key,
                "reference": t.reference,
                "memo": t.memo,
                "created_at": t.created_at,
            }
            for t in transfers
        ],
        "status_history": [
            {
                "from": c.from_status,
                "to": c.to_status,
                "at": c.at,
                "source": c.source,
                "actor": c.actor.get_username() if c.actor else None,
                "reason": c.reason,
            }
            for c in history
        ],
        "admin_notes": escrow.admin_notes,
    }

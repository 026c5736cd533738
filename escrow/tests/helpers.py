"""Assertions shared by the escrow tests: ledger sums and "nothing was written" snapshots."""

from decimal import Decimal
from typing import Any

from django.db.models import Sum

from escrow.models import Escrow, EscrowHolding, StatusChange
from notifications.models import Notification
from wallets import ledger
from wallets.models import Account, AccountKind, Transaction, Transfer


def wallet(customer_id: int) -> Decimal:
    """The customer's wallet balance (creating an empty wallet is not a money movement)."""
    return ledger.customer_wallet(customer=customer_id).balance


def revenue() -> Decimal:
    return ledger.system_account(kind=AccountKind.PLATFORM_REVENUE).balance


def holding_balance(escrow: Escrow) -> Decimal:
    return EscrowHolding.objects.select_related("account").get(escrow=escrow).account.balance


def assert_ledger_balanced() -> None:
    """The sum of all balances is zero and every cached balance equals its transfers."""
    assert Account.objects.aggregate(total=Sum("balance"))["total"] in (0, None)
    for account in Account.objects.all():
        credits = account.credits.aggregate(s=Sum("amount"))["s"] or 0
        debits = account.debits.aggregate(s=Sum("amount"))["s"] or 0
        assert account.balance == credits - debits, account


def db_state() -> dict[str, Any]:
    """Everything an escrow service may write; equal before and after means it wrote nothing."""
    return {
        "escrows": list(Escrow.objects.order_by("pk").values()),
        "holdings": list(EscrowHolding.objects.order_by("pk").values()),
        "status_changes": list(StatusChange.objects.order_by("pk").values_list("pk", flat=True)),
        "balances": list(Account.objects.order_by("pk").values_list("pk", "balance")),
        "transfers": list(Transfer.objects.order_by("pk").values_list("pk", flat=True)),
        "transactions": list(Transaction.objects.order_by("pk").values_list("pk", flat=True)),
        "notifications": list(Notification.objects.order_by("pk").values_list("pk", flat=True)),
    }

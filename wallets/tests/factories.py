"""Factories for customers, staff users and funded wallets."""

import uuid
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from escrow import services as escrow_services
from wallets import ledger
from wallets.models import Account, Customer, TransferKind


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer
        django_get_or_create = ("telegram_id",)

    telegram_id = factory.Sequence(lambda n: 7_000_000_000 + n)
    username = factory.Sequence(lambda n: f"user{n}")


class StaffUserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"staff{n}")
    is_staff = True
    is_active = True


def funded_wallet(amount: Decimal = Decimal("0.00"), *, customer_id: int | None = None) -> Account:
    """A customer's wallet credited with `amount` from a provider's clearing account."""
    wallet = ledger.customer_wallet(customer=customer_id or CustomerFactory().telegram_id)
    if amount:
        fund(wallet, amount)
    return wallet


def fund(account: Account, amount: Decimal) -> None:
    """Move `amount` into `account` the way a payment arrives: from provider clearing."""
    ledger.post_transfer(
        debit=ledger.clearing_account(provider="testpay"),
        credit=account,
        amount=amount,
        kind=TransferKind.LATE_PAYMENT_CREDIT,
        idempotency_key=f"test-fund:{uuid.uuid4().hex}",
    )
    account.refresh_from_db()


def holding_account() -> Account:
    """An escrow's (empty) holding account; the escrow is created through its service."""
    escrow = escrow_services.create_escrow(
        buyer_id=CustomerFactory().telegram_id,
        seller_id=CustomerFactory().telegram_id,
        amount=Decimal("50.00"),
    )
    return ledger.open_holding_account(escrow_id=escrow.pk)


def break_ledger(patch) -> None:
    """Make every posting fail with ZeroDivisionError, on the ORM path (post_transfers)
    and on the PostgreSQL webhook hot path (post_transfers_batched) alike."""

    def fail(*args, **kwargs):
        return 1 / 0

    patch.setattr(ledger, "post_transfers", fail)
    patch.setattr(ledger, "post_transfers_batched", fail)

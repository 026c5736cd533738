"""Factories for escrows: built through the service so fees and totals are consistent."""

from decimal import Decimal

from escrow import services
from escrow.models import Escrow
from wallets.tests.factories import CustomerFactory


def make_escrow(
    *,
    amount: Decimal = Decimal("92.13"),
    buyer_id: int | None = None,
    seller_id: int | None = None,
    **kwargs,
) -> Escrow:
    buyer_id = buyer_id or CustomerFactory().telegram_id
    seller_id = seller_id or CustomerFactory().telegram_id
    return services.create_escrow(buyer_id=buyer_id, seller_id=seller_id, amount=amount, **kwargs)

"""Fee arithmetic: what an escrow charges and who pays it."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from escrow.models import FeeSplit
from escrowsite.errors import ApplicationError
from wallets.money import quantize_usd


@dataclass(frozen=True)
class FeeBreakdown:
    fee_amount: Decimal
    buyer_fee: Decimal
    seller_fee: Decimal
    total_due: Decimal


def compute_fees(*, amount: Decimal, fee_split: str) -> FeeBreakdown:
    """Fee = max(percent of amount, minimum fee), rounded to cents; split as agreed.

    With a 50/50 split the buyer's half is rounded and the seller pays the rest, so the
    shares always add up to the fee exactly.
    """
    if amount <= 0:
        raise ApplicationError("The escrow amount must be positive.", {"amount": str(amount)})
    if quantize_usd(amount) != amount:
        raise ApplicationError("The escrow amount must be in whole cents.", {"amount": str(amount)})
    percent_fee = quantize_usd(amount * Decimal(settings.ESCROW_FEE_PERCENT) / 100)
    fee = max(percent_fee, quantize_usd(Decimal(settings.ESCROW_MIN_FEE)))
    if fee_split == FeeSplit.BUYER_PAYS:
        buyer_fee = fee
    elif fee_split == FeeSplit.SELLER_PAYS:
        buyer_fee = Decimal("0.00")
    elif fee_split == FeeSplit.SPLIT:
        buyer_fee = quantize_usd(fee / 2)
    else:
        raise ApplicationError(f"Unknown fee split {fee_split!r}.", {"choices": FeeSplit.values})
    seller_fee = fee - buyer_fee
    if seller_fee >= amount:
        raise ApplicationError(
            "The seller's fee would consume the whole amount.",
            {"amount": str(amount), "seller_fee": str(seller_fee)},
        )
    return FeeBreakdown(fee, buyer_fee, seller_fee, amount + buyer_fee)


def payment_tolerance(total_due: Decimal) -> Decimal:
    """The largest underpayment that still confirms: max(floor, percent of total due)."""
    percent = quantize_usd(total_due * Decimal(settings.PAYMENT_TOLERANCE_PERCENT) / 100)
    return max(quantize_usd(Decimal(settings.PAYMENT_TOLERANCE_USD)), percent)

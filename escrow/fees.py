"""Fee arithmetic: what an escrow charges and who pays it."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from escrow.models import FeeSplit
from escrowsite.errors import ApplicationError
from wallets.money import MONEY_DIGITS, MONEY_PLACES, quantize_usd

# The largest amount the money columns can store, less room for the fee on top.
MAX_AMOUNT = Decimal(10) ** (MONEY_DIGITS - MONEY_PLACES - 1)


@dataclass(frozen=True)
class FeeBreakdown:
    fee_amount: Decimal
    buyer_fee: Decimal
    seller_fee: Decimal
    total_due: Decimal


def check_amount(amount: object, *, what: str = "The escrow amount") -> Decimal:
    """A positive, finite Decimal in whole cents that the money columns can hold.

    Raises ApplicationError otherwise, so a bad amount is a clear refusal rather than a
    TypeError or a database error half-way through a service.
    """
    if not isinstance(amount, Decimal) or isinstance(amount, bool):
        raise ApplicationError(f"{what} must be a Decimal.", {"amount": repr(amount)})
    if not amount.is_finite():
        raise ApplicationError(f"{what} must be a finite number.", {"amount": str(amount)})
    if amount <= 0:
        raise ApplicationError(f"{what} must be positive.", {"amount": str(amount)})
    if amount >= MAX_AMOUNT:
        raise ApplicationError(f"{what} is too large.", {"amount": str(amount)})
    if quantize_usd(amount) != amount:
        raise ApplicationError(f"{what} must be in whole cents.", {"amount": str(amount)})
    return amount


def compute_fees(*, amount: Decimal, fee_split: str) -> FeeBreakdown:
    """Fee = max(percent of amount, minimum fee), rounded to cents; split as agreed.

    With a 50/50 split the buyer's half is rounded (half up) and the seller pays the rest,
    so the shares always add up to the fee exactly.
    """
    check_amount(amount)
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

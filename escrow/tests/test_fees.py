"""Fee arithmetic: percent with a floor, who pays, half-up cents, odd cents in a split."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escrow.fees import FeeBreakdown, compute_fees, payment_tolerance
from escrow.models import FeeSplit
from escrowsite.errors import ApplicationError

D = Decimal


@pytest.mark.parametrize(
    ("amount", "split", "expected"),
    [
        # 5% of 92.13 is 4.6065: half up to 4.61, all on the buyer (the incident escrow).
        ("92.13", FeeSplit.BUYER_PAYS, ("4.61", "4.61", "0.00", "96.74")),
        ("100.00", FeeSplit.SELLER_PAYS, ("5.00", "0.00", "5.00", "100.00")),
        ("100.00", FeeSplit.SPLIT, ("5.00", "2.50", "2.50", "102.50")),
        # Odd cents in a split: the buyer's half rounds up, the seller pays the rest.
        ("92.13", FeeSplit.SPLIT, ("4.61", "2.31", "2.30", "94.44")),
        # 5% of 10.00 is 0.50, below the 1.00 minimum.
        ("10.00", FeeSplit.BUYER_PAYS, ("1.00", "1.00", "0.00", "11.00")),
        ("10.00", FeeSplit.SPLIT, ("1.00", "0.50", "0.50", "10.50")),
        ("20.00", FeeSplit.SELLER_PAYS, ("1.00", "0.00", "1.00", "20.00")),
        # 5% of 20.10 is 1.005: half up gives 1.01 (banker's rounding would give 1.00).
        ("20.10", FeeSplit.BUYER_PAYS, ("1.01", "1.01", "0.00", "21.11")),
        ("30.10", FeeSplit.SPLIT, ("1.51", "0.76", "0.75", "30.86")),
        ("0.01", FeeSplit.BUYER_PAYS, ("1.00", "1.00", "0.00", "1.01")),
    ],
)
def test_fee_breakdown(amount, split, expected):
    fee, buyer_fee, seller_fee, total_due = (D(x) for x in expected)
    assert compute_fees(amount=D(amount), fee_split=split) == FeeBreakdown(
        fee, buyer_fee, seller_fee, total_due
    )


def test_fee_settings_come_from_the_environment(settings):
    settings.ESCROW_FEE_PERCENT = "2.5"
    settings.ESCROW_MIN_FEE = "0.50"
    assert compute_fees(amount=D("10.00"), fee_split=FeeSplit.BUYER_PAYS).fee_amount == D("0.50")
    assert compute_fees(amount=D("250.00"), fee_split=FeeSplit.BUYER_PAYS).fee_amount == D("6.25")
    # 2.5% of 41.30 is 1.0325 -> 1.03
    assert compute_fees(amount=D("41.30"), fee_split=FeeSplit.SPLIT) == FeeBreakdown(
        D("1.03"), D("0.52"), D("0.51"), D("41.82")
    )


@given(
    amount=st.decimals(min_value=D("1.01"), max_value=D("1000000"), places=2),
    split=st.sampled_from(FeeSplit.values),
)
def test_shares_always_add_up(amount, split):
    fees = compute_fees(amount=amount, fee_split=split)
    assert fees.buyer_fee + fees.seller_fee == fees.fee_amount
    assert fees.total_due == amount + fees.buyer_fee
    for value in (fees.fee_amount, fees.buyer_fee, fees.seller_fee, fees.total_due):
        assert value == value.quantize(D("0.01"))
        assert value >= 0
    assert fees.fee_amount >= D("1.00")
    if fees.fee_amount > D("1.00"):
        assert abs(fees.fee_amount - amount * D("0.05")) <= D("0.005")
    if split == FeeSplit.SPLIT:
        assert fees.buyer_fee - fees.seller_fee in (D("0.00"), D("0.01"))


@pytest.mark.parametrize(
    ("amount", "split", "message"),
    [
        (D("0"), FeeSplit.BUYER_PAYS, "must be positive"),
        (D("-5.00"), FeeSplit.BUYER_PAYS, "must be positive"),
        (D("10.001"), FeeSplit.BUYER_PAYS, "whole cents"),
        (10.0, FeeSplit.BUYER_PAYS, "Decimal"),
        ("10.00", FeeSplit.BUYER_PAYS, "Decimal"),
        (D("NaN"), FeeSplit.BUYER_PAYS, "finite"),
        (D("Infinity"), FeeSplit.BUYER_PAYS, "finite"),
        (D("1e20"), FeeSplit.BUYER_PAYS, "too large"),
        (D("10.00"), "buyer-pays", "Unknown fee split"),
        # The seller's fee would eat the whole amount.
        (D("1.00"), FeeSplit.SELLER_PAYS, "whole amount"),
        (D("0.50"), FeeSplit.SPLIT, "whole amount"),
    ],
)
def test_bad_amounts_and_splits_are_refused(amount, split, message):
    with pytest.raises(ApplicationError, match=message):
        compute_fees(amount=amount, fee_split=split)


@pytest.mark.parametrize(
    ("total_due", "tolerance"),
    [("96.74", "1.00"), ("500.00", "5.00"), ("150.50", "1.51"), ("1.01", "1.00")],
)
def test_payment_tolerance_is_the_larger_of_floor_and_percent(total_due, tolerance):
    assert payment_tolerance(D(total_due)) == D(tolerance)

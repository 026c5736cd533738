"""A day of trading from creation to release: every wallet ends where it should, to the cent."""

from decimal import Decimal

import pytest

from escrow import services
from escrow.models import EscrowHolding, EscrowStatus, FeeSplit
from escrow.tests.factories import make_escrow, pay
from escrow.tests.helpers import assert_ledger_balanced, revenue, wallet
from wallets import ledger

D = Decimal
A, B, C = 5590563715, 6100000001, 6100000002


@pytest.mark.django_db
def test_balances_add_up_after_a_mixed_day():
    # 1. Overpaid, delivered and released.
    e1 = make_escrow(buyer_id=A, seller_id=B, amount=D("92.13"))
    assert pay(e1, D("101.00")).excess == D("4.26")
    services.accept_escrow(escrow_id=e1.escrow_id)
    services.mark_delivered(escrow_id=e1.escrow_id)
    services.release_escrow(escrow_id=e1.escrow_id)
    # 2. Paid in two parts, fee split, released.
    e2 = make_escrow(buyer_id=C, seller_id=B, amount=D("100.00"), fee_split=FeeSplit.SPLIT)
    assert e2.total_due == D("102.50")
    assert pay(e2, D("60.00")).kind == "partial"
    assert pay(e2, D("42.50")).kind == "confirmed"
    services.accept_escrow(escrow_id=e2.escrow_id)
    services.release_escrow(escrow_id=e2.escrow_id)
    # 3. Underpaid within tolerance, seller pays the fee, released.
    e3 = make_escrow(buyer_id=B, seller_id=A, amount=D("50.00"), fee_split=FeeSplit.SELLER_PAYS)
    assert pay(e3, D("49.00")).shortfall == D("1.00")
    services.accept_escrow(escrow_id=e3.escrow_id)
    services.release_escrow(escrow_id=e3.escrow_id)
    # 4. Declined by the seller.
    e4 = make_escrow(buyer_id=A, seller_id=C, amount=D("20.00"))
    pay(e4)
    services.decline_escrow(escrow_id=e4.escrow_id)
    # 5. Disputed and split.
    e5 = make_escrow(buyer_id=C, seller_id=A, amount=D("40.00"))
    pay(e5)
    services.accept_escrow(escrow_id=e5.escrow_id)
    services.open_dispute(escrow_id=e5.escrow_id, reason="half missing")
    services.resolve_dispute(
        escrow_id=e5.escrow_id,
        resolution="split",
        buyer_amount=D("10.00"),
        seller_amount=D("30.00"),
    )
    # 6. Cancelled, then paid anyway.
    e6 = make_escrow(buyer_id=A, seller_id=B, amount=D("10.00"))
    services.cancel_escrow(escrow_id=e6.escrow_id)
    assert pay(e6, D("11.00")).kind == "late_credit"

    assert wallet(A) == D("4.26") + D("47.50") + D("21.00") + D("30.00") + D("11.00")
    assert wallet(B) == D("92.13") + D("97.50")
    assert wallet(C) == D("10.00")
    assert revenue() == D("4.61") + D("5.00") + D("1.50") + D("2.00")
    assert ledger.clearing_account(provider="dynopay").balance == -D("326.50")
    assert all(h.account.balance == 0 for h in EscrowHolding.objects.select_related("account"))
    for escrow in (e1, e2, e3, e4, e5, e6):
        escrow.refresh_from_db()
    assert [e.status for e in (e1, e2, e3, e4, e5, e6)] == [
        EscrowStatus.COMPLETED,
        EscrowStatus.COMPLETED,
        EscrowStatus.COMPLETED,
        EscrowStatus.REFUNDED,
        EscrowStatus.COMPLETED,
        EscrowStatus.CANCELLED,
    ]
    assert_ledger_balanced()

from decimal import Decimal

import pytest

from escrow import services
from escrow.models import EscrowStatus
from escrow.tests.factories import make_escrow
from wallets import ledger
from wallets.models import Account
from django.db.models import Sum


@pytest.mark.django_db
def test_incident_payment_confirms_and_credits_excess():
    escrow = make_escrow(amount=Decimal("92.13"), buyer_id=5590563715, escrow_id="ES101325WZY2")
    assert escrow.total_due == Decimal("96.74")
    payment = services.IncomingPayment(
        provider="dynopay", tx_id="6462e85a-12da-403c-8eeb-e1697b9bbbe7",
        usd_amount=Decimal("101.00"), crypto_amount=Decimal("0.9187"), crypto_currency="LTC",
    )
    outcome = services.confirm_payment(escrow_id="ES101325WZY2", payment=payment)
    assert outcome.kind == "confirmed"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert ledger.customer_wallet(customer=5590563715).balance == Decimal("4.26")
    assert Account.objects.aggregate(s=Sum("balance"))["s"] == 0
    services.accept_escrow(escrow_id="ES101325WZY2")
    services.release_escrow(escrow_id="ES101325WZY2")
    assert ledger.customer_wallet(customer=escrow.seller_id).balance == Decimal("92.13")
    assert Account.objects.aggregate(s=Sum("balance"))["s"] == 0

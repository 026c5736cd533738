"""create_escrow: id format and uniqueness, fees stored, expiry from the payment window."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from escrow import services
from escrow.models import Escrow, EscrowStatus, FeeSplit, StatusChange
from escrow.services import creation
from escrow.tests.factories import make_escrow
from escrow.tests.helpers import db_state
from escrowsite.errors import ApplicationError
from wallets.models import Customer
from wallets.tests.factories import CustomerFactory

ID_FORMAT = re.compile(r"ES\d{6}[A-Z0-9]{4}")
NOW = datetime(2025, 10, 13, 14, 11, 40, tzinfo=UTC)


@pytest.mark.django_db
def test_new_escrow_awaits_payment_with_fees_and_expiry(settings):
    settings.ESCROW_PAYMENT_WINDOW_MINUTES = 45
    escrow = make_escrow(amount=Decimal("92.13"), fee_split=FeeSplit.SPLIT, now=NOW)
    escrow = Escrow.objects.get(pk=escrow.pk)
    assert ID_FORMAT.fullmatch(escrow.escrow_id)
    assert escrow.escrow_id.startswith("ES101325")
    assert escrow.status == EscrowStatus.PAYMENT_PENDING
    assert (escrow.fee_amount, escrow.buyer_fee, escrow.seller_fee, escrow.total_due) == (
        Decimal("4.61"),
        Decimal("2.31"),
        Decimal("2.30"),
        Decimal("94.44"),
    )
    assert escrow.expires_at == NOW + timedelta(minutes=45)
    assert escrow.delivery_hours == settings.ESCROW_DEFAULT_DELIVERY_HOURS
    assert escrow.payment_confirmed_at is None
    change = StatusChange.objects.get(escrow=escrow)
    assert (change.from_status, change.to_status) == ("created", "payment_pending")


@pytest.mark.django_db
def test_given_id_delivery_hours_and_description_are_kept():
    escrow = make_escrow(escrow_id="ES101325WZY2", delivery_hours=48, description="a domain name")
    escrow.refresh_from_db()
    assert (escrow.escrow_id, escrow.delivery_hours, escrow.description) == (
        "ES101325WZY2",
        48,
        "a domain name",
    )


@pytest.mark.django_db
def test_unknown_customers_are_created():
    services.create_escrow(buyer_id=111, seller_id=222, amount=Decimal("5.00"))
    assert set(Customer.objects.values_list("telegram_id", flat=True)) >= {111, 222}


@pytest.mark.django_db
def test_ids_are_unique_and_a_collision_draws_again(monkeypatch):
    first = make_escrow(now=NOW)
    drawn = iter([first.escrow_id, first.escrow_id, "ES101325AAAA"])
    monkeypatch.setattr(creation, "new_escrow_id", lambda now=None: next(drawn))
    second = make_escrow(now=NOW)
    assert second.escrow_id == "ES101325AAAA"
    assert Escrow.objects.count() == 2


@pytest.mark.django_db
def test_many_ids_are_distinct():
    ids = {make_escrow(now=NOW).escrow_id for _ in range(50)}
    assert len(ids) == 50
    assert all(ID_FORMAT.fullmatch(i) for i in ids)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"escrow_id": "ES101325WZY2"}, "already exists"),
        ({"escrow_id": "XX101325WZY2"}, "not a valid escrow id"),
        ({"escrow_id": "ES1013WZY2"}, "not a valid escrow id"),
        ({"escrow_id": "es101325wzy2"}, "not a valid escrow id"),
        ({"delivery_hours": 0}, "Delivery hours"),
        ({"delivery_hours": -3}, "Delivery hours"),
        ({"amount": Decimal("0.00")}, "positive"),
        ({"amount": 10.5}, "Decimal"),
        ({"fee_split": "nobody_pays"}, "Unknown fee split"),
        ({"same_parties": True}, "different customers"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(kwargs, message):
    buyer, seller = CustomerFactory(), CustomerFactory()
    make_escrow(escrow_id="ES101325WZY2", buyer_id=buyer.pk, seller_id=seller.pk)
    before = db_state()
    fields = {"buyer_id": buyer.pk, "seller_id": seller.pk, "amount": Decimal("10.00")}
    if kwargs.pop("same_parties", False):
        fields["seller_id"] = buyer.pk
    with pytest.raises(ApplicationError, match=message):
        services.create_escrow(**fields | kwargs)
    assert db_state() == before

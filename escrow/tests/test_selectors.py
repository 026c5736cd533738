"""get_escrow and escrow_summary: what staff see, in a fixed number of queries."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from escrow import services
from escrow.selectors import escrow_summary, get_escrow
from escrow.tests.factories import make_escrow, pay
from escrowsite.errors import NotFound
from wallets.models import Account

D = Decimal


@pytest.mark.django_db
def test_get_escrow_loads_parties_and_holding_in_one_query(django_assert_num_queries):
    escrow = make_escrow()
    pay(escrow)
    with django_assert_num_queries(1):
        loaded = get_escrow(escrow.escrow_id)
        assert (loaded.buyer.pk, loaded.seller.pk) == (escrow.buyer_id, escrow.seller_id)
        assert loaded.holding.account.balance == D("96.74")


@pytest.mark.django_db
def test_get_escrow_unknown():
    with pytest.raises(NotFound, match="ES000000NONE does not exist"):
        get_escrow("ES000000NONE")


@pytest.mark.django_db
def test_summary_of_an_unpaid_escrow_creates_no_wallets():
    escrow = make_escrow(amount=D("10.00"))
    summary = escrow_summary(escrow.escrow_id)
    assert summary["status"] == "payment_pending"
    assert summary["holding"] is None
    assert summary["transactions"] == summary["transfers"] == []
    assert summary["buyer"]["wallet_balance"] == summary["seller"]["wallet_balance"] == 0
    assert summary["amounts"]["total_due"] == D("11.00")
    assert not Account.objects.exists()


@pytest.mark.django_db
def test_summary_of_a_released_overpaid_escrow():
    escrow = make_escrow(amount=D("92.13"), escrow_id="ES101325WZY2")
    pay(escrow, D("101.00"), tx_id="6462e85a-12da-403c-8eeb-e1697b9bbbe7")
    services.accept_escrow(escrow_id=escrow.escrow_id)
    services.release_escrow(escrow_id=escrow.escrow_id)
    s = escrow_summary("ES101325WZY2")
    assert s["status"] == "completed"
    assert s["amounts"]["fee_amount"] == D("4.61")
    assert s["buyer"]["wallet_balance"] == D("4.26")
    assert s["seller"]["wallet_balance"] == D("92.13")
    assert s["holding"]["status"] == "released" and s["holding"]["balance"] == 0
    assert s["payment"]["deposit_tx_hash"] == "6462e85a-12da-403c-8eeb-e1697b9bbbe7"
    assert s["timestamps"]["payment_confirmed_at"] <= s["timestamps"]["completed_at"]
    assert [t["transaction_id"] for t in s["transactions"]] == [
        "ESC_ES101325WZY2_6462e85a",
        "OVP_ES101325WZY2_6462e85a",
        "REL_ES101325WZY2",
    ]
    assert [(t["kind"], t["amount"]) for t in s["transfers"]] == [
        ("escrow_payment", D("96.74")),
        ("overpayment_credit", D("4.26")),
        ("escrow_release", D("92.13")),
        ("fee", D("4.61")),
    ]
    ids = {t["id"] for t in s["transfers"]}
    assert all(set(t["transfer_ids"]) <= ids and t["transfer_ids"] for t in s["transactions"])
    assert [(c["from"], c["to"]) for c in s["status_history"]] == [
        ("created", "payment_pending"),
        ("payment_pending", "payment_confirmed"),
        ("payment_confirmed", "active"),
        ("active", "completed"),
    ]


@pytest.mark.django_db
def test_summary_query_count_does_not_grow_with_the_records():
    few, many = make_escrow(), make_escrow()
    pay(few, D("10.00"))
    for _ in range(6):
        pay(many, D("10.00"))
    counts = []
    for escrow in (few, many):
        with CaptureQueriesContext(connection) as queries:
            escrow_summary(escrow.escrow_id)
        counts.append(len(queries))
    assert counts[0] == counts[1]
    assert counts[0] <= 6

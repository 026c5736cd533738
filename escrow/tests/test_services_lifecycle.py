"""After payment: accept, decline, deliver, release, refund, cancel, expire, dispute."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from escrow import services
from escrow.models import EscrowHolding, EscrowStatus, FeeSplit, HoldingStatus
from escrow.tests.factories import escrow_in_status, make_escrow, pay
from escrow.tests.helpers import assert_ledger_balanced, db_state, holding_balance, revenue, wallet
from escrowsite.errors import ApplicationError, IllegalTransition, NotFound
from notifications.models import Notification
from wallets.models import Transaction

S = EscrowStatus
D = Decimal
NOW = datetime(2025, 10, 14, 9, 0, tzinfo=UTC)


def holding_status(escrow) -> str:
    return EscrowHolding.objects.get(escrow=escrow).status


def records(escrow) -> dict[str, tuple[str, Decimal, int]]:
    return {
        t.transaction_id: (t.type, t.amount, t.customer_id)
        for t in Transaction.objects.filter(escrow=escrow)
    }


@pytest.mark.django_db
def test_seller_accepts():
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    deadline = escrow.delivery_deadline
    services.accept_escrow(escrow_id=escrow.escrow_id, now=NOW)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.seller_accepted_at, escrow.expires_at) == (S.ACTIVE, NOW, None)
    assert escrow.delivery_deadline == deadline
    assert Notification.objects.filter(
        escrow=escrow, event="seller_accepted", customer_id=escrow.buyer_id
    ).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("split", FeeSplit.values)
def test_seller_declines_and_the_buyer_gets_everything_back_fee_included(split):
    escrow = make_escrow(amount=D("92.13"), fee_split=split)
    pay(escrow)
    services.decline_escrow(escrow_id=escrow.escrow_id, now=NOW)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.completed_at, escrow.expires_at) == (S.REFUNDED, NOW, None)
    assert wallet(escrow.buyer_id) == escrow.total_due
    assert wallet(escrow.seller_id) == 0
    assert revenue() == 0
    assert holding_balance(escrow) == 0
    assert holding_status(escrow) == HoldingStatus.REFUNDED
    assert records(escrow)[f"REF_{escrow.escrow_id}"] == (
        "escrow_refund",
        escrow.total_due,
        escrow.buyer_id,
    )
    assert_ledger_balanced()


@pytest.mark.django_db
def test_mark_delivered_starts_the_auto_release_clock(settings):
    settings.ESCROW_AUTO_RELEASE_HOURS = 48
    escrow = escrow_in_status(S.ACTIVE)
    services.mark_delivered(escrow_id=escrow.escrow_id, now=NOW)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.delivered_at) == (S.DELIVERED, NOW)
    assert escrow.auto_release_at == NOW + timedelta(hours=48)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("split", "seller_gets", "buyer_paid"),
    [
        (FeeSplit.BUYER_PAYS, "92.13", "96.74"),
        (FeeSplit.SELLER_PAYS, "87.52", "92.13"),
        (FeeSplit.SPLIT, "89.83", "94.44"),
    ],
)
def test_release_pays_the_seller_net_of_their_fee_share(split, seller_gets, buyer_paid):
    escrow = make_escrow(amount=D("92.13"), fee_split=split)
    assert escrow.total_due == D(buyer_paid)
    pay(escrow)
    services.accept_escrow(escrow_id=escrow.escrow_id)
    services.mark_delivered(escrow_id=escrow.escrow_id)
    services.release_escrow(escrow_id=escrow.escrow_id, now=NOW)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.completed_at) == (S.COMPLETED, NOW)
    assert wallet(escrow.seller_id) == D(seller_gets)
    assert wallet(escrow.buyer_id) == 0
    assert revenue() == D("4.61")
    assert holding_balance(escrow) == 0
    assert holding_status(escrow) == HoldingStatus.RELEASED
    assert records(escrow)[f"REL_{escrow.escrow_id}"] == (
        "escrow_release",
        D(seller_gets),
        escrow.seller_id,
    )
    assert_ledger_balanced()


@pytest.mark.django_db
def test_buyer_may_release_before_delivery_is_marked():
    escrow = escrow_in_status(S.ACTIVE)
    services.release_escrow(escrow_id=escrow.escrow_id)
    assert wallet(escrow.seller_id) == escrow.amount


@pytest.mark.django_db
@pytest.mark.parametrize("status", [S.PAYMENT_CONFIRMED, S.ACTIVE, S.DISPUTED])
def test_refund_returns_everything_held(status):
    escrow = escrow_in_status(status)
    services.refund_escrow(escrow_id=escrow.escrow_id, reason="staff decision", now=NOW)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.completed_at) == (S.REFUNDED, NOW)
    assert wallet(escrow.buyer_id) == escrow.total_due
    assert holding_balance(escrow) == 0
    assert_ledger_balanced()


@pytest.mark.django_db
def test_a_partially_paid_escrow_can_be_refunded():
    escrow = make_escrow(amount=D("92.13"))
    pay(escrow, D("40.00"))
    pay(escrow, D("10.00"))
    services.refund_escrow(escrow_id=escrow.escrow_id, reason="buyer gave up")
    escrow.refresh_from_db()
    assert escrow.status == S.REFUNDED
    assert wallet(escrow.buyer_id) == D("50.00")
    assert holding_balance(escrow) == 0
    assert holding_status(escrow) == HoldingStatus.REFUNDED
    assert revenue() == 0
    assert_ledger_balanced()


@pytest.mark.django_db
def test_an_underpaid_escrow_refund_returns_what_was_paid():
    escrow = make_escrow(amount=D("92.13"))
    pay(escrow, D("96.00"))
    services.decline_escrow(escrow_id=escrow.escrow_id)
    assert wallet(escrow.buyer_id) == D("96.00")
    assert revenue() == 0
    assert_ledger_balanced()


@pytest.mark.django_db
def test_cancel_unpaid():
    escrow = make_escrow()
    services.cancel_escrow(escrow_id=escrow.escrow_id, reason="changed my mind")
    escrow.refresh_from_db()
    assert (escrow.status, escrow.expires_at) == (S.CANCELLED, None)
    assert not EscrowHolding.objects.filter(escrow=escrow).exists()


@pytest.mark.django_db
def test_expire_only_after_the_payment_window():
    escrow = make_escrow(now=NOW)
    before = db_state()
    with pytest.raises(ApplicationError, match="payment window"):
        services.expire_escrow(
            escrow_id=escrow.escrow_id, now=escrow.expires_at - timedelta(seconds=1)
        )
    assert db_state() == before
    services.expire_escrow(escrow_id=escrow.escrow_id, now=escrow.expires_at)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.expires_at) == (S.EXPIRED, None)


@pytest.mark.django_db
def test_open_dispute_freezes_the_escrow():
    escrow = escrow_in_status(S.DELIVERED)
    assert escrow.auto_release_at is not None
    services.open_dispute(escrow_id=escrow.escrow_id, reason="not as described")
    escrow.refresh_from_db()
    assert escrow.status == S.DISPUTED
    # No sweep may release it on the old schedule.
    assert (escrow.auto_release_at, escrow.expires_at) == (None, None)
    notified = set(
        Notification.objects.filter(escrow=escrow, event="disputed").values_list(
            "customer_id", flat=True
        )
    )
    assert notified == {escrow.buyer_id, escrow.seller_id}
    before = db_state()
    with pytest.raises(IllegalTransition):
        services.release_escrow(escrow_id=escrow.escrow_id, source="sweep")
    with pytest.raises(IllegalTransition):
        services.accept_escrow(escrow_id=escrow.escrow_id)
    assert db_state() == before


@pytest.mark.django_db
def test_resolve_dispute_by_refund():
    escrow = escrow_in_status(S.DISPUTED)
    services.resolve_dispute(escrow_id=escrow.escrow_id, resolution="refund", reason="no delivery")
    escrow.refresh_from_db()
    assert escrow.status == S.REFUNDED
    assert wallet(escrow.buyer_id) == D("96.74")
    assert holding_status(escrow) == HoldingStatus.REFUNDED
    assert_ledger_balanced()


@pytest.mark.django_db
def test_resolve_dispute_by_release():
    escrow = escrow_in_status(S.DISPUTED)
    services.resolve_dispute(escrow_id=escrow.escrow_id, resolution="release", reason="delivered")
    escrow.refresh_from_db()
    assert escrow.status == S.COMPLETED
    assert wallet(escrow.seller_id) == D("92.13")
    assert revenue() == D("4.61")
    assert holding_status(escrow) == HoldingStatus.RELEASED
    assert_ledger_balanced()


@pytest.mark.django_db
def test_resolve_dispute_by_split_sends_the_rest_to_revenue():
    escrow = escrow_in_status(S.DISPUTED)
    services.resolve_dispute(
        escrow_id=escrow.escrow_id,
        resolution="split",
        buyer_amount=D("30.00"),
        seller_amount=D("62.13"),
        reason="half delivered",
        now=NOW,
    )
    escrow.refresh_from_db()
    assert (escrow.status, escrow.completed_at) == (S.COMPLETED, NOW)
    assert (wallet(escrow.buyer_id), wallet(escrow.seller_id)) == (D("30.00"), D("62.13"))
    assert revenue() == D("4.61")
    assert holding_balance(escrow) == 0
    assert holding_status(escrow) == HoldingStatus.SPLIT
    assert set(records(escrow)) >= {f"REL_{escrow.escrow_id}", f"REF_{escrow.escrow_id}"}
    assert_ledger_balanced()


@pytest.mark.django_db
def test_a_split_may_hand_out_everything_held():
    escrow = escrow_in_status(S.DISPUTED)
    services.resolve_dispute(
        escrow_id=escrow.escrow_id,
        resolution="split",
        buyer_amount=D("50.00"),
        seller_amount=D("46.74"),
    )
    assert revenue() == 0
    assert holding_balance(escrow) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"buyer_amount": D("50.00"), "seller_amount": D("46.75")}, ApplicationError, "exceed"),
        ({"buyer_amount": D("-1.00"), "seller_amount": D("10.00")}, ApplicationError, "buyer"),
        ({"buyer_amount": D("1.001"), "seller_amount": D("10.00")}, ApplicationError, "buyer"),
        ({"buyer_amount": D("1.00"), "seller_amount": 10.0}, ApplicationError, "seller"),
        ({"buyer_amount": D("1.00")}, ApplicationError, "both"),
        ({"resolution": "coin_flip"}, ApplicationError, "Unknown resolution"),
    ],
)
def test_bad_dispute_resolutions_are_refused_and_write_nothing(kwargs, error, message):
    escrow = escrow_in_status(S.DISPUTED)
    before = db_state()
    with pytest.raises(error, match=message):
        services.resolve_dispute(escrow_id=escrow.escrow_id, **{"resolution": "split"} | kwargs)
    assert db_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "call",
    [
        services.accept_escrow,
        services.decline_escrow,
        services.mark_delivered,
        services.release_escrow,
        services.refund_escrow,
        services.cancel_escrow,
        services.expire_escrow,
        services.open_dispute,
    ],
)
def test_unknown_escrow_is_not_found(call):
    with pytest.raises(NotFound, match="ES000000NONE"):
        call(escrow_id="ES000000NONE")


@pytest.mark.django_db
def test_services_join_the_callers_transaction_and_a_refusal_leaves_it_usable():
    """A refused move inside a larger unit of work undoes only itself."""
    from django.db import transaction

    done = escrow_in_status(S.COMPLETED)
    pending = make_escrow()
    with transaction.atomic():
        services.cancel_escrow(escrow_id=pending.escrow_id)
        with pytest.raises(IllegalTransition):
            services.refund_escrow(escrow_id=done.escrow_id)
        pending.refresh_from_db()
    assert pending.status == S.CANCELLED

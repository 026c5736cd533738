"""escrow.staff: each staff action is one durable commit of its effects and its audit row."""

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from escrow import staff
from escrow.models import EscrowStatus, StaffAction
from escrow.tests.admin_support import (
    staff_user,
)
from escrow.tests.factories import escrow_in_status, make_escrow
from escrowsite.errors import ApplicationError, IllegalTransition
from payments.tests.test_webhook import snapshot, wallet

S = EscrowStatus


@pytest.mark.django_db
def test_refund_records_who_why_and_the_money_before_and_after():
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = escrow_in_status(S.ACTIVE)
    staff.refund_escrow(
        escrow_id=escrow.escrow_id, actor_id=finance_user.pk, reason=" seller vanished "
    )
    action = StaffAction.objects.get()
    assert action.actor == finance_user and action.reason == "seller vanished"
    assert action.escrow == escrow and action.target == f"escrow {escrow.escrow_id}"
    assert action.changes["before"] == {
        "status": "active",
        "held": str(escrow.total_due),
        "buyer_wallet": "0.00",
        "seller_wallet": "0.00",
    }
    assert action.changes["after"] == {
        "status": "refunded",
        "held": "0.00",
        "buyer_wallet": str(escrow.total_due),
        "seller_wallet": "0.00",
    }
    change = escrow.status_changes.get(to_status=S.REFUNDED)
    assert (
        change.actor == finance_user
        and change.source == "staff"
        and change.reason == "seller vanished"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "call",
    [
        lambda e, a: staff.cancel_escrow(escrow_id=e.escrow_id, actor_id=a, reason="r"),
        lambda e, a: staff.release_escrow(escrow_id=e.escrow_id, actor_id=a, reason="r"),
        lambda e, a: staff.resolve_dispute(
            escrow_id=e.escrow_id, resolution="refund", actor_id=a, reason="r"
        ),
    ],
    ids=["cancel", "release", "resolve"],
)
def test_a_refused_action_writes_nothing(call):
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    before = snapshot()
    with pytest.raises(IllegalTransition):
        call(escrow, finance_user.pk)
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_a_reason_is_required_before_anything_happens():
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = make_escrow()
    with pytest.raises(ApplicationError, match="reason"):
        staff.cancel_escrow(escrow_id=escrow.escrow_id, actor_id=finance_user.pk, reason="  ")
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_PENDING


@pytest.mark.django_db
def test_split_resolution_is_audited_with_its_amounts():
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = escrow_in_status(S.DISPUTED, amount=Decimal("50.00"))
    staff.resolve_dispute(
        escrow_id=escrow.escrow_id,
        resolution="split",
        buyer_amount=Decimal("20.00"),
        seller_amount=Decimal("25.00"),
        actor_id=finance_user.pk,
        reason="partial delivery",
    )
    assert wallet(escrow.buyer_id) == Decimal("20.00") and wallet(escrow.seller_id) == Decimal(
        "25.00"
    )
    changes = StaffAction.objects.get().changes
    assert changes["resolution"] == "split"
    assert (changes["buyer_amount"], changes["seller_amount"]) == ("20.00", "25.00")


@pytest.mark.django_db(transaction=True)
def test_a_staff_action_is_its_own_durable_transaction(django_user_model):
    actor = django_user_model.objects.create_user("x", is_staff=True)
    escrow = make_escrow()
    with pytest.raises(RuntimeError), transaction.atomic():
        staff.cancel_escrow(escrow_id=escrow.escrow_id, actor_id=actor.pk, reason="nested")
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_PENDING


# --- deadlines ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_extend_the_payment_window():
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = make_escrow()
    until = escrow.expires_at + timedelta(hours=6)
    staff.extend_deadline(
        escrow_id=escrow.escrow_id,
        deadline="expires_at",
        until=until,
        actor_id=finance_user.pk,
        reason="buyer's exchange is slow",
    )
    escrow.refresh_from_db()
    assert escrow.expires_at == until and escrow.status == S.PAYMENT_PENDING
    assert StaffAction.objects.get().changes["after"] == until.isoformat()


@pytest.mark.django_db
def test_an_overdue_deadline_can_be_moved_into_the_future():
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = make_escrow()
    now = escrow.expires_at + timedelta(hours=1)  # the sweep has not run yet
    staff.extend_deadline(
        escrow_id=escrow.escrow_id,
        deadline="expires_at",
        until=now + timedelta(hours=1),
        actor_id=finance_user.pk,
        reason="r",
        now=now,
    )
    escrow.refresh_from_db()
    assert escrow.expires_at == now + timedelta(hours=1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "deadline", "shift", "message"),
    [
        (S.PAYMENT_PENDING, "delivery_deadline", timedelta(days=1), "no running delivery_deadline"),
        (S.ACTIVE, "auto_release_at", timedelta(days=1), "no running auto_release_at"),
        (S.COMPLETED, "expires_at", timedelta(days=1), "no running expires_at"),
        (S.ACTIVE, "delivery_deadline", timedelta(seconds=-1), "must be later"),
        (S.ACTIVE, "created_at", timedelta(days=1), "not a deadline"),
    ],
)
def test_deadlines_that_cannot_be_extended(status, deadline, shift, message):
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = escrow_in_status(status)
    base = getattr(escrow, deadline, None) or timezone.now()
    before = snapshot()
    with pytest.raises(ApplicationError, match=message):
        staff.extend_deadline(
            escrow_id=escrow.escrow_id,
            deadline=deadline,
            until=base + shift,
            actor_id=finance_user.pk,
            reason="r",
        )
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_a_deadline_must_end_in_the_future_and_carry_a_timezone():
    finance_user = staff_user("fiona-finance", "Finance")
    escrow = make_escrow()
    later = escrow.expires_at + timedelta(hours=1)
    with pytest.raises(ApplicationError, match="future"):
        staff.extend_deadline(
            escrow_id=escrow.escrow_id,
            deadline="expires_at",
            until=later,
            actor_id=finance_user.pk,
            reason="r",
            now=later + timedelta(minutes=1),
        )
    with pytest.raises(ApplicationError, match="timezone"):
        staff.extend_deadline(
            escrow_id=escrow.escrow_id,
            deadline="expires_at",
            until=datetime(2099, 1, 1),
            actor_id=finance_user.pk,
            reason="r",
        )
    assert not StaffAction.objects.exists()


@pytest.mark.django_db
def test_running_deadlines_follow_the_status():
    assert staff.running_deadlines(make_escrow()) == ["expires_at"]
    assert staff.running_deadlines(escrow_in_status(S.PAYMENT_CONFIRMED)) == [
        "expires_at",
        "delivery_deadline",
    ]
    assert staff.running_deadlines(escrow_in_status(S.ACTIVE)) == ["delivery_deadline"]
    assert staff.running_deadlines(escrow_in_status(S.DELIVERED)) == ["auto_release_at"]
    assert staff.running_deadlines(escrow_in_status(S.COMPLETED)) == []

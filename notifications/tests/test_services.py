"""Writing to the outbox: one row per event and channel, nothing from a rolled-back change."""

from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction

from escrow import services as escrow_services
from escrow.tests.factories import make_escrow
from notifications.dispatch import dispatch_due
from notifications.models import Notification, NotificationStatus
from notifications.services import requeue_notifications
from notifications.tests.factories import enqueue

pytestmark = pytest.mark.django_db

S = NotificationStatus


def test_the_same_key_twice_writes_one_row_per_channel_and_sends_once(bot, email):
    first = enqueue(key="ES0000000001:payment_confirmed:buyer", paid="1.00")
    second = enqueue(key="ES0000000001:payment_confirmed:buyer", paid="2.00")
    assert [r.pk for r in first] == [r.pk for r in second]
    assert sorted(r.channel for r in second) == ["bot_webhook", "email"]
    assert Notification.objects.count() == 2
    assert second[0].payload["paid"] == "1.00"  # the first write stands

    dispatch_due()
    dispatch_due()
    assert len(bot.requests) == 1
    assert len(mail.outbox) == 1


def test_a_repeated_key_inside_the_money_transaction_does_not_break_it(bot):
    # ON CONFLICT DO NOTHING: a duplicate never raises into (and aborts) the caller.
    with transaction.atomic():
        enqueue(key="ES0000000002:released:seller")
        enqueue(key="ES0000000002:released:seller")
        assert Notification.objects.count() == 1
    assert Notification.objects.count() == 1


def test_rows_of_a_rolled_back_change_are_never_sent(bot, django_capture_on_commit_callbacks):
    escrow = make_escrow(amount=Decimal("50.00"))
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        escrow_services.confirm_payment(
            escrow_id=escrow.escrow_id,
            payment=escrow_services.IncomingPayment(
                provider="dynopay", tx_id="tx-rolled-back", usd_amount=Decimal("52.50")
            ),
        )
        assert Notification.objects.filter(escrow=escrow).count() == 2
        raise RuntimeError("a later step of the money transaction failed")
    assert callbacks == []  # no after-commit dispatch was scheduled
    assert not Notification.objects.filter(escrow=escrow).exists()
    assert dispatch_due().items == []
    assert bot.requests == []


def test_a_commit_schedules_one_dispatch_that_delivers_in_eager_mode(
    bot, settings, django_capture_on_commit_callbacks
):
    settings.NOTIFICATIONS_DISPATCH_EAGER = True
    escrow = make_escrow(amount=Decimal("50.00"))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        escrow_services.confirm_payment(
            escrow_id=escrow.escrow_id,
            payment=escrow_services.IncomingPayment(
                provider="dynopay", tx_id="tx-committed", usd_amount=Decimal("52.50")
            ),
        )
    assert len(callbacks) >= 1
    rows = Notification.objects.filter(escrow=escrow)
    assert sorted(r.event for r in rows) == ["offer_to_seller", "payment_confirmed"]
    assert all(r.status == S.SENT for r in rows)
    assert len(bot.requests) == 2


def test_staff_can_requeue_a_dead_row_but_never_a_sent_one(bot_down, settings):
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 1
    [dead] = enqueue()
    dispatch_due()
    dead.refresh_from_db()
    assert dead.status == S.DEAD

    assert requeue_notifications(ids=[dead.pk]) == 1
    dead.refresh_from_db()
    assert dead.status == S.PENDING and dead.attempts == 0 and dead.next_attempt_at


def test_requeue_leaves_sent_rows_alone(bot):
    [row] = enqueue()
    dispatch_due()
    assert requeue_notifications(ids=[row.pk]) == 0
    row.refresh_from_db()
    assert row.status == S.SENT
    assert dispatch_due().items == []
    assert len(bot.requests) == 1


@pytest.mark.django_db
def test_one_transaction_schedules_one_dispatch_kick_however_many_rows(
    django_capture_on_commit_callbacks,
):
    from notifications.services import enqueue_notification

    with django_capture_on_commit_callbacks() as callbacks:
        for n in range(5):
            enqueue_notification(
                event="e", recipient_id=None, escrow_id=None, key=f"kick:{n}", payload={}
            )
    assert len(callbacks) == 1

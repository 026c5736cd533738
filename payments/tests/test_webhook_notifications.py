"""Notifications never touch payment state: a bot that is down or answering 500 leaves the
payment applied, and its messages wait in the outbox to be retried."""

from decimal import Decimal

import pytest

from escrow.models import Escrow, EscrowStatus
from notifications.models import Notification, NotificationStatus
from notifications.tests.receiver import Receiver, unused_port
from payments.models import Outcome, WebhookReceipt
from payments.tests.test_webhook import assert_ledger_balanced, incident_escrow, wallet
from payments.tests.webhooks import INCIDENT_TX, payload, post

BOT_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


@pytest.fixture
def eager_bot(settings):
    settings.NOTIFICATIONS_BOT_WEBHOOK_SECRET = BOT_SECRET
    settings.NOTIFICATIONS_DISPATCH_EAGER = True  # send in the committing thread, after commit
    return settings


def assert_incident_applied() -> None:
    escrow = Escrow.objects.get(escrow_id="ES101325WZY2")
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert wallet(5590563715) == Decimal("11.61")
    assert WebhookReceipt.objects.get().outcome == Outcome.APPLIED
    assert_ledger_balanced()


@pytest.mark.django_db(transaction=True)
def test_a_bot_that_is_down_leaves_the_payment_applied(client, eager_bot):
    eager_bot.NOTIFICATIONS_BOT_WEBHOOK_URL = f"http://127.0.0.1:{unused_port()}/bot"
    incident_escrow()
    response = post(client, payload(tx_id=INCIDENT_TX))
    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    assert_incident_applied()
    rows = Notification.objects.filter(escrow__escrow_id="ES101325WZY2")
    assert rows.count() >= 2
    assert all(
        r.status == NotificationStatus.FAILED and r.attempts == 1 and r.last_error for r in rows
    )


@pytest.mark.django_db(transaction=True)
def test_a_bot_answering_500_leaves_the_payment_applied_and_is_retried_later(client, eager_bot):
    bot = Receiver().start()
    try:
        bot.status = 500
        eager_bot.NOTIFICATIONS_BOT_WEBHOOK_URL = bot.url
        incident_escrow()
        assert post(client, payload(tx_id=INCIDENT_TX)).status_code == 200
        assert_incident_applied()
        assert bot.requests, "the bot was never called"
        failed = Notification.objects.filter(status=NotificationStatus.FAILED)
        assert failed.count() >= 2

        # Later the bot is back; the dispatcher (run here with the clock past the backoff)
        # delivers what was waiting, and the payment is untouched.
        from datetime import timedelta

        from django.utils import timezone

        from notifications.dispatch import dispatch_due

        bot.status = 200
        report = dispatch_due(clock=lambda: timezone.now() + timedelta(hours=5))
        assert report.count("sent") >= 2 and not report.failures
        assert (
            not Notification.objects.exclude(status=NotificationStatus.SENT)
            .filter(escrow__escrow_id="ES101325WZY2")
            .exists()
        )
        assert_incident_applied()
    finally:
        bot.stop()

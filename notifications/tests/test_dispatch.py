"""Delivering outbox rows: what a failed, retried, dead or waiting delivery looks like."""

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db.models import Sum
from django.utils import timezone

from escrow import services as escrow_services
from escrow.models import Escrow
from escrow.tests.factories import make_escrow
from notifications import signing
from notifications.dispatch import dispatch_due, retry_delay
from notifications.models import Channel, Notification, NotificationStatus
from notifications.tests.conftest import SECRET
from notifications.tests.factories import enqueue
from wallets.models import Account, Transaction, Transfer

pytestmark = pytest.mark.django_db

S = NotificationStatus


def later(seconds: float):
    """A dispatcher clock `seconds` from now (retries are scheduled on it)."""
    moment = timezone.now() + timedelta(seconds=seconds)
    return lambda: moment


def paid_escrow() -> Escrow:
    escrow = make_escrow(amount=Decimal("92.13"), buyer_id=5590563715, escrow_id="ES101325WZY2")
    escrow_services.confirm_payment(
        escrow_id=escrow.escrow_id,
        payment=escrow_services.IncomingPayment(
            provider="dynopay",
            tx_id="6462e85a-12da-403c-8eeb-e1697b9bbbe7",
            usd_amount=Decimal("101.00"),
            crypto_amount=Decimal("0.9187"),
            crypto_currency="LTC",
        ),
    )
    return escrow


def money_state() -> dict:
    """Everything a delivery must never change, in comparable form."""
    return {
        "escrows": list(Escrow.objects.order_by("pk").values()),
        "accounts": list(Account.objects.order_by("pk").values("pk", "balance")),
        "transfers": Transfer.objects.count(),
        "transactions": list(Transaction.objects.order_by("pk").values()),
        "total": Account.objects.aggregate(s=Sum("balance"))["s"],
    }


def test_a_refused_delivery_is_recorded_on_the_row_and_changes_nothing_else(bot):
    escrow = paid_escrow()
    rows = list(Notification.objects.filter(escrow=escrow).order_by("pk"))
    assert [r.event for r in rows] == ["offer_to_seller", "payment_confirmed"]
    before = money_state()
    bot.status = 500

    started = timezone.now()
    report = dispatch_due()

    assert [item.outcome for item in report.items] == ["failed", "failed"]
    assert len(bot.requests) == 2
    for row in rows:
        row.refresh_from_db()
        assert row.status == S.FAILED
        assert row.attempts == 1
        assert row.sent_at is None
        assert "HTTP 500" in row.last_error and "receiver says no" in row.last_error
        # First retry 30 s later, measured from the failure.
        assert started + timedelta(seconds=29) < row.next_attempt_at
        assert row.next_attempt_at < timezone.now() + timedelta(seconds=31)
    assert money_state() == before
    escrow.refresh_from_db()
    assert escrow.status == "payment_confirmed"


@pytest.mark.parametrize("status", [404, 302, 401, 503])
def test_only_a_2xx_counts_as_delivered(bot, status):
    [row] = enqueue()
    bot.status = status
    dispatch_due()
    row.refresh_from_db()
    assert row.status == S.FAILED
    assert f"HTTP {status}" in row.last_error
    assert len(bot.requests) == 1  # a redirect is reported, not followed


def test_a_bot_that_is_down_is_a_failed_delivery(bot_down):
    [row] = enqueue()
    report = dispatch_due()
    row.refresh_from_db()
    assert report.failures and row.status == S.FAILED
    assert row.attempts == 1
    assert "unreachable" in row.last_error and "refused" in row.last_error.lower()


def test_a_bot_that_does_not_answer_in_time_is_a_failed_delivery(bot, settings):
    settings.NOTIFICATIONS_TIMEOUT_SECONDS = 0.2
    bot.delay = 1.0
    [row] = enqueue()
    started = time.monotonic()
    dispatch_due()
    assert time.monotonic() - started < 0.9
    row.refresh_from_db()
    assert row.status == S.FAILED
    assert "timed out" in row.last_error


def test_a_failed_row_waits_for_its_backoff_then_is_sent_with_the_same_id(bot):
    [row] = enqueue(paid="101.00")
    bot.respond_with(500)
    dispatch_due()

    # Not due yet: nothing is sent before the backoff is over.
    assert dispatch_due(clock=later(10)).items == []
    assert len(bot.requests) == 1

    report = dispatch_due(clock=later(31))
    assert [item.outcome for item in report.items] == ["sent"]
    row.refresh_from_db()
    assert row.status == S.SENT
    assert row.attempts == 2
    assert row.sent_at is not None
    assert row.last_error == ""
    assert row.next_attempt_at is None
    first, second = bot.requests
    # A retry is the same message: same webhook-id and body, a fresh signature.
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    # Sent is final.
    assert dispatch_due(clock=later(10_000)).items == []
    assert len(bot.requests) == 2


def test_backoff_doubles_from_30_seconds_and_is_capped_at_4_hours():
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert retry_delay(10).total_seconds() == 4 * 3600
    assert retry_delay(500).total_seconds() == 4 * 3600


def test_a_row_gives_up_after_max_attempts(bot_down, settings):
    settings.NOTIFICATIONS_MAX_ATTEMPTS = 3
    [row] = enqueue()
    outcomes = []
    for seconds in (0, 31, 92):
        outcomes += [item.outcome for item in dispatch_due(clock=later(seconds)).items]
    assert outcomes == ["failed", "failed", "dead"]
    row.refresh_from_db()
    assert row.status == S.DEAD
    assert row.attempts == 3
    assert row.next_attempt_at is None
    assert "refused" in row.last_error.lower()
    assert dispatch_due(clock=later(10 * 24 * 3600)).items == []


def test_the_webhook_verifies_per_standard_webhooks(bot):
    escrow = paid_escrow()
    dispatch_due()
    assert len(bot.requests) == 2
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    for request in bot.requests:
        msg_id = request.headers["webhook-id"]
        timestamp = request.headers["webhook-timestamp"]
        assert abs(int(timestamp) - time.time()) < 10
        # Computed here from the spec, independently of notifications.signing.
        expected = base64.b64encode(
            hmac.new(key, f"{msg_id}.{timestamp}.".encode() + request.body, hashlib.sha256).digest()
        ).decode()
        assert request.headers["webhook-signature"] == f"v1,{expected}"
        assert signing.verify(
            secret=SECRET, headers=request.headers, body=request.body, now=int(time.time())
        )
        # One flipped byte and it no longer verifies.
        tampered = request.body.replace(b"ES101325WZY2", b"ES101325WZY3")
        assert not signing.verify(
            secret=SECRET, headers=request.headers, body=tampered, now=int(time.time())
        )
        assert request.headers["content-type"] == "application/json"
    assert len(set(bot.ids())) == 2  # one id per message
    bodies = {json.loads(r.body)["type"]: json.loads(r.body) for r in bot.requests}
    offer = bodies["offer_to_seller"]
    assert offer["data"]["escrow_id"] == escrow.escrow_id
    assert offer["data"]["recipient"] == escrow.seller_id
    assert offer["data"]["amount"] == "92.13"
    assert bodies["payment_confirmed"]["data"]["recipient"] == 5590563715


def test_signatures_match_the_published_standard_webhooks_vector():
    vector = dict(msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330)
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing.sign(secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", body=body, **vector) == (
        expected
    )
    # The prefix is optional, as in the reference libraries.
    assert signing.sign(secret="MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", body=body, **vector) == expected


def test_a_secret_that_is_not_base64_sends_nothing(bot, settings):
    [row] = enqueue()
    settings.NOTIFICATIONS_BOT_WEBHOOK_SECRET = "not base64!"
    report = dispatch_due()
    row.refresh_from_db()
    assert bot.requests == []
    assert row.status == S.PENDING and row.attempts == 0
    assert "whsec_" in row.last_error
    assert report.waiting_count == 1


def test_email_goes_through_django_email_backend(email):
    escrow = paid_escrow()
    rows = Notification.objects.filter(escrow=escrow)
    assert {r.channel for r in rows} == {Channel.EMAIL}
    report = dispatch_due()
    assert [item.outcome for item in report.items] == ["sent", "sent"]
    assert sorted(m.subject for m in mail.outbox) == [
        "[Escrow ES101325WZY2] Offer to seller",
        "[Escrow ES101325WZY2] Payment confirmed",
    ]
    message = next(m for m in mail.outbox if "Payment confirmed" in m.subject)
    assert message.to == ["ops@example.com"]
    assert "Recipient: 5590563715 (buyer)" in message.body
    assert "Paid: 101.00" in message.body
    assert all(r.status == S.SENT for r in rows.all())


def test_an_unreachable_mail_server_is_a_failed_delivery(email, settings):
    from notifications.tests.receiver import unused_port

    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = unused_port()
    [row] = enqueue()
    dispatch_due()
    row.refresh_from_db()
    assert row.status == S.FAILED
    assert "email failed" in row.last_error and "refused" in row.last_error.lower()


def test_an_unexpected_error_fails_that_row_and_the_run_goes_on(bot, email, settings):
    rows = enqueue()
    assert {r.channel for r in rows} == {Channel.BOT_WEBHOOK, Channel.EMAIL}
    settings.EMAIL_BACKEND = "notifications.tests.broken_backend.EmailBackend"
    report = dispatch_due()
    assert sorted(item.outcome for item in report.items) == ["failed", "sent"]
    email_row = Notification.objects.get(channel=Channel.EMAIL)
    assert email_row.status == S.FAILED
    assert "unexpected RuntimeError" in email_row.last_error
    assert Notification.objects.get(channel=Channel.BOT_WEBHOOK).status == S.SENT


def test_an_unconfigured_channel_leaves_rows_pending_until_it_is_configured(
    bot, settings, receiver
):
    [row] = enqueue()
    settings.NOTIFICATIONS_BOT_WEBHOOK_URL = ""
    report = dispatch_due()
    row.refresh_from_db()
    assert report.items == []
    assert report.waiting == {
        "bot_webhook": (1, "not sent: NOTIFICATIONS_BOT_WEBHOOK_URL is not set")
    }
    assert row.status == S.PENDING
    assert row.attempts == 0
    assert "NOTIFICATIONS_BOT_WEBHOOK_URL" in row.last_error

    settings.NOTIFICATIONS_BOT_WEBHOOK_URL = receiver.url
    assert [item.outcome for item in dispatch_due().items] == ["sent"]
    assert len(receiver.requests) == 1


def test_limit_caps_the_deliveries_of_one_run(bot):
    for _ in range(5):
        enqueue()
    assert len(dispatch_due(limit=3, batch_size=2).items) == 3
    assert Notification.objects.filter(status=S.SENT).count() == 3
    assert len(dispatch_due().items) == 2


def test_dispatch_refuses_to_run_inside_a_transaction(bot):
    # Sending inside someone's transaction is how an HTTP call ends up inside a money
    # transaction; durable=True makes that an error instead.
    from django.db import transaction

    enqueue()
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        dispatch_due()
    assert bot.requests == []

"""Fixtures for outbox tests: a real receiver for the bot webhook, settings to point at it."""

import pytest

from notifications.dispatch import wait_for_after_commit_dispatch
from notifications.tests.receiver import Receiver, unused_port

# A Standard Webhooks secret: whsec_ + base64 of 24 random bytes.
SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    wait_for_after_commit_dispatch(timeout=15)
    server.stop()


@pytest.fixture
def bot(settings, receiver):
    """The bot webhook channel configured to our receiver (email off)."""
    settings.NOTIFICATIONS_BOT_WEBHOOK_URL = receiver.url
    settings.NOTIFICATIONS_BOT_WEBHOOK_SECRET = SECRET
    return receiver


@pytest.fixture
def bot_down(settings):
    """The bot webhook channel configured to a port where nothing listens."""
    settings.NOTIFICATIONS_BOT_WEBHOOK_URL = f"http://127.0.0.1:{unused_port()}/bot/webhook"
    settings.NOTIFICATIONS_BOT_WEBHOOK_SECRET = SECRET


@pytest.fixture
def email(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.NOTIFICATIONS_EMAIL_TO = ["ops@example.com"]


@pytest.fixture(autouse=True)
def _after_commit_worker_idle():
    """No background pass may outlive its test (it would race the next test's flush)."""
    yield
    assert wait_for_after_commit_dispatch(timeout=15), "after-commit worker still busy"

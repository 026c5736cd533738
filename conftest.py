"""Suite-wide pytest set-up: settings every test relies on."""

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


@pytest.fixture(autouse=True)
def _test_settings(settings):
    # Real password hashing costs seconds per login in tests; its strength is not under test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DYNOPAY_WEBHOOK_SECRET = ["test-webhook-secret"]
    settings.NOTIFICATIONS_BOT_WEBHOOK_URL = ""
    settings.NOTIFICATIONS_EMAIL_TO = []
    settings.ESCROW_FEE_PERCENT = 5
    settings.ESCROW_MIN_FEE = "1.00"
    settings.PAYMENT_TOLERANCE_USD = "1.00"
    settings.PAYMENT_TOLERANCE_PERCENT = "1"

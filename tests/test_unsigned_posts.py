"""No route applies a payment it cannot authenticate: an unsigned (or wrongly signed) POST
of a valid-looking payment to every URL outside the admin changes nothing."""

from collections.abc import Iterable, Iterator

import pytest
from django.urls import URLResolver, get_resolver

from escrow.tests.helpers import db_state
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.signing import SIGNATURE_HEADER
from payments.tests.test_webhook import incident_escrow
from payments.tests.webhooks import INCIDENT_TX, URL, encode, payload


def routes(patterns: Iterable, prefix: str = "/") -> Iterator[str]:
    """Every URL pattern, recursively, except the admin's (staff log in there; its forms
    are CSRF- and permission-checked by Django and covered by the admin tests)."""
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if entry.app_name != "admin":
                yield from routes(entry.url_patterns, route)
        else:
            yield route


ROUTES = sorted(routes(get_resolver().url_patterns))


def test_every_route_is_a_plain_path_and_the_webhook_is_among_them():
    # A route with parameters needs a concrete URL added here before it can be posted to.
    assert [r for r in ROUTES if any(c in r for c in "<>^$()[]")] == []
    assert URL in ROUTES


@pytest.mark.django_db
@pytest.mark.parametrize("signature", [None, "0" * 64], ids=["unsigned", "wrong-signature"])
@pytest.mark.parametrize("url", ROUTES)
def test_a_post_without_a_valid_signature_applies_nothing_anywhere(client, url, signature):
    incident_escrow()
    before = db_state()
    headers = {SIGNATURE_HEADER: signature} if signature else {}

    response = client.post(
        url,
        data=encode(payload(tx_id=INCIDENT_TX)),
        content_type="application/json",
        headers=headers,
    )

    assert not 200 <= response.status_code < 300, (url, response.status_code)
    assert db_state() == before
    assert not PaymentEvent.objects.exists()
    assert not WebhookReceipt.objects.exclude(outcome=Outcome.UNAUTHENTICATED).exists()

"""DynoPayClient against the real sandbox over loopback HTTP."""

# Fixtures are imported into the module; their names are then test parameters.
# ruff: noqa: F811

import json
import socket
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from payments.client import DynoPayClient, ProviderError, ProviderPayment
from payments.parsing import parse_notification
from payments.sandbox import DynoPaySandbox
from payments.tests.sandbox_fixtures import (  # noqa: F401
    SANDBOX_API_KEY,
    dynopay_sandbox,
    webhook_receiver,
)


def test_create_payment_returns_address_and_expected_coin_amount(dynopay_sandbox):
    created = DynoPayClient().create_payment("ES101325WZY2", Decimal("96.74"), "ltc")

    assert created.payment_id.startswith("pay_")
    assert created.ref_id == "ES101325WZY2"
    assert created.coin == "LTC"
    assert created.address.startswith("ltc1q")
    assert created.amount_usd == Decimal("96.74")
    # 96.74 USD at the sandbox's 109.94 USD/LTC, to 8 places.
    assert created.crypto_amount == Decimal("0.87993451")
    assert created.status == "pending"
    assert created.created_at.tzinfo is not None


def test_create_payment_is_idempotent_per_escrow_coin_and_amount(dynopay_sandbox):
    client = DynoPayClient()
    first = client.create_payment("ES1", Decimal("10.00"), "BTC")
    again = client.create_payment("ES1", Decimal("10.00"), "BTC")
    other_coin = client.create_payment("ES1", Decimal("10.00"), "ETH")

    assert again.payment_id == first.payment_id
    assert again.address == first.address
    assert other_coin.payment_id != first.payment_id
    assert len(dynopay_sandbox.payments) == 2


def test_create_payment_refuses_float_amounts(dynopay_sandbox):
    with pytest.raises(TypeError):
        DynoPayClient().create_payment("ES1", 10.0, "BTC")  # type: ignore[arg-type]
    assert dynopay_sandbox.payments == []


def test_unsupported_coin_is_a_provider_error_with_the_status(dynopay_sandbox):
    with pytest.raises(ProviderError) as caught:
        DynoPayClient().create_payment("ES1", Decimal("10.00"), "XMR")
    assert caught.value.status_code == 400
    assert "unsupported coin" in caught.value.message
    assert not caught.value.retryable


def test_get_payment_reflects_a_confirmation(dynopay_sandbox):
    client = DynoPayClient()
    created = client.create_payment("ES101325WZY2", Decimal("96.74"), "LTC")
    dynopay_sandbox.mark_payment(
        created.payment_id,
        status="confirmed",
        base_amount=Decimal("101.00"),
        paid_amount=Decimal("0.9187"),
        tx_id="6462e85a-12da-403c-8eeb-e1697b9bbbe7",
        deliver=False,
    )

    payment = client.get_payment(created.payment_id)

    assert payment.status == "confirmed"
    assert payment.tx_id == "6462e85a-12da-403c-8eeb-e1697b9bbbe7"
    assert payment.base_amount == Decimal("101.00")
    assert payment.paid_amount == Decimal("0.9187")
    assert payment.paid_currency == "LTC"
    assert payment.ref_id == "ES101325WZY2"
    assert payment.amount_usd == Decimal("96.74")


def test_a_fetched_payment_renders_as_a_webhook_body_our_parser_accepts(dynopay_sandbox):
    client = DynoPayClient()
    created = client.create_payment("ES101325WZY2", Decimal("96.74"), "LTC")
    dynopay_sandbox.mark_payment(
        created.payment_id,
        status="confirmed",
        base_amount=Decimal("101.00"),
        paid_amount=Decimal("0.9187"),
        tx_id="6462e85a-12da-403c-8eeb-e1697b9bbbe7",
        deliver=False,
    )
    body = client.get_payment(created.payment_id).to_webhook_body()

    assert body["base_amount"] == "101.00"  # a decimal string, never a float
    notification = parse_notification(json.dumps(body).encode())
    assert notification.event == "payment.confirmed"
    assert notification.payment_id == created.payment_id
    assert notification.tx_id == "6462e85a-12da-403c-8eeb-e1697b9bbbe7"
    assert notification.base_amount == Decimal("101.00")
    assert notification.paid_amount == Decimal("0.9187")
    assert notification.paid_currency == "LTC"
    assert notification.escrow_ref == "ES101325WZY2"


def test_reconciled_body_hashes_like_the_webhook_the_sandbox_sent(
    dynopay_sandbox, webhook_receiver
):
    # Reconciliation relies on this: an API read and the webhook of the same state must be
    # recognised as the same event, not a conflict.
    dynopay_sandbox.webhook_url = webhook_receiver.url
    client = DynoPayClient()
    created = client.create_payment("ES2", Decimal("50.00"), "ETH")
    dynopay_sandbox.mark_payment(created.payment_id, status="confirmed")

    sent = parse_notification(webhook_receiver.requests[0].body)
    fetched = client.get_payment(created.payment_id).to_webhook_body()

    assert parse_notification(json.dumps(fetched).encode()).payload_hash == sent.payload_hash


def test_get_unknown_payment_is_a_404_provider_error(dynopay_sandbox):
    with pytest.raises(ProviderError) as caught:
        DynoPayClient().get_payment("pay_missing")
    assert caught.value.status_code == 404
    assert caught.value.extra["status_code"] == 404


def test_list_payments_filters_by_escrow_status_and_since(dynopay_sandbox):
    client = DynoPayClient()
    a = client.create_payment("ES-A", Decimal("10.00"), "LTC")
    b = client.create_payment("ES-B", Decimal("20.00"), "LTC")
    c = client.create_payment("ES-A", Decimal("30.00"), "BTC")
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    dynopay_sandbox.mark_payment(c.payment_id, status="confirmed", deliver=False)

    assert [p.id for p in client.list_payments()] == [a.payment_id, b.payment_id, c.payment_id]
    assert [p.id for p in client.list_payments(ref_id="ES-A")] == [a.payment_id, c.payment_id]
    assert [p.id for p in client.list_payments(status="confirmed")] == [c.payment_id]
    assert [p.id for p in client.list_payments(since=cutoff)] == [c.payment_id]
    assert client.list_payments(ref_id="ES-A", status="failed") == []
    assert all(isinstance(p, ProviderPayment) for p in client.list_payments())


def test_list_payments_refuses_a_naive_since(dynopay_sandbox):
    with pytest.raises(ValueError):
        DynoPayClient().list_payments(since=datetime.now() - timedelta(hours=1))


def test_wrong_api_key_is_a_401_provider_error(dynopay_sandbox):
    client = DynoPayClient(api_key="not-the-key")
    with pytest.raises(ProviderError) as caught:
        client.create_payment("ES1", Decimal("10.00"), "BTC")
    assert caught.value.status_code == 401
    assert dynopay_sandbox.payments == []


def test_missing_api_key_is_a_401_provider_error(dynopay_sandbox):
    with pytest.raises(ProviderError) as caught:
        DynoPayClient(api_key="").list_payments()
    assert caught.value.status_code == 401


def test_slow_provider_is_a_timeout_provider_error(dynopay_sandbox):
    dynopay_sandbox.add_fault(delay_seconds=2.0)
    client = DynoPayClient(timeout=0.2)

    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        client.list_payments()

    assert time.monotonic() - started < 1.5
    assert caught.value.status_code is None
    assert caught.value.retryable
    assert "no answer within 0.2s" in caught.value.message


def test_provider_outage_is_a_retryable_provider_error(dynopay_sandbox):
    dynopay_sandbox.add_fault(status=503)
    client = DynoPayClient()
    with pytest.raises(ProviderError) as caught:
        client.list_payments()
    assert caught.value.status_code == 503
    assert caught.value.retryable
    # The fault was for one request only.
    assert client.list_payments() == []


def test_non_json_answer_is_a_provider_error(dynopay_sandbox):
    dynopay_sandbox.add_fault(status=200, body="<html>maintenance</html>")
    with pytest.raises(ProviderError) as caught:
        DynoPayClient().get_payment("pay_x")
    assert caught.value.status_code == 200
    assert "not JSON" in caught.value.message
    assert "maintenance" in caught.value.extra["body"]


def test_connection_refused_is_a_provider_error(settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now.
    client = DynoPayClient(base_url=f"http://127.0.0.1:{port}", api_key="k", timeout=2)
    with pytest.raises(ProviderError) as caught:
        client.list_payments()
    assert caught.value.status_code is None
    assert caught.value.retryable


def test_client_defaults_come_from_settings(settings):
    settings.DYNOPAY_API_BASE_URL = "http://127.0.0.1:9/"
    settings.DYNOPAY_API_KEY = "from-settings"
    settings.DYNOPAY_TIMEOUT_SECONDS = 3.5
    client = DynoPayClient()
    assert (client.base_url, client.api_key, client.timeout) == (
        "http://127.0.0.1:9",
        "from-settings",
        3.5,
    )


def test_sandbox_api_speaks_the_documented_field_names():
    # Raw HTTP, not the client: the wire format must not drift with the shared dataclass.
    with DynoPaySandbox(api_key="k") as sandbox:
        request = urllib.request.Request(
            sandbox.url + "/v1/payments",
            method="POST",
            data=b'{"ref_id": "ES9", "amount": "12.50", "currency": "USD", "coin": "USDT"}',
            headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
            data = json.loads(response.read())
    assert data["status"] == "pending"
    assert data["meta_data"] == {"refId": "ES9"}
    assert data["amount"] == "12.50"
    assert data["crypto_amount"] == "12.50000000"
    assert data["address"].startswith("0x")
    assert set(data) >= {
        "id",
        "txId",
        "paid_amount",
        "paid_currency",
        "base_amount",
        "base_currency",
        "created_at",
        "updated_at",
        "coin",
    }
    assert data["created_at"].endswith("Z")

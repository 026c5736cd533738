"""The sandbox's signed webhooks, retries and control API, over real loopback HTTP."""

# Fixtures are imported into the module; their names are then test parameters.
# ruff: noqa: F811

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from payments.client import DynoPayClient, ProviderError
from payments.parsing import parse_notification
from payments.sandbox import DynoPaySandbox, RetryPolicy
from payments.signing import SIGNATURE_HEADER, verify
from payments.tests.sandbox_fixtures import (  # noqa: F401
    SANDBOX_API_KEY,
    TEST_RETRY,
    dynopay_sandbox,
    webhook_receiver,
)

INCIDENT_TX = "6462e85a-12da-403c-8eeb-e1697b9bbbe7"


def control(
    sandbox: DynoPaySandbox, method: str, path: str, body: Any = None, key: str = SANDBOX_API_KEY
) -> tuple[int, dict[str, Any]]:
    """Call the sandbox over HTTP the way a developer's curl would."""
    request = urllib.request.Request(
        sandbox.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def new_payment(amount: str = "96.74", coin: str = "LTC", escrow: str = "ES101325WZY2") -> str:
    return DynoPayClient().create_payment(escrow, Decimal(amount), coin).payment_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the webhook a confirmation sends -----------------------------------------------------


def test_confirmation_posts_a_signed_webhook_our_parser_accepts(dynopay_sandbox, webhook_receiver):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    payment_id = new_payment()

    status, answer = control(
        dynopay_sandbox,
        "POST",
        f"/sandbox/payments/{payment_id}/events",
        {
            "status": "confirmed",
            "base_amount": "101.00",
            "paid_amount": "0.9187",
            "coin": "LTC",
            "txId": INCIDENT_TX,
        },
    )

    assert status == 200
    assert answer["webhook"]["delivered"] is True
    assert answer["payment"]["status"] == "confirmed"
    [received] = webhook_receiver.requests
    assert received.path == "/webhooks/dynopay/"
    assert verify(received.body, received.headers[SIGNATURE_HEADER], ["test-webhook-secret"])
    assert not verify(received.body, received.headers[SIGNATURE_HEADER], ["another-secret"])
    body = received.json()
    assert body == {
        "event": "payment.confirmed",
        "id": payment_id,
        "status": "confirmed",
        "txId": INCIDENT_TX,
        "paid_amount": "0.9187",
        "paid_currency": "LTC",
        "base_amount": "101.00",
        "base_currency": "USD",
        "meta_data": {"refId": "ES101325WZY2"},
        "created_at": body["created_at"],
    }
    notification = parse_notification(received.body)
    assert notification.base_amount == Decimal("101.00")
    assert notification.created_at is not None
    # The recorded delivery is exactly what went over the wire.
    assert answer["webhook"]["body"].encode() == received.body
    assert answer["webhook"]["signature"] == received.headers[SIGNATURE_HEADER]


def test_defaults_pay_the_amount_asked_at_the_sandbox_rate(dynopay_sandbox, webhook_receiver):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    payment_id = new_payment("109.94", "LTC")

    dynopay_sandbox.mark_payment(payment_id, status="confirmed")

    body = webhook_receiver.requests[0].json()
    assert (body["base_amount"], body["paid_amount"], body["paid_currency"]) == (
        "109.94",
        "1.00000000",
        "LTC",
    )
    assert len(body["txId"]) == 36  # a fresh uuid4


def test_pending_then_confirmed_keeps_the_transaction_and_amounts(
    dynopay_sandbox, webhook_receiver
):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    payment_id = new_payment()

    dynopay_sandbox.mark_payment(
        payment_id,
        status="pending",
        tx_id="tx-1",
        base_amount=Decimal("101.00"),
        paid_amount=Decimal("0.9187"),
    )
    dynopay_sandbox.mark_payment(payment_id, status="confirmed")

    events = [
        (body["event"], body["txId"], body["base_amount"], body["paid_amount"])
        for body in (r.json() for r in webhook_receiver.requests)
    ]
    assert events == [
        ("payment.pending", "tx-1", "101.00", "0.9187"),
        ("payment.confirmed", "tx-1", "101.00", "0.9187"),
    ]


def test_failed_event_is_sent_and_parsed(dynopay_sandbox, webhook_receiver):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    payment_id = new_payment()

    dynopay_sandbox.mark_payment(payment_id, status="failed")

    notification = parse_notification(webhook_receiver.requests[0].body)
    assert notification.event == "payment.failed"
    assert notification.tx_id == payment_id  # no chain transaction: keyed by payment id
    assert DynoPayClient().get_payment(payment_id).status == "failed"


def test_resend_posts_the_same_bytes_again(dynopay_sandbox, webhook_receiver):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    payment_id = new_payment()
    dynopay_sandbox.mark_payment(payment_id, status="confirmed")

    status, answer = control(dynopay_sandbox, "POST", f"/sandbox/payments/{payment_id}/resend")

    assert status == 200
    first, second = webhook_receiver.requests
    assert first.body == second.body
    assert first.headers[SIGNATURE_HEADER] == second.headers[SIGNATURE_HEADER]
    assert answer["webhook"]["id"] == 2


def test_deliver_false_changes_the_provider_state_without_a_webhook(
    dynopay_sandbox, webhook_receiver
):
    # The "lost webhook" that reconciliation exists for.
    dynopay_sandbox.webhook_url = webhook_receiver.url
    payment_id = new_payment()

    status, answer = control(
        dynopay_sandbox,
        "POST",
        f"/sandbox/payments/{payment_id}/events",
        {"status": "confirmed", "deliver": False},
    )

    assert (status, answer["webhook"]) == (200, None)
    assert webhook_receiver.requests == []
    assert DynoPayClient().get_payment(payment_id).status == "confirmed"


def test_delivering_without_a_webhook_url_is_refused_and_changes_nothing(dynopay_sandbox):
    payment_id = new_payment()

    status, answer = control(
        dynopay_sandbox, "POST", f"/sandbox/payments/{payment_id}/events", {"status": "confirmed"}
    )

    assert status == 409
    assert "webhook URL" in answer["error"]
    assert DynoPayClient().get_payment(payment_id).status == "pending"


# --- retries -----------------------------------------------------------------------------


def test_retries_on_500_and_stops_at_the_first_200(dynopay_sandbox, webhook_receiver):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    webhook_receiver.statuses = [500, 502, 200, 500]
    payment_id = new_payment()

    _, delivery = dynopay_sandbox.mark_payment(payment_id, status="confirmed")

    assert delivery is not None and delivery.delivered
    assert [a.status_code for a in delivery.attempts] == [500, 502, 200]
    assert len(webhook_receiver.requests) == 3
    assert len({r.body for r in webhook_receiver.requests}) == 1
    # What the receiver answered is recorded per attempt, for inspection.
    assert json.loads(delivery.attempts[0].body)["status"] == 500
    status, listed = control(dynopay_sandbox, "GET", "/sandbox/deliveries")
    assert status == 200
    [recorded] = listed["deliveries"]
    assert [a["status_code"] for a in recorded["attempts"]] == [500, 502, 200]
    assert recorded["delivered"] is True


@pytest.mark.parametrize("refusal", [400, 401, 409, 413])
def test_a_4xx_is_never_retried(dynopay_sandbox, webhook_receiver, refusal):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    webhook_receiver.statuses = [refusal, 200]

    _, delivery = dynopay_sandbox.mark_payment(new_payment(), status="confirmed")

    assert delivery is not None and not delivery.delivered
    assert [a.status_code for a in delivery.attempts] == [refusal]
    assert len(webhook_receiver.requests) == 1


def test_attempts_are_bounded_when_the_endpoint_keeps_failing(dynopay_sandbox, webhook_receiver):
    dynopay_sandbox.webhook_url = webhook_receiver.url
    webhook_receiver.statuses = [500]

    _, delivery = dynopay_sandbox.mark_payment(new_payment(), status="confirmed")

    assert delivery is not None and not delivery.delivered
    assert len(delivery.attempts) == TEST_RETRY.max_attempts
    assert len(webhook_receiver.requests) == TEST_RETRY.max_attempts


def test_connection_errors_are_retried_and_recorded(dynopay_sandbox):
    dynopay_sandbox.webhook_url = f"http://127.0.0.1:{free_port()}/webhooks/dynopay/"

    _, delivery = dynopay_sandbox.mark_payment(new_payment(), status="confirmed")

    assert delivery is not None and not delivery.delivered
    assert len(delivery.attempts) == TEST_RETRY.max_attempts
    assert all(a.status_code is None for a in delivery.attempts)
    assert "ConnectionRefused" in delivery.attempts[0].error


def test_backoff_grows_exponentially_and_is_capped():
    policy = RetryPolicy(max_attempts=6, initial_delay=1.0, max_delay=5.0)
    assert [policy.delay_before(n) for n in range(1, 7)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_retries_actually_wait_between_attempts(webhook_receiver):
    webhook_receiver.statuses = [500]
    retry = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=1.0)
    with DynoPaySandbox(
        api_key="k", webhook_url=webhook_receiver.url, webhook_secret="s", retry=retry
    ) as sandbox:
        payment, _ = sandbox.create_payment(ref_id="ES1", amount=Decimal("5.00"), coin="BTC")
        _, delivery = sandbox.mark_payment(payment.id, status="confirmed")

    assert delivery is not None
    first, second, third = (a.at for a in delivery.attempts)
    assert (second - first).total_seconds() >= 0.1
    assert (third - second).total_seconds() >= 0.2


def test_stop_cuts_a_pending_backoff_short(webhook_receiver):
    webhook_receiver.statuses = [500]
    sandbox = DynoPaySandbox(
        api_key="k",
        webhook_url=webhook_receiver.url,
        webhook_secret="s",
        retry=RetryPolicy(max_attempts=5, initial_delay=30.0),
    )
    sandbox.start()
    payment, _ = sandbox.create_payment(ref_id="ES1", amount=Decimal("5.00"), coin="BTC")
    sender = threading.Thread(
        target=sandbox.mark_payment, args=(payment.id,), kwargs={"status": "confirmed"}
    )
    sender.start()
    deadline = time.monotonic() + 5
    while not webhook_receiver.requests and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    sandbox.stop()
    sender.join(timeout=5)

    assert not sender.is_alive()
    assert time.monotonic() - started < 2
    assert len(sandbox.deliveries[0].attempts) == 1


# --- control API and lifecycle --------------------------------------------------------------


def test_control_endpoints_need_the_api_key(dynopay_sandbox):
    status, answer = control(dynopay_sandbox, "GET", "/sandbox/deliveries", key="wrong")
    assert status == 401
    assert answer["error"] == "missing or invalid API key"
    status, _ = control(dynopay_sandbox, "GET", "/health", key="wrong")
    assert status == 200


def test_faults_via_http_fail_the_next_api_calls_only(dynopay_sandbox):
    status, answer = control(
        dynopay_sandbox, "POST", "/sandbox/faults", {"status": 502, "count": 2}
    )
    assert (status, answer) == (200, {"faults": 2})

    assert control(dynopay_sandbox, "GET", "/v1/payments")[0] == 502
    assert control(dynopay_sandbox, "GET", "/v1/payments")[0] == 502
    assert control(dynopay_sandbox, "GET", "/v1/payments") == (200, {"payments": []})


def test_reusing_an_idempotency_key_for_another_request_is_a_conflict(dynopay_sandbox):
    client = DynoPayClient()
    client.create_payment("ES1", Decimal("10.00"), "BTC", idempotency_key="k1")
    with pytest.raises(ProviderError) as caught:
        client.create_payment("ES1", Decimal("11.00"), "BTC", idempotency_key="k1")
    assert caught.value.status_code == 409
    assert len(dynopay_sandbox.payments) == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ({"status": "paid"}, "status must be one of"),
        ({"status": "confirmed", "base_amount": "1,5"}, "not a decimal"),
        ({"status": "confirmed", "base_amount": True}, "not an exact decimal"),
        ({"status": "confirmed", "base_amount": "-1"}, "must be positive"),
        ({"status": "confirmed", "deliver": "yes"}, "true or false"),
    ],
)
def test_bad_control_requests_are_400_and_change_nothing(dynopay_sandbox, body, message):
    payment_id = new_payment()
    status, answer = control(
        dynopay_sandbox, "POST", f"/sandbox/payments/{payment_id}/events", body
    )
    assert status == 400
    assert message in answer["error"]
    assert DynoPayClient().get_payment(payment_id).status == "pending"


def test_reset_forgets_everything(dynopay_sandbox):
    new_payment()
    assert control(dynopay_sandbox, "POST", "/sandbox/reset") == (200, {"ok": True})
    assert DynoPayClient().list_payments() == []


def test_stop_releases_the_port():
    sandbox = DynoPaySandbox(api_key="k")
    url = sandbox.start()
    port = int(url.rsplit(":", 1)[1])
    sandbox.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    again = DynoPaySandbox(api_key="k", port=port)
    assert again.start() == url
    again.stop()


def test_fixture_points_the_client_settings_at_the_sandbox(dynopay_sandbox):
    assert dynopay_sandbox.url == django_settings.DYNOPAY_API_BASE_URL
    assert django_settings.DYNOPAY_API_KEY == SANDBOX_API_KEY


def test_payments_sandbox_command_serves_until_interrupted(webhook_receiver):
    project = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SECRET_KEY": os.environ.get("SECRET_KEY", "x"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "payments_sandbox",
            "--port",
            "0",
            "--api-key",
            "cli-key",
            "--secret",
            "cli-secret",
            "--webhook-url",
            webhook_receiver.url,
            "--retry-delay",
            "0.01",
        ],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        assert first_line.startswith("DynoPay sandbox on http://127.0.0.1:"), first_line
        url = first_line.split()[3]
        client = DynoPayClient(base_url=url, api_key="cli-key", timeout=5)
        created = client.create_payment("ES101325WZY2", Decimal("96.74"), "LTC")
        request = urllib.request.Request(
            f"{url}/sandbox/payments/{created.payment_id}/events",
            method="POST",
            data=b'{"status": "confirmed", "base_amount": "101.00"}',
            headers={"Authorization": "Bearer cli-key"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["webhook"]["delivered"] is True
        [received] = webhook_receiver.requests
        assert verify(received.body, received.headers[SIGNATURE_HEADER], ["cli-secret"])
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "Stopping." in out


def test_payments_sandbox_command_refuses_to_run_without_a_key():
    project = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SECRET_KEY": "x", "DYNOPAY_API_KEY": ""}
    result = subprocess.run(
        [sys.executable, "manage.py", "payments_sandbox", "--port", "0", "--secret", "s"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "No API key" in result.stderr

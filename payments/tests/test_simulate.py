"""payments_simulate posts a DynoPay-identical signed webhook and reports what came back."""

# Fixtures are imported into the module; their names are then test parameters.
# ruff: noqa: F811

import io
import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from payments.parsing import parse_notification
from payments.signing import SIGNATURE_HEADER, verify
from payments.tests.sandbox_fixtures import webhook_receiver  # noqa: F401

PROJECT = Path(__file__).resolve().parents[2]
INCIDENT = [
    "--escrow",
    "ES101325WZY2",
    "--paid-usd",
    "101.00",
    "--coin",
    "LTC",
    "--paid-amount",
    "0.9187",
    "--tx-id",
    "6462e85a-12da-403c-8eeb-e1697b9bbbe7",
]


def simulate(*args: str) -> str:
    out = io.StringIO()
    call_command("payments_simulate", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_incident_replay_posts_the_exact_dynopay_body(webhook_receiver):
    output = simulate(*INCIDENT, "--url", webhook_receiver.url)

    [received] = webhook_receiver.requests
    body = received.json()
    assert body == {
        "event": "payment.confirmed",
        "id": body["id"],
        "status": "confirmed",
        "txId": "6462e85a-12da-403c-8eeb-e1697b9bbbe7",
        "paid_amount": "0.9187",
        "paid_currency": "LTC",
        "base_amount": "101.00",
        "base_currency": "USD",
        "meta_data": {"refId": "ES101325WZY2"},
        "created_at": body["created_at"],
    }
    created_at = datetime.fromisoformat(body["created_at"])
    assert body["created_at"].endswith("Z")
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=1)
    # Amounts went over the wire as strings, exactly as typed.
    assert b'"base_amount":"101.00"' in received.body
    notification = parse_notification(received.body)
    assert notification.base_amount == Decimal("101.00")
    assert notification.escrow_ref == "ES101325WZY2"
    assert output.splitlines()[0] == "HTTP 200"
    assert '"outcome": "applied"' in output


def test_signed_with_the_first_configured_secret(settings, webhook_receiver):
    settings.DYNOPAY_WEBHOOK_SECRET = ["new-secret", "old-secret"]

    simulate(*INCIDENT, "--url", webhook_receiver.url)

    received = webhook_receiver.requests[0]
    signature = received.headers[SIGNATURE_HEADER]
    assert verify(received.body, signature, ["new-secret"])
    assert not verify(received.body, signature, ["old-secret"])


def test_secret_option_overrides_settings(webhook_receiver):
    simulate(*INCIDENT, "--url", webhook_receiver.url, "--secret", "cli-secret")

    received = webhook_receiver.requests[0]
    assert verify(received.body, received.headers[SIGNATURE_HEADER], ["cli-secret"])
    assert not verify(received.body, received.headers[SIGNATURE_HEADER], ["test-webhook-secret"])


def test_defaults_fresh_uuid4_tx_ids_and_the_sandbox_rate(webhook_receiver):
    args = ["--escrow", "ES1", "--paid-usd", "109.94", "--url", webhook_receiver.url]
    simulate(*args)
    simulate(*args)

    first, second = (r.json() for r in webhook_receiver.requests)
    assert uuid.UUID(first["txId"]).version == 4
    assert first["txId"] != second["txId"]
    assert first["id"] != second["id"]
    assert (first["paid_currency"], first["paid_amount"]) == ("LTC", "1.00000000")


def test_event_and_payment_id_options(webhook_receiver):
    simulate(
        *INCIDENT,
        "--event",
        "payment.pending",
        "--payment-id",
        "pay_fixed",
        "--url",
        webhook_receiver.url,
    )

    body = webhook_receiver.requests[0].json()
    assert (body["event"], body["status"], body["id"]) == (
        "payment.pending",
        "pending",
        "pay_fixed",
    )


def test_json_output_reports_request_status_and_response(webhook_receiver):
    output = simulate(*INCIDENT, "--url", webhook_receiver.url, "--json")

    report = json.loads(output)
    assert report["status"] == 200
    assert report["response"] == {"outcome": "applied", "status": 200}
    assert report["request"] == webhook_receiver.requests[0].json()
    assert report["signature"] == webhook_receiver.requests[0].headers[SIGNATURE_HEADER]


@pytest.mark.parametrize("status", [400, 401, 409, 500])
def test_a_non_2xx_answer_fails_the_command_but_shows_the_outcome(webhook_receiver, status):
    webhook_receiver.statuses = [status]
    webhook_receiver.response_body = {"outcome": "conflict"}
    out = io.StringIO()

    with pytest.raises(CommandError) as caught:
        call_command("payments_simulate", *INCIDENT, "--url", webhook_receiver.url, stdout=out)

    assert caught.value.returncode == 1
    assert f"HTTP {status}" in str(caught.value)
    assert f"HTTP {status}" in out.getvalue()
    assert '"outcome": "conflict"' in out.getvalue()
    assert len(webhook_receiver.requests) == 1  # one shot, no retries


def test_an_unreachable_endpoint_fails_with_a_clear_message():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(CommandError) as caught:
        simulate(*INCIDENT, "--url", f"http://127.0.0.1:{port}/webhooks/dynopay/")

    assert caught.value.returncode == 2
    assert "Could not deliver" in str(caught.value)
    assert "Connection" in str(caught.value)


@pytest.mark.parametrize(
    "override, message",
    [
        (["--paid-usd", "abc"], "not a decimal"),
        (["--paid-usd", "0"], "must be positive"),
        (["--paid-amount", "-0.5"], "must be positive"),
        (["--coin", "XMR", "--paid-amount", ""], "not a decimal"),
    ],
)
def test_bad_amounts_are_refused_before_anything_is_sent(webhook_receiver, override, message):
    args = INCIDENT + override + ["--url", webhook_receiver.url]
    with pytest.raises(CommandError, match=message):
        simulate(*args)
    assert webhook_receiver.requests == []


def test_unknown_coin_needs_an_explicit_amount(webhook_receiver):
    with pytest.raises(CommandError, match="give --paid-amount"):
        simulate(
            "--escrow", "ES1", "--paid-usd", "5", "--coin", "XMR", "--url", webhook_receiver.url
        )
    simulate(
        "--escrow",
        "ES1",
        "--paid-usd",
        "5",
        "--coin",
        "xmr",
        "--paid-amount",
        "0.03",
        "--url",
        webhook_receiver.url,
    )
    assert webhook_receiver.requests[0].json()["paid_currency"] == "XMR"


def test_no_secret_anywhere_is_refused(settings, webhook_receiver):
    settings.DYNOPAY_WEBHOOK_SECRET = []
    with pytest.raises(CommandError, match="No signing secret"):
        simulate(*INCIDENT, "--url", webhook_receiver.url)
    assert webhook_receiver.requests == []


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECRET_KEY": os.environ.get("SECRET_KEY", "x")}
    return subprocess.run(
        [sys.executable, "manage.py", "payments_simulate", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_process_exit_codes(webhook_receiver):
    ok = run_process(*INCIDENT, "--url", webhook_receiver.url, "--secret", "s")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("HTTP 200")

    webhook_receiver.statuses = [409]
    rejected = run_process(*INCIDENT, "--url", webhook_receiver.url, "--secret", "s")
    assert rejected.returncode == 1
    assert "HTTP 409" in rejected.stdout
    assert "not accepted" in rejected.stderr

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = run_process(*INCIDENT, "--url", f"http://127.0.0.1:{port}/", "--secret", "s")
    assert unreachable.returncode == 2
    assert "Is the server running" in unreachable.stderr

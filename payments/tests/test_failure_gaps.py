"""Failed deliveries over real HTTP: a 5xx whenever the outcome is not committed, and no
retry cap, so a delivery that failed many times is still reported and still applied."""

import io
import json

import pytest
from django.db import OperationalError
from django.test import Client

from escrow.models import EscrowStatus
from escrow.tests.factories import make_escrow
from escrow.tests.helpers import db_state
from payments import services
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.services import delivery, receipts
from payments.tests.test_fault_injection import BUYER, assert_applied_once
from payments.tests.test_retry_command import failed_receipt
from payments.tests.test_retry_command import run as run_retry
from payments.tests.test_webhook import incident_escrow, wallet
from payments.tests.webhooks import INCIDENT_TX, encode, payload, post
from wallets.tests.factories import break_ledger
from wallets.tests.test_check import assert_flags, run_check


def http_client() -> Client:
    # What the provider sees: an exception becomes the response Django would send, not an
    # exception raised into the test.
    return Client(raise_request_exception=False)


@pytest.mark.django_db
def test_a_delivery_whose_processing_fails_is_a_500_over_http_and_a_retry_applies_it_once(
    monkeypatch,
):
    client = http_client()
    escrow = incident_escrow()
    wallet_before = wallet(BUYER)
    before = db_state()

    with monkeypatch.context() as patch:
        break_ledger(patch)
        response = post(client, payload(tx_id=INCIDENT_TX))

    assert response.status_code == 500, response.content
    assert response.json()["outcome"] == "failed"
    assert db_state() == before, "a partial effect survived the failure"
    assert not PaymentEvent.objects.exists()
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.FAILED and receipt.response_status == 500
    assert "Traceback" in receipt.traceback and "ZeroDivisionError" in receipt.traceback
    assert receipt.attempts == 1
    assert receipt.escrow == escrow  # staff find the failure from the escrow's page

    retried = services.retry_receipt(receipt_id=receipt.pk)
    assert (retried.status, retried.body["outcome"]) == (200, "applied")
    assert_applied_once(escrow.escrow_id, INCIDENT_TX, wallet_before)
    # Retrying again, or the provider's own retry, moves nothing more.
    assert services.retry_receipt(receipt_id=receipt.pk).body["outcome"] == "applied"
    assert post(client, payload(tx_id=INCIDENT_TX)).json()["outcome"] == "duplicate"
    assert_applied_once(escrow.escrow_id, INCIDENT_TX, wallet_before)


def _storing_fails(patch: pytest.MonkeyPatch) -> None:
    def database_gone(receipt: WebhookReceipt) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    patch.setattr(receipts, "_insert_receipt", database_gone)


def _recording_the_failure_fails(patch: pytest.MonkeyPatch) -> None:
    def database_gone(**kwargs: object) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    break_ledger(patch)
    patch.setattr(delivery, "record_failure", database_gone)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "break_database,receipt_left",
    [(_storing_fails, None), (_recording_the_failure_fails, Outcome.RECEIVED)],
    ids=["storing-the-receipt", "recording-the-failure"],
)
def test_a_delivery_the_database_cannot_take_is_answered_5xx_never_2xx(
    monkeypatch, break_database, receipt_left
):
    """No middleware or fallback turns a database error into a success: the provider
    gets a 5xx and delivers again, and that delivery is applied."""
    client = http_client()
    escrow = incident_escrow()
    wallet_before = wallet(BUYER)
    before = db_state()

    with monkeypatch.context() as patch:
        break_database(patch)
        response = post(client, payload(tx_id=INCIDENT_TX))

    assert 500 <= response.status_code < 600, (response.status_code, response.content)
    assert db_state() == before
    # Stored or not; if stored, left for payments_retry and wallets_check to find.
    assert list(WebhookReceipt.objects.values_list("outcome", flat=True)) == (
        [receipt_left] if receipt_left else []
    )

    again = post(client, payload(tx_id=INCIDENT_TX))
    assert (again.status_code, again.json()["outcome"]) == (200, "applied")
    assert_applied_once(escrow.escrow_id, INCIDENT_TX, wallet_before)


@pytest.mark.django_db(transaction=True)
def test_there_is_no_retry_cap_a_delivery_failed_ten_times_is_reported_and_applied(monkeypatch):
    escrow = make_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, "tx-tenth-failure")
    WebhookReceipt.objects.filter(pk=receipt.pk).update(attempts=10)

    assert receipt.pk in services.retryable_receipts().values_list("pk", flat=True)
    code, report = run_check()
    assert code == 1
    found = assert_flags(report, "receipt_failed", receipt.pk)
    assert "failed after 10 attempt(s)" in found["offending"][0]["detail"]

    results = run_retry()["results"]

    assert [(r["receipt"], r["outcome"]) for r in results] == [(receipt.pk, "applied")]
    receipt.refresh_from_db()
    assert (receipt.outcome, receipt.attempts) == (Outcome.APPLIED, 11)
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.holding.account.balance == escrow.total_due


def wsgi_post(body: bytes) -> tuple[str, dict]:
    """POST through Django's production WSGI handler, which (unlike the test client)
    runs the per-request connection upkeep: CONN_MAX_AGE and CONN_HEALTH_CHECKS."""
    from django.core.handlers.wsgi import WSGIHandler

    from payments.signing import SIGNATURE_HEADER, sign
    from payments.tests.webhooks import SECRET, URL

    header = "HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_")
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": URL, "SERVER_NAME": "testserver",
        "SERVER_PORT": "80", "HTTP_HOST": "testserver", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json", "REMOTE_ADDR": "127.0.0.1",
        header: sign(body, SECRET),
    }  # fmt: skip
    started: list[str] = []
    response = WSGIHandler()(environ, lambda status, headers: started.append(status))
    content = b"".join(response)
    response.close()
    try:
        return started[0], json.loads(content)
    except ValueError:  # Django's own error page
        return started[0], {"content": content.decode(errors="replace")[:500]}


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_database_dropped_between_deliveries_is_replaced_not_a_500(
    monkeypatch,
):
    # A worker keeps its connection between requests (CONN_MAX_AGE). When the server
    # drops it (restart, failover, idle timeout), the next delivery must find out before
    # its first statement, the receipt INSERT, and reconnect: not answer 500 with no
    # receipt stored at all.
    import psycopg
    from django.db import connection

    # As in production (the project's PostgreSQL settings), whatever the test run's.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 60)
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", True)
    escrow = incident_escrow()
    second = make_escrow(buyer_id=escrow.buyer_id)
    first = payload(tx_id=INCIDENT_TX)
    assert wsgi_post(encode(first))[1]["outcome"] == "applied"
    assert connection.connection is not None  # kept for the next request

    params = connection.get_connection_params()
    with psycopg.connect(autocommit=True, **params) as admin:
        # Waits (up to 5 s) until the backend is gone.
        pid = connection.connection.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])

    # The first database work since the drop is this request's.
    status, body = wsgi_post(encode(payload(escrow_id=second.escrow_id)))
    assert status.startswith("200"), body
    assert body["outcome"] == "applied"
    second.refresh_from_db()
    assert second.status == EscrowStatus.PAYMENT_CONFIRMED
    assert WebhookReceipt.objects.filter(outcome=Outcome.APPLIED).count() == 2

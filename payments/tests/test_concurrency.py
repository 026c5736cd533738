"""Simultaneous deliveries against PostgreSQL: each event is applied exactly once, and
concurrent payments into one escrow add up with no lost update."""

import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.test import Client

from escrow.models import Escrow, EscrowHolding, EscrowStatus, StatusChange
from escrow.tests.factories import make_escrow
from notifications.models import Notification
from payments import services
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.signing import SIGNATURE_HEADER, sign
from payments.tests.test_webhook import assert_ledger_balanced, wallet
from payments.tests.webhooks import SECRET, URL, encode, payload, post
from wallets import ledger
from wallets.models import AccountKind, Transaction, Transfer, TransferKind
from wallets.tests.factories import break_ledger

WORKER = Path(__file__).with_name("concurrent_worker.py")
THREADS = 24
PROCESSES = 3
THREADS_PER_PROCESS = 8
WALLET_SEED = Decimal("7.35")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_background_dispatch(settings):
    # The outbox rows are what we check; an after-commit sender thread would only add
    # connections and noise to a test about the payment transaction.
    settings.NOTIFICATIONS_DISPATCH_AFTER_COMMIT = False


@pytest.fixture
def webhook_url(live_server) -> str:
    """The endpoint on the real server, with room for every simultaneous connect.

    Django's test server listens with a backlog of 10 (WSGIServer.request_queue_size): two
    dozen simultaneous connects overflow it and the kernel resets one after its SYN retry.
    A production server listens with far more (gunicorn: 2048), so widen the queue and let
    the test measure the application rather than the test server's socket.
    """
    live_server.thread.httpd.socket.listen(128)
    return live_server.url + URL


def funded_escrow() -> Escrow:
    """$92.13 + fee = $96.74 due; the buyer's wallet already holds $7.35."""
    escrow = make_escrow(amount=Decimal("92.13"))
    assert escrow.total_due == Decimal("96.74")
    ledger.post_transfer(
        debit=ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS),
        credit=ledger.customer_wallet(customer=escrow.buyer_id),
        amount=WALLET_SEED,
        kind=TransferKind.STAFF_ADJUSTMENT,
        idempotency_key=f"seed:{escrow.escrow_id}",
    )
    return escrow


def in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together; re-raise the first failure."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a delivery thread hung"
    if errors:
        raise errors[0]
    return results


def client_delivery(body: bytes) -> Callable[[], tuple[int, dict]]:
    def deliver() -> tuple[int, dict]:
        response = post(Client(raise_request_exception=False), body)
        return response.status_code, response.json()

    return deliver


def from_processes(url: str, batches: list[list[bytes]]) -> list[tuple[int, dict]]:
    """POST each batch from its own OS process (one thread per body), all released at once."""
    children = []
    for batch in batches:
        child = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        job = {
            "url": url,
            "deliveries": [{"body": b.decode(), "signature": sign(b, SECRET)} for b in batch],
        }
        child.stdin.write(json.dumps(job) + "\n")
        child.stdin.flush()
        children.append(child)
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            results += [(status, _json(text)) for status, text in json.loads(out)]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return results


def _json(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsed": text}


def assert_all_200(responses: list[tuple[int | None, dict]]) -> None:
    others = [(status, body) for status, body in responses if status != 200]
    assert not others, f"{len(others)} of {len(responses)} deliveries not 200: {others}"


def assert_applied_exactly_once(
    escrow: Escrow, tx_id: str, responses: list[tuple[int, dict]], paid: Decimal
) -> None:
    """One application of a `paid` USD confirmation; every other delivery a duplicate."""
    assert_all_200(responses)
    outcomes = Counter(body["outcome"] for _, body in responses)
    assert outcomes == {"applied": 1, "duplicate": len(responses) - 1}, outcomes
    receipts = WebhookReceipt.objects.filter(tx_id=tx_id)
    assert Counter(receipts.values_list("outcome", flat=True)) == outcomes
    assert PaymentEvent.objects.filter(tx_id=tx_id).count() == 1

    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.deposit_tx_hash == tx_id
    assert (
        StatusChange.objects.filter(escrow=escrow, to_status=EscrowStatus.PAYMENT_CONFIRMED).count()
        == 1
    )
    holding = EscrowHolding.objects.get(escrow=escrow)  # exactly one
    assert holding.account.balance == escrow.total_due
    records = Transaction.objects.filter(escrow=escrow, type="escrow_payment")
    assert list(records.values_list("transaction_id", flat=True)) == [
        f"ESC_{escrow.escrow_id}_{tx_id[:8]}"
    ]
    assert records.get().amount == paid
    excess = paid - escrow.total_due
    assert wallet(escrow.buyer_id) == WALLET_SEED + excess
    assert Transfer.objects.filter(kind=TransferKind.OVERPAYMENT_CREDIT).count() == 1
    assert escrow.notifications.filter(event="offer_to_seller").count() == 1
    assert escrow.notifications.filter(event="payment_confirmed").count() == 1
    assert_ledger_balanced()


def test_simultaneous_deliveries_of_one_event_from_threads_apply_it_once():
    escrow = funded_escrow()
    tx_id = str(uuid.uuid4())
    body = encode(payload(escrow_id=escrow.escrow_id, tx_id=tx_id, base_amount="101.00"))

    responses = in_threads([client_delivery(body) for _ in range(THREADS)])

    assert_applied_exactly_once(escrow, tx_id, responses, Decimal("101.00"))
    assert wallet(escrow.buyer_id) == Decimal("11.61")


def test_simultaneous_handle_delivery_calls_apply_the_event_once():
    """The service directly, without the HTTP layer in between to stagger the threads."""
    escrow = funded_escrow()
    tx_id = str(uuid.uuid4())
    body = encode(payload(escrow_id=escrow.escrow_id, tx_id=tx_id, base_amount="120.00"))
    headers = {SIGNATURE_HEADER: sign(body, SECRET)}

    def deliver() -> tuple[int, dict]:
        response = services.handle_delivery(body=body, headers=headers, remote_ip="127.0.0.1")
        return response.status, response.body

    responses = in_threads([deliver] * THREADS)

    assert_applied_exactly_once(escrow, tx_id, responses, Decimal("120.00"))


def test_simultaneous_deliveries_from_several_processes_apply_the_event_once(webhook_url):
    escrow = funded_escrow()
    tx_id = str(uuid.uuid4())
    body = encode(payload(escrow_id=escrow.escrow_id, tx_id=tx_id, base_amount="101.00"))

    responses = from_processes(
        webhook_url, [[body] * THREADS_PER_PROCESS for _ in range(PROCESSES)]
    )

    assert len(responses) == PROCESSES * THREADS_PER_PROCESS
    assert_applied_exactly_once(escrow, tx_id, responses, Decimal("101.00"))
    assert wallet(escrow.buyer_id) == Decimal("11.61")


@pytest.mark.parametrize(
    "amount,count",
    [
        # 24 x 3.00 = 72.00 stays short of the 96.74 due: every cent must land in the
        # holding, so a lost update of its balance shows as a smaller sum.
        (Decimal("3.00"), PROCESSES * THREADS_PER_PROCESS),
        # 24 x 5.00 = 120.00: partial sums are multiples of 5, so none falls inside the
        # tolerance band [95.74, 96.74); the payment crossing 96.74 confirms the escrow.
        (Decimal("5.00"), PROCESSES * THREADS_PER_PROCESS),
    ],
    ids=["stays-partial", "crosses-the-total"],
)
def test_concurrent_partial_payments_add_up_with_no_lost_update(webhook_url, amount, count):
    escrow = funded_escrow()
    tx_ids = [str(uuid.uuid4()) for _ in range(count)]
    bodies = [
        encode(payload(escrow_id=escrow.escrow_id, tx_id=tx, base_amount=str(amount)))
        for tx in tx_ids
    ]
    batches = [bodies[i::PROCESSES] for i in range(PROCESSES)]

    responses = from_processes(webhook_url, batches)

    assert_all_200(responses)
    assert Counter(body["outcome"] for _, body in responses) == {"applied": count}
    assert Counter(WebhookReceipt.objects.values_list("outcome", flat=True)) == {"applied": count}
    total = amount * count
    escrow.refresh_from_db()
    holding = EscrowHolding.objects.get(escrow=escrow)
    if total < escrow.total_due:
        assert escrow.status == EscrowStatus.PARTIALLY_PAID
        assert holding.account.balance == total
        assert wallet(escrow.buyer_id) == WALLET_SEED
        assert Transaction.objects.filter(escrow=escrow, type="escrow_payment").count() == count
    else:
        assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
        assert holding.account.balance == escrow.total_due
        # The crossing payment's excess and every later payment go to the buyer's wallet.
        assert wallet(escrow.buyer_id) == WALLET_SEED + total - escrow.total_due
        assert (
            StatusChange.objects.filter(
                escrow=escrow, to_status=EscrowStatus.PAYMENT_CONFIRMED
            ).count()
            == 1
        )
        assert escrow.notifications.filter(event="offer_to_seller").count() == 1
    # One record per payment (late ones as late credits), adding up to what was paid.
    records = Transaction.objects.filter(
        escrow=escrow, type__in=["escrow_payment", "late_payment_credit"]
    )
    assert records.count() == count
    assert records.aggregate(s=Sum("amount"))["s"] == total
    assert sorted(records.values_list("external_tx_id", flat=True)) == sorted(tx_ids)
    assert PaymentEvent.objects.count() == count
    assert_ledger_balanced()


def test_concurrent_retry_and_fresh_delivery_of_a_failed_receipt_apply_it_once(monkeypatch):
    rounds = 6
    for _ in range(rounds):
        escrow = funded_escrow()
        tx_id = str(uuid.uuid4())
        body = encode(payload(escrow_id=escrow.escrow_id, tx_id=tx_id, base_amount="101.00"))
        headers = {SIGNATURE_HEADER: sign(body, SECRET)}
        with monkeypatch.context() as patch:
            break_ledger(patch)
            first = services.handle_delivery(body=body, headers=headers, remote_ip="127.0.0.1")
        assert first.status == 500
        failed_id = first.body["receipt"]
        assert WebhookReceipt.objects.get(pk=failed_id).outcome == Outcome.FAILED

        def retry(failed_id: int = failed_id) -> tuple[int, dict]:
            response = services.retry_receipt(receipt_id=failed_id)
            return response.status, response.body

        def retry_command(failed_id: int = failed_id) -> tuple[int, dict]:
            out = StringIO()
            call_command("payments_retry", "--json", "--id", str(failed_id), stdout=out)
            (result,) = json.loads(out.getvalue())["results"]
            return result["status"], result

        responses = in_threads([retry, retry_command, client_delivery(body), client_delivery(body)])

        assert_all_200(responses)
        # Both retries report the failed receipt's final outcome; the two fresh
        # deliveries have receipts of their own. Across the three receipts: one applied.
        receipts = WebhookReceipt.objects.filter(tx_id=tx_id)
        assert receipts.count() == 3
        assert Counter(receipts.values_list("outcome", flat=True)) == {
            "applied": 1,
            "duplicate": 2,
        }
        assert (
            responses[0][1]["outcome"]
            == responses[1][1]["outcome"]
            == (WebhookReceipt.objects.get(pk=failed_id).outcome)
        )
        assert PaymentEvent.objects.filter(tx_id=tx_id).count() == 1
        escrow.refresh_from_db()
        assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
        assert escrow.holding.account.balance == escrow.total_due
        assert Transaction.objects.filter(escrow=escrow, type="escrow_payment").count() == 1
        assert wallet(escrow.buyer_id) == Decimal("11.61")
        assert Notification.objects.filter(escrow=escrow, event="offer_to_seller").count() == 1
    assert_ledger_balanced()


def test_one_new_buyer_overpaying_several_escrows_at_once_is_credited_every_excess():
    # The buyer has no wallet yet: simultaneous first credits wait for each other on its
    # creation (not fail on the unique wallet), and each excess is credited once.
    for _ in range(3):
        buyer = make_escrow().buyer_id
        escrows = [make_escrow(buyer_id=buyer) for _ in range(6)]
        bodies = [
            encode(payload(escrow_id=e.escrow_id, tx_id=str(uuid.uuid4()), base_amount="100.00"))
            for e in escrows
        ]
        responses = in_threads([client_delivery(body) for body in bodies])
        assert_all_200(responses)
        assert {body["outcome"] for _, body in responses} == {"applied"}
        excess = sum((Decimal("100.00") - e.total_due for e in escrows), Decimal("0.00"))
        assert wallet(buyer) == excess
        confirmed = Escrow.objects.filter(
            pk__in=[e.pk for e in escrows], status=EscrowStatus.PAYMENT_CONFIRMED
        )
        assert confirmed.count() == len(escrows)
        credits = Transfer.objects.filter(kind=TransferKind.OVERPAYMENT_CREDIT, escrow__in=escrows)
        assert credits.count() == len(escrows)
    assert_ledger_balanced()

"""Fault injection: whatever fails mid-way, nothing partial survives, the failure is
recorded with its traceback, the provider gets a 500, and a retry applies it once."""

import uuid
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from escrow.models import Escrow, EscrowStatus
from escrow.tests.factories import make_escrow
from escrowsite import sqlbatch
from payments import services
from payments.models import Outcome, WebhookReceipt
from payments.signing import sign
from payments.tests.test_webhook import assert_ledger_balanced, snapshot, wallet
from payments.tests.webhooks import encode, payload
from wallets import ledger
from wallets.models import Transaction
from wallets.tests.factories import break_ledger

BUYER = 5590563715


class FailNthStatement:
    """execute_wrapper that raises instead of running the n-th statement it sees."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.fired_on = ""

    def __call__(self, execute, sql, params, many, context):
        self.seen += 1
        if self.seen == self.n:
            self.fired_on = sql
            raise OperationalError(f"injected failure on statement {self.n}: {sql[:60]}")
        return execute(sql, params, many, context)


def stored_delivery(escrow_id: str, tx_id: str, base_amount: str = "101.00") -> WebhookReceipt:
    body = encode(payload(escrow_id=escrow_id, tx_id=tx_id, base_amount=base_amount))
    return services.store_receipt(
        body=body,
        headers={"X-DynoPay-Signature": sign(body, "test-webhook-secret")},
        remote_ip="127.0.0.1",
    )


def assert_failed_cleanly(receipt: WebhookReceipt, before: dict, response) -> None:
    assert response.status == 500
    assert snapshot() == before, "a partial effect survived the failure"
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.FAILED
    assert "Traceback" in receipt.traceback
    assert receipt.last_error
    assert receipt.attempts >= 1


def assert_applied_once(escrow_id: str, tx_id: str, wallet_before: Decimal) -> None:
    escrow = Escrow.objects.get(escrow_id=escrow_id)
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.holding.account.balance == escrow.total_due
    assert wallet(BUYER) == wallet_before + Decimal("101.00") - escrow.total_due
    assert Transaction.objects.filter(external_tx_id=tx_id, type="escrow_payment").count() == 1
    assert_ledger_balanced()


@pytest.fixture(params=["hot", "general"])
def apply_path(request, monkeypatch) -> str:
    """Run the test on both apply paths: PostgreSQL's one-statement hot path, and the
    general ORM path (the one every other database uses, and PostgreSQL for the cases the
    hot path leaves to it)."""
    if request.param == "general":
        monkeypatch.setattr(sqlbatch, "supported", lambda: False)
    return request.param


def statements_of_one_apply(escrow_id: str, tx_id: str) -> int:
    receipt = stored_delivery(escrow_id, tx_id)
    with CaptureQueriesContext(connection) as queries:
        assert services.run_processing(receipt_id=receipt.pk, source="test").status == 200
    return len([q for q in queries.captured_queries if q["sql"]])


@pytest.mark.django_db
def test_every_sql_statement_of_the_apply_path_failing_in_turn_leaves_nothing_partial(
    apply_path,
):
    # Warm up: accounts that exist after the first payment change the statement count.
    warm = make_escrow(buyer_id=BUYER)
    services.run_processing(receipt_id=stored_delivery(warm.escrow_id, "warm-up").pk, source="test")
    expected = statements_of_one_apply(make_escrow(buyer_id=BUYER).escrow_id, "count-me")

    n = 0
    while True:
        n += 1
        escrow = make_escrow(buyer_id=BUYER)
        tx_id = str(uuid.uuid4())
        receipt = stored_delivery(escrow.escrow_id, tx_id)
        wallet_before = wallet(BUYER)
        before = snapshot()
        injector = FailNthStatement(n)
        with connection.execute_wrapper(injector):
            response = services.run_processing(receipt_id=receipt.pk, source="webhook")
        if not injector.fired_on:
            # Fewer statements than n: every statement has had its turn.
            assert response.status == 200
            break
        assert_failed_cleanly(receipt, before, response)
        retried = services.retry_receipt(receipt_id=receipt.pk)
        assert retried.status == 200, retried.body
        assert retried.body["outcome"] == "applied"
        assert_applied_once(escrow.escrow_id, tx_id, wallet_before)
        # A second retry is a no-op.
        assert services.retry_receipt(receipt_id=receipt.pk).body["outcome"] == "applied"
        assert_applied_once(escrow.escrow_id, tx_id, wallet_before)
    # Every statement of a whole apply had its turn (the hot path has few by design).
    assert n - 1 == expected
    assert expected >= (5 if apply_path == "hot" else 20)


HOT_STEPS = [
    ("payments.services.processing", "_lock_receipt"),
    ("escrowsite.sqlbatch", "lock_rows"),
    ("escrow.services.batched", "_payment_state"),
    ("escrow.services.payment", "_apply_to_holding"),
    ("escrow.services.payment", "_record"),
    ("escrow.services.payment", "_set_status"),
    ("escrow.services.payment", "_notify"),
    ("escrow.services.common", "build_notifications"),
    ("wallets.ledger", "post_transfers_batched"),
    ("escrowsite.sqlbatch.StatementBatch", "execute"),
    ("payments.services.processing", "_describe_outcome"),
    ("payments.services.processing", "_save_outcome"),
    ("payments.services.processing", "parse_notification"),
]
GENERAL_STEPS = [
    ("escrow.services.payment", "lock_escrow"),
    ("escrow.services.payment", "_open_holding"),
    ("escrow.services.payment", "_apply_to_holding"),
    ("escrow.services.payment", "_record"),
    ("escrow.services.payment", "_set_status"),
    ("escrow.services.payment", "_notify"),
    ("escrow.services.common", "enqueue_notifications"),
    ("wallets.ledger", "post_transfers"),
    ("wallets.ledger", "customer_wallet"),
    ("wallets.ledger", "clearing_account"),
    ("payments.services.processing", "_claim"),
    ("payments.services.processing", "_save_outcome"),
    ("payments.services.processing", "parse_notification"),
]
STEPS = [("hot", *step) for step in HOT_STEPS] + [("general", *step) for step in GENERAL_STEPS]


def _target(path: str):
    import importlib

    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:  # a class: "package.module.Class"
        module, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module), cls)


@pytest.mark.django_db
@pytest.mark.parametrize("path,module,name", STEPS, ids=[f"{p}-{m}.{n}" for p, m, n in STEPS])
def test_an_exception_in_any_step_fails_visibly_and_retry_applies_once(
    monkeypatch, path, module, name
):
    if path == "general":
        monkeypatch.setattr(sqlbatch, "supported", lambda: False)
    escrow = make_escrow(buyer_id=BUYER)
    # What exists after the first payments (the hot path leaves opening them to the
    # general path). A step the path never reaches would not fail, and this test would.
    ledger.clearing_account(provider="dynopay")
    ledger.customer_wallet(customer=BUYER)
    tx_id = str(uuid.uuid4())
    receipt = stored_delivery(escrow.escrow_id, tx_id)
    wallet_before = wallet(BUYER)
    before = snapshot()

    def boom(*args, **kwargs):
        raise RuntimeError(f"injected failure in {name}")

    target = _target(module)
    original = getattr(target, name)
    monkeypatch.setattr(target, name, boom)
    response = services.run_processing(receipt_id=receipt.pk, source="webhook")
    assert_failed_cleanly(receipt, before, response)
    receipt.refresh_from_db()
    assert f"injected failure in {name}" in receipt.traceback

    monkeypatch.setattr(target, name, original)
    assert services.retry_receipt(receipt_id=receipt.pk).body["outcome"] == "applied"
    assert_applied_once(escrow.escrow_id, tx_id, wallet_before)


@pytest.mark.django_db(transaction=True)
def test_a_failing_commit_applies_nothing_and_is_retried(monkeypatch):
    escrow = make_escrow(buyer_id=BUYER)
    receipt = stored_delivery(escrow.escrow_id, "tx-commit")
    wallet_before = wallet(BUYER)
    before = snapshot()
    real_commit = connection.commit
    calls = {"n": 0}

    def failing_commit():
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("injected: server closed the connection during COMMIT")
        return real_commit()

    monkeypatch.setattr(connection, "commit", failing_commit)
    response = services.run_processing(receipt_id=receipt.pk, source="webhook")
    monkeypatch.undo()
    assert_failed_cleanly(receipt, before, response)
    assert services.retry_receipt(receipt_id=receipt.pk).body["outcome"] == "applied"
    assert_applied_once(escrow.escrow_id, "tx-commit", wallet_before)


@pytest.mark.django_db
def test_the_failure_is_logged_at_error_with_escrow_and_key(monkeypatch, caplog):
    escrow = make_escrow(buyer_id=BUYER)
    receipt = stored_delivery(escrow.escrow_id, "tx-logged")
    break_ledger(monkeypatch)
    services.run_processing(receipt_id=receipt.pk, source="webhook")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors, "the failure was not logged"
    message = errors[0].getMessage()
    assert escrow.escrow_id in message and "tx-logged" in message
    assert errors[0].exc_info is not None

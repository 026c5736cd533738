"""The PostgreSQL hot path writes exactly what the general ORM path writes.

Every webhook on PostgreSQL that confirms a payment for an escrow awaiting it is applied
by escrowsite.sqlbatch in one statement; every other case, and every other database,
goes through the ORM one row at a time. Both run the same policy
(escrow.services.payment._apply_to_holding); these tests run each scenario down both
paths from the same starting state and compare every row they leave behind.
"""

import re
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from escrow.models import Escrow, EscrowStatus, StatusChange
from escrow.tests.factories import escrow_in_status, make_escrow
from escrowsite import sqlbatch
from notifications.models import Notification
from payments import services
from payments.models import PaymentEvent, WebhookReceipt
from payments.signing import SIGNATURE_HEADER, sign
from payments.tests.test_fault_injection import stored_delivery
from payments.tests.test_webhook import assert_ledger_balanced, incident_escrow
from payments.tests.webhooks import SECRET, encode, payload
from wallets import ledger
from wallets.models import Account, Customer, Transaction, Transfer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clearing_account_exists():
    # As in production after the first payment: the hot path leaves opening the
    # provider's clearing account to the general path.
    ledger.clearing_account(provider="dynopay")


def label(account: Account) -> tuple:
    escrow = Escrow.objects.get(pk=account.escrow_id).escrow_id if account.escrow_id else None
    return (account.kind, account.customer_id, escrow, account.provider, account.currency)


def effects() -> dict:
    """Every row a payment writes, without ids and clock readings (which differ)."""
    accounts = {a.pk: label(a) for a in Account.objects.all()}
    receipt_rank = {
        pk: i
        for i, pk in enumerate(WebhookReceipt.objects.order_by("pk").values_list("pk", flat=True))
    }

    def text(value: str) -> str:  # "receipt #1234" -> "receipt #0": sequences differ
        return re.sub(r"receipt #(\d+)", lambda m: f"receipt #{receipt_rank.get(int(m[1]))}", value)

    escrows = {e.pk: e.escrow_id for e in Escrow.objects.all()}
    transfer_keys = dict(Transfer.objects.values_list("pk", "idempotency_key"))

    def escrow_row(e: Escrow) -> tuple:
        confirmed = e.payment_confirmed_at
        return (
            e.escrow_id,
            e.status,
            e.accepted_shortfall,
            e.deposit_tx_hash,
            e.provider,
            e.provider_payment_id,
            e.delivery_deadline - confirmed if confirmed else e.delivery_deadline is None,
            e.expires_at - confirmed if confirmed else None,
            e.status_changed_at is not None,
        )

    return {
        "escrows": sorted(escrow_row(e) for e in Escrow.objects.all()),
        "balances": sorted((accounts[a.pk], a.balance) for a in Account.objects.all()),
        "holdings": sorted(
            (escrows[h.escrow_id], accounts[h.account_id], h.status, h.resolved_at)
            for h in Escrow.holding.related.related_model.objects.all()
        ),
        "transfers": sorted(
            (
                t.idempotency_key,
                t.kind,
                t.amount,
                t.currency,
                accounts[t.debit_account_id],
                accounts[t.credit_account_id],
                escrows.get(t.escrow_id),
                t.reference,
                text(t.memo),
                t.actor_id,
            )
            for t in Transfer.objects.all()
        ),
        "transactions": sorted(
            (
                r.transaction_id,
                r.type,
                r.amount,
                r.currency,
                r.crypto_amount,
                r.crypto_currency,
                r.provider,
                r.external_tx_id,
                escrows.get(r.escrow_id),
                r.customer_id,
                r.description,
                r.status,
                r.confirmed_at is not None,
                tuple(sorted(transfer_keys[pk] for pk in r.transfers.values_list("pk", flat=True))),
            )
            for r in Transaction.objects.all()
        ),
        "status_changes": sorted(
            (escrows[c.escrow_id], c.from_status, c.to_status, c.source, text(c.reason), c.actor_id)
            for c in StatusChange.objects.all()
        ),
        "notifications": sorted(
            (
                n.key,
                n.event,
                n.channel,
                n.customer_id,
                escrows.get(n.escrow_id),
                n.payload,
                n.status,
            )
            for n in Notification.objects.all()
        ),
        "receipts": sorted(
            (
                r.outcome,
                text(r.detail),
                r.flagged,
                r.attempts,
                r.response_status,
                r.event,
                r.tx_id,
                r.escrow_ref,
                escrows.get(r.escrow_id),
                r.last_error,
                r.processed_at is not None,
            )
            for r in WebhookReceipt.objects.all()
        ),
        "payment_events": sorted(
            (e.provider, e.tx_id, e.event, e.payload_hash) for e in PaymentEvent.objects.all()
        ),
        "customers": sorted(Customer.objects.values_list("telegram_id", flat=True)),
    }


def run_down(path: str, deliveries: list[tuple[str, str, str]], monkeypatch) -> tuple[dict, list]:
    """Apply the deliveries on one path, note the effects and responses, roll back."""
    with monkeypatch.context() as patch:
        if path == "general":
            patch.setattr(sqlbatch, "supported", lambda: False)
        # A bare savepoint, not an atomic block: processing opens a durable one.
        savepoint = transaction.savepoint()
        responses = []
        for escrow_id, tx_id, amount in deliveries:
            body = encode(
                payload(
                    escrow_id=escrow_id, tx_id=tx_id, base_amount=amount, payment_id=f"pay_{tx_id}"
                )
            )
            receipt = services.store_receipt(
                body=body, headers={SIGNATURE_HEADER: sign(body, SECRET)}, remote_ip="127.0.0.1"
            )
            response = services.run_processing(receipt_id=receipt.pk, source="webhook")
            responses.append((response.status, response.body["outcome"]))
        assert_ledger_balanced()
        seen = effects()
        transaction.savepoint_rollback(savepoint)
    return seen, responses


def same_on_both_paths(deliveries, monkeypatch) -> list:
    hot, hot_responses = run_down("hot", deliveries, monkeypatch)
    general, general_responses = run_down("general", deliveries, monkeypatch)
    for table in hot:
        assert hot[table] == general[table], table
    assert hot_responses == general_responses
    return hot_responses


def tx() -> str:
    return str(uuid.uuid4())


def test_the_incident_overpayment(monkeypatch):
    escrow = incident_escrow()
    responses = same_on_both_paths([(escrow.escrow_id, tx(), "101.00")], monkeypatch)
    assert responses == [(200, "applied")]


def test_an_exact_payment_by_a_buyer_without_a_wallet(monkeypatch):
    escrow = make_escrow()
    amount = str(escrow.total_due)
    assert same_on_both_paths([(escrow.escrow_id, tx(), amount)], monkeypatch) == [(200, "applied")]


def test_an_overpayment_by_a_buyer_without_a_wallet_opens_one(monkeypatch):
    escrow = make_escrow()
    amount = str(escrow.total_due + Decimal("4.26"))
    same_on_both_paths([(escrow.escrow_id, tx(), amount)], monkeypatch)


def test_partial_payments_adding_up_then_a_replay_and_a_late_one(monkeypatch):
    escrow = make_escrow()
    first, second, late = tx(), tx(), tx()
    half = str((escrow.total_due / 2).quantize(Decimal("0.01")))
    responses = same_on_both_paths(
        [
            (escrow.escrow_id, first, half),
            (escrow.escrow_id, first, half),  # replay while partially paid
            (escrow.escrow_id, second, str(escrow.total_due)),  # completes, with excess
            (escrow.escrow_id, late, "5.00"),  # after confirmation: late credit
        ],
        monkeypatch,
    )
    assert [outcome for _, outcome in responses] == ["applied", "duplicate", "applied", "applied"]


def test_an_underpayment_within_tolerance(monkeypatch):
    escrow = make_escrow()
    same_on_both_paths([(escrow.escrow_id, tx(), str(escrow.total_due - 1))], monkeypatch)


def test_an_escrow_still_in_created_moves_through_payment_pending(monkeypatch):
    escrow = escrow_in_status(EscrowStatus.CREATED)
    same_on_both_paths([(escrow.escrow_id, tx(), str(escrow.total_due))], monkeypatch)


def test_two_providers_transactions_sharing_their_first_8_characters(monkeypatch):
    escrow = make_escrow()
    shared = "6462e85a"
    half = str((escrow.total_due / 2).quantize(Decimal("0.01")))
    same_on_both_paths(
        [
            (escrow.escrow_id, f"{shared}-aaaa", half),
            (escrow.escrow_id, f"{shared}-bbbb", str(escrow.total_due)),
        ],
        monkeypatch,
    )


def test_a_cancelled_escrow_and_an_unknown_reference(monkeypatch):
    cancelled = escrow_in_status(EscrowStatus.CANCELLED)
    same_on_both_paths(
        [(cancelled.escrow_id, tx(), "20.00"), ("ES000000NONE", tx(), "7.00")], monkeypatch
    )


def test_the_common_case_takes_a_handful_of_statements():
    # The reason the hot path exists: a payment confirmed for an escrow awaiting it is
    # applied by a few statements, not by one ORM query per row (about 37 before).
    warm = incident_escrow()
    services.run_processing(receipt_id=stored_delivery(warm.escrow_id, tx()).pk, source="test")
    escrow = make_escrow(buyer_id=warm.buyer_id)
    receipt = stored_delivery(escrow.escrow_id, tx())
    with CaptureQueriesContext(connection) as queries:
        response = services.run_processing(receipt_id=receipt.pk, source="webhook")
    assert response.status == 200 and response.body["outcome"] == "applied"
    # (In a test the durable transaction is a savepoint of the test's own: not counted.)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    # Lock the receipt, lock the escrow, read what the policy needs, write everything.
    assert len(statements) == 4, statements


def test_the_hot_path_locks_the_escrow_itself_when_the_caller_has_not():
    from escrow import services as escrow_services
    from escrow.tests.factories import make_payment

    escrow = incident_escrow()
    batch = sqlbatch.StatementBatch()
    with transaction.atomic():
        outcome = escrow_services.confirm_payment_batched(
            escrow_id=escrow.escrow_id, payment=make_payment(Decimal("101.00")), batch=batch
        )
        assert outcome is not None and outcome.kind == "confirmed"
        batch.execute()
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.holding.account.balance == escrow.total_due
    assert_ledger_balanced()


def test_the_hot_statements_are_prepared_and_planned_once():
    # Each hot statement is prepared on the connection and, after PostgreSQL's five
    # custom plans, runs on one cached generic plan. A statement planned afresh on every
    # delivery (as the state query was while its account kinds were parameters, which
    # hid the partial unique indexes) costs PostgreSQL CPU on every webhook.
    escrow = incident_escrow()
    services.run_processing(receipt_id=stored_delivery(escrow.escrow_id, tx()).pk, source="test")
    # psycopg prepares a statement on its 6th run; PostgreSQL plans its first 5 prepared
    # runs afresh, then settles on a generic plan if that is as good.
    for _ in range(16):
        other = make_escrow(buyer_id=escrow.buyer_id)
        receipt = stored_delivery(other.escrow_id, tx(), base_amount="101.00")
        assert services.run_processing(receipt_id=receipt.pk, source="webhook").status == 200
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT left(statement, 60), generic_plans, custom_plans FROM pg_prepared_statements"
        )
        prepared = cursor.fetchall()
    assert len(prepared) >= 4, prepared  # receipt insert, two locks, state, batch
    settled = [row for row in prepared if row[1] + row[2] >= 8]
    assert len(settled) >= 4, prepared
    replanned = [row for row in settled if row[1] == 0]
    assert not replanned, replanned


def test_a_payment_parked_in_suspense_then_named_for_an_escrow_is_a_conflict(monkeypatch):
    # The same provider transaction first arrives for an unknown escrow (parked), then
    # names a real one: a different payload for a claimed event. Both paths answer 409
    # and apply nothing; the hot path must not fail on the claim instead (a 500 that
    # every retry would repeat).
    escrow = make_escrow()
    shared = tx()
    responses = same_on_both_paths(
        [("ES000000NONE", shared, "20.00"), (escrow.escrow_id, shared, "20.00")], monkeypatch
    )
    assert responses == [(200, "parked"), (409, "conflict")]

"""wallets_check: silent on a healthy database, and loud when it is broken on purpose.

Every check has a test that corrupts the database the way its invariant forbids (raw SQL,
as a hand edit or a lost write would) and expects the checker to name the check and the
offending id. A check whose own query fails must fail the run, never report "no issues".
"""

import json
import os
import subprocess
import sys
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from escrow import services as escrow_services
from escrow.audit import record_staff_action
from escrow.models import Escrow, EscrowHolding, EscrowStatus
from escrow.tests.factories import make_escrow, pay
from payments import services as payment_services
from payments import staff as payment_staff
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.signing import sign
from payments.tests.test_webhook import BUYER, incident_escrow
from payments.tests.webhooks import INCIDENT_TX, encode, payload, post
from wallets import integrity, ledger
from wallets.models import Account, AccountKind, Transaction
from wallets.tests.factories import StaffUserFactory, break_ledger

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers --------------------------------------------------------------------------------


def raw(sql: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])


def run_check(*args: str) -> tuple[int, dict[str, Any]]:
    """Run wallets_check --json; the exit code it would have and its report."""
    out, err = StringIO(), StringIO()
    try:
        call_command("wallets_check", "--json", *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return code, json.loads(out.getvalue())


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def failing(report: dict[str, Any]) -> set[str]:
    return {c["name"] for c in report["checks"] if c["status"] in ("failed", "error")}


def assert_flags(report: dict[str, Any], name: str, *ids: Any) -> dict[str, Any]:
    """The named check failed and lists (at least) these offending ids."""
    result = checks(report)[name]
    assert result["status"] == "failed", result
    assert not result["ok"]
    assert set(ids) <= set(result["ids"]), result
    assert result["count"] >= len(ids)
    assert result["hint"]
    return result


def stored(escrow_id: str, tx_id: str, base_amount: str = "101.00") -> WebhookReceipt:
    """A signed delivery stored as the webhook stores it, not yet processed."""
    body = encode(payload(escrow_id=escrow_id, tx_id=tx_id, base_amount=base_amount))
    return payment_services.store_receipt(
        body=body,
        headers={"X-DynoPay-Signature": sign(body, "test-webhook-secret")},
        remote_ip="127.0.0.1",
    )


def webhook_pay(client, escrow: Escrow, amount: Decimal | str | None = None, **kw) -> dict:
    amount = escrow.total_due if amount is None else amount
    kw.setdefault("escrow_id", escrow.escrow_id)
    response = post(client, payload(base_amount=str(amount), **kw))
    assert response.status_code == 200, response.content
    return response.json()


def holding_account(escrow: Escrow) -> Account:
    return EscrowHolding.objects.select_related("account").get(escrow=escrow).account


def refreshed(escrow: Escrow) -> Escrow:
    escrow.refresh_from_db()
    return escrow


@pytest.fixture
def world(client) -> dict[str, Escrow]:
    """A healthy database: every path money takes, all through the webhook and services."""
    e = escrow_services
    # The incident's escrow: overpaid ($101.00 for $96.74), accepted, delivered, released;
    # then the same delivery again (a duplicate).
    incident = incident_escrow()
    assert webhook_pay(client, incident, "101.00", tx_id=INCIDENT_TX)["outcome"] == "applied"
    e.accept_escrow(escrow_id=incident.escrow_id)
    e.mark_delivered(escrow_id=incident.escrow_id)
    e.release_escrow(escrow_id=incident.escrow_id)
    assert webhook_pay(client, incident, "101.00", tx_id=INCIDENT_TX)["outcome"] == "duplicate"

    held = make_escrow(buyer_id=BUYER)  # underpaid within tolerance: accepted shortfall
    assert webhook_pay(client, held, held.total_due - D("0.50"))["outcome"] == "applied"
    active = make_escrow()
    webhook_pay(client, active)
    e.accept_escrow(escrow_id=active.escrow_id)
    partial = make_escrow()  # still collecting
    webhook_pay(client, partial, "50.00")
    partial_refunded = make_escrow()  # partially paid, then refunded: never confirmed
    webhook_pay(client, partial_refunded, "40.00")
    e.refund_escrow(escrow_id=partial_refunded.escrow_id, reason="buyer gave up")
    declined = make_escrow()  # paid, the seller declined: refunded after confirmation
    webhook_pay(client, declined)
    e.decline_escrow(escrow_id=declined.escrow_id)
    split = make_escrow()  # disputed, resolved by a split
    webhook_pay(client, split)
    e.accept_escrow(escrow_id=split.escrow_id)
    e.open_dispute(escrow_id=split.escrow_id, reason="not as described")
    e.resolve_dispute(
        escrow_id=split.escrow_id,
        resolution="split",
        buyer_amount=D("40.00"),
        seller_amount=D("40.00"),
    )
    late = make_escrow()  # cancelled, then paid: credited to the buyer's wallet
    e.cancel_escrow(escrow_id=late.escrow_id)
    assert webhook_pay(client, late)["outcome"] == "applied"
    pending = make_escrow()  # awaiting payment; the provider says it is pending
    webhook_pay(client, pending, event="payment.pending")
    # Money for no known escrow: parked in suspense (a warning, not a failure)...
    assert webhook_pay(client, pending, "12.34", escrow_id="ES000000NOPE")["outcome"] == "parked"
    # ...and another parked payment that staff attached to the escrow it was meant for.
    attached = make_escrow()
    parked = webhook_pay(client, attached, escrow_id="ES000000WRNG")
    payment_staff.attach_suspense_payment(
        receipt_id=parked["receipt"],
        escrow_id=attached.escrow_id,
        actor_id=StaffUserFactory().pk,
        reason="buyer mistyped the reference; confirmed on the provider dashboard",
    )
    escrows = {
        "incident": incident,
        "held": held,
        "active": active,
        "partial": partial,
        "partial_refunded": partial_refunded,
        "declined": declined,
        "split": split,
        "late": late,
        "pending": pending,
        "attached": attached,
    }
    expected = {
        "incident": "completed",
        "held": "payment_confirmed",
        "active": "active",
        "partial": "partially_paid",
        "partial_refunded": "refunded",
        "declined": "refunded",
        "split": "completed",
        "late": "cancelled",
        "pending": "payment_pending",
        "attached": "payment_confirmed",
    }
    assert {k: refreshed(v).status for k, v in escrows.items()} == expected
    return escrows


# --- a healthy database ---------------------------------------------------------------------


def test_a_healthy_database_passes_every_check(world):
    code, report = run_check()

    assert code == 0
    assert report["ok"] is True and report["failed"] == []
    assert {c["name"] for c in report["checks"]} == set(integrity.CHECKS)
    not_ok = {c["name"]: c["status"] for c in report["checks"] if not c["ok"]}
    # The one parked payment nobody placed yet: reported, but only as a warning.
    assert not_ok == {"suspense_holds_money": "warning"}
    assert report["warnings"] == ["suspense_holds_money"]
    suspense = ledger.system_account(kind=AccountKind.SUSPENSE)
    assert checks(report)["suspense_holds_money"]["ids"] == [suspense.pk]


def test_healthy_text_output_lists_every_check_at_verbosity_2(world):
    out = StringIO()
    call_command("wallets_check", "-v2", stdout=out, stderr=StringIO())
    text = out.getvalue()
    for name in integrity.CHECKS:
        assert name in text
    assert "WARN  suspense_holds_money" in text
    assert "\r" not in text  # no progress bar when not on a terminal (cron)
    assert "0 failed" in text


def test_a_database_with_nothing_in_it_passes():
    assert run_check()[0] == 0


# --- the incident ----------------------------------------------------------------------------


def test_incident_applied_receipt_whose_effects_were_lost_is_reported(world):
    """ES101325WZY2: the delivery was signed and marked applied, the escrow stayed
    payment_pending with no holding and no transaction (a silent rollback)."""
    escrow = make_escrow(amount=D("92.13"), buyer_id=BUYER, escrow_id="ES101325WZZZ")
    receipt = stored(escrow.escrow_id, "6462e85a-lost")
    raw(
        "UPDATE payments_webhookreceipt SET outcome = 'applied', event = 'payment.confirmed', "
        "tx_id = '6462e85a-lost', escrow_ref = %s, escrow_id = %s, processed_at = now(), "
        "response_status = 200 WHERE id = %s",
        [escrow.escrow_id, escrow.pk, receipt.pk],
    )

    code, report = run_check()

    assert code == 1 and report["ok"] is False
    assert failing(report) == {
        "confirmed_payment_escrow_unfunded",
        "money_receipt_has_transfers",
        "receipt_claim_matches_outcome",
    }
    unfunded = assert_flags(report, "confirmed_payment_escrow_unfunded", escrow.escrow_id)
    assert unfunded["ids"] == [escrow.escrow_id]
    assert "payment_pending with no holding" in unfunded["offending"][0]["detail"]
    assert f"#{receipt.pk}" in unfunded["offending"][0]["detail"]
    assert_flags(report, "money_receipt_has_transfers", receipt.pk)
    assert_flags(report, "receipt_claim_matches_outcome", receipt.pk)


def test_incident_delivery_left_received_by_a_killed_process_is_reported_then_retried(client):
    escrow = incident_escrow()
    receipt = stored(escrow.escrow_id, INCIDENT_TX)
    raw(
        "UPDATE payments_webhookreceipt SET received_at = now() - interval '10 minutes' "
        "WHERE id = %s",
        [receipt.pk],
    )

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"confirmed_payment_escrow_unfunded", "receipt_stuck_received"}
    unfunded = assert_flags(report, "confirmed_payment_escrow_unfunded", "ES101325WZY2")
    assert "(received)" in unfunded["offending"][0]["detail"]
    assert INCIDENT_TX in unfunded["offending"][0]["detail"]
    stuck = assert_flags(report, "receipt_stuck_received", receipt.pk)
    assert "payments_retry" in stuck["hint"]

    # Younger than --stale-after: it may still be being processed, so not reported.
    assert run_check("--stale-after", "1h")[0] == 0

    call_command("payments_retry", "--json", stdout=StringIO())
    assert refreshed(escrow).status == EscrowStatus.PAYMENT_CONFIRMED
    assert run_check()[0] == 0


def test_a_failed_delivery_is_reported_until_payments_retry_applies_it(monkeypatch):
    escrow = make_escrow()
    receipt = stored(escrow.escrow_id, "tx-fails", base_amount=str(escrow.total_due))
    with monkeypatch.context() as patch:
        break_ledger(patch)
        response = payment_services.run_processing(receipt_id=receipt.pk, source="webhook")
    assert response.status == 500

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"receipt_failed", "confirmed_payment_escrow_unfunded"}
    failed = assert_flags(report, "receipt_failed", receipt.pk)
    assert "ZeroDivisionError" in failed["offending"][0]["detail"]
    assert "payments_retry" in failed["hint"]
    # Its parsed fields were rolled back: the escrow is found from the raw body.
    assert_flags(report, "confirmed_payment_escrow_unfunded", escrow.escrow_id)

    call_command("payments_retry", "--json", stdout=StringIO())
    assert run_check()[0] == 0


def test_the_incident_manual_sql_repair_is_reported():
    """The old team's repair: status, dates and wallet set by SQL, a record inserted by
    hand. Each of those edits breaks an invariant the ledger and services keep."""
    escrow = incident_escrow()
    wallet = ledger.customer_wallet(customer=BUYER)
    raw(
        "UPDATE escrow_escrow SET status = 'payment_confirmed', payment_confirmed_at = now(), "
        "delivery_deadline = now() + interval '24 hours', deposit_tx_hash = %s, "
        "expires_at = NULL WHERE id = %s",
        [INCIDENT_TX, escrow.pk],
    )
    raw("UPDATE wallets_account SET balance = balance + 4.26 WHERE id = %s", [wallet.pk])
    raw(
        "INSERT INTO wallets_transaction (transaction_id, customer_id, type, amount, currency, "
        "crypto_currency, status, provider, external_tx_id, escrow_id, description, created_at, "
        "confirmed_at) VALUES ('ESC_ES101325WZY2_6462e85a', %s, 'escrow_payment', 101.00, "
        "'USD', '', 'completed', 'dynopay', %s, %s, 'Escrow payment for ES101325WZY2', now(), "
        "now())",
        [BUYER, INCIDENT_TX, escrow.pk],
    )

    code, report = run_check()

    assert code == 1
    assert failing(report) == {
        "ledger_balanced",
        "balance_matches_ledger",
        "paid_escrow_has_holding",
        "escrow_status_matches_history",
        "payment_record_has_receipt",
        "transaction_record_matches_transfers",
    }
    assert checks(report)["ledger_balanced"]["offending"] == [
        {"id": "USD", "detail": "balances sum to 4.26 USD"}
    ]
    assert_flags(report, "balance_matches_ledger", wallet.pk)
    assert_flags(report, "paid_escrow_has_holding", "ES101325WZY2")
    assert_flags(report, "escrow_status_matches_history", "ES101325WZY2")
    assert_flags(report, "payment_record_has_receipt", "ESC_ES101325WZY2_6462e85a")
    assert_flags(report, "transaction_record_matches_transfers", "ESC_ES101325WZY2_6462e85a")


# --- the ledger ----------------------------------------------------------------------------------


def test_a_hand_edited_wallet_unbalances_the_ledger(world):
    wallet = ledger.customer_wallet(customer=BUYER)
    raw("UPDATE wallets_account SET balance = balance + 1 WHERE id = %s", [wallet.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"ledger_balanced", "balance_matches_ledger"}
    assert_flags(report, "ledger_balanced", "USD")
    result = assert_flags(report, "balance_matches_ledger", wallet.pk)
    assert result["ids"] == [wallet.pk]
    assert "customer balance" in result["offending"][0]["detail"]


def test_offsetting_hand_edits_keep_the_sum_but_not_the_cache(world):
    wallet = ledger.customer_wallet(customer=BUYER)
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)
    raw("UPDATE wallets_account SET balance = balance + 10 WHERE id = %s", [wallet.pk])
    raw("UPDATE wallets_account SET balance = balance - 10 WHERE id = %s", [revenue.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"balance_matches_ledger"}
    assert checks(report)["balance_matches_ledger"]["ids"] == sorted([wallet.pk, revenue.pk])


def test_an_overdrawn_wallet_is_reported_even_without_its_constraint(world):
    wallet = ledger.customer_wallet(customer=BUYER)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'account_balance_non_negative'"
        )
        definition = cursor.fetchone()[0]
    raw("ALTER TABLE wallets_account DROP CONSTRAINT account_balance_non_negative")
    try:
        # The difference goes to revenue, so the currency still sums to zero.
        revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)
        raw("UPDATE wallets_account SET balance = -5 WHERE id = %s", [wallet.pk])
        raw(
            "UPDATE wallets_account SET balance = balance + %s WHERE id = %s",
            [wallet.balance + 5, revenue.pk],
        )
        code, report = run_check("--check", "no_negative_balance,ledger_balanced")
    finally:
        raw("UPDATE wallets_account SET balance = %s WHERE id = %s", [wallet.balance, wallet.pk])
        raw("ALTER TABLE wallets_account ADD CONSTRAINT account_balance_non_negative " + definition)

    assert code == 1
    assert failing(report) == {"no_negative_balance"}
    result = assert_flags(report, "no_negative_balance", wallet.pk)
    assert "-" in result["offending"][0]["detail"]


def test_a_transfer_in_another_currency_than_its_accounts_is_reported(world):
    wallet = ledger.customer_wallet(customer=BUYER)
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)
    # Inserted directly (bypassing wallets.ledger), with the balances moved to match.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO wallets_transfer (created_at, kind, amount, currency, debit_account_id, "
            "credit_account_id, idempotency_key, reference, memo) VALUES (now(), "
            "'staff_adjustment', 2.00, 'EUR', %s, %s, 'raw:eur', '', '') RETURNING id",
            [revenue.pk, wallet.pk],
        )
        transfer_id = cursor.fetchone()[0]
    raw("UPDATE wallets_account SET balance = balance - 2 WHERE id = %s", [revenue.pk])
    raw("UPDATE wallets_account SET balance = balance + 2 WHERE id = %s", [wallet.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"transfer_currency_matches_accounts"}
    result = assert_flags(report, "transfer_currency_matches_accounts", transfer_id)
    assert "transfer in EUR" in result["offending"][0]["detail"]


def test_a_transfer_moving_a_holding_for_another_escrow_is_reported(world):
    held, other = world["held"], world["active"]
    clearing = ledger.clearing_account(provider="dynopay")
    holding = holding_account(held)
    # Money into the held escrow's holding and straight back out, both naming the
    # wrong escrow: balances and sums stay right, only the escrow link is wrong.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO wallets_transfer (created_at, kind, amount, currency, debit_account_id, "
            "credit_account_id, idempotency_key, reference, memo, escrow_id) VALUES "
            "(now(), 'escrow_payment', 1.00, 'USD', %s, %s, 'raw:in', '', '', %s), "
            "(now(), 'escrow_refund', 1.00, 'USD', %s, %s, 'raw:out', '', '', NULL) "
            "RETURNING id",
            [clearing.pk, holding.pk, other.pk, holding.pk, clearing.pk],
        )
        ids = [row[0] for row in cursor.fetchall()]

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"holding_transfer_names_its_escrow"}
    assert checks(report)["holding_transfer_names_its_escrow"]["ids"] == sorted(ids)


def test_a_record_whose_amount_differs_from_its_transfers_is_reported(world):
    record = Transaction.objects.get(transaction_id="REL_ES101325WZY2")
    raw("UPDATE wallets_transaction SET amount = amount + 1 WHERE id = %s", [record.pk])
    unlinked = Transaction.objects.get(transaction_id__startswith="OVP_ES101325WZY2")
    raw("DELETE FROM wallets_transaction_transfers WHERE transaction_id = %s", [unlinked.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"transaction_record_matches_transfers"}
    result = assert_flags(
        report,
        "transaction_record_matches_transfers",
        "REL_ES101325WZY2",
        unlinked.transaction_id,
    )
    details = {o["id"]: o["detail"] for o in result["offending"]}
    assert "transfers are missing" in details[unlinked.transaction_id]


# --- escrows and holdings ------------------------------------------------------------------


def test_a_paid_escrow_whose_holding_row_was_deleted_is_reported(world):
    held = world["held"]
    raw("DELETE FROM escrow_escrowholding WHERE escrow_id = %s", [held.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"paid_escrow_has_holding", "holding_account_consistent"}
    assert checks(report)["paid_escrow_has_holding"]["ids"] == [held.escrow_id]
    orphan = assert_flags(report, "holding_account_consistent", held.escrow_id)
    assert "no holding row" in orphan["offending"][0]["detail"]


def test_a_paid_escrow_without_its_payment_record_is_reported(world):
    held = world["held"]
    record = Transaction.objects.get(escrow=held, type="escrow_payment")
    raw("DELETE FROM wallets_transaction_transfers WHERE transaction_id = %s", [record.pk])
    raw("DELETE FROM wallets_transaction WHERE id = %s", [record.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"paid_escrow_has_payment_record"}
    assert checks(report)["paid_escrow_has_payment_record"]["ids"] == [held.escrow_id]


def test_a_confirmed_escrow_without_its_deadline_is_reported(world):
    active, declined = world["active"], world["declined"]
    raw("UPDATE escrow_escrow SET delivery_deadline = NULL WHERE id = %s", [active.pk])
    # Refunded after its payment was confirmed (its history says so): dates required.
    raw("UPDATE escrow_escrow SET payment_confirmed_at = NULL WHERE id = %s", [declined.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"confirmed_escrow_has_deadline"}
    result = checks(report)["confirmed_escrow_has_deadline"]
    assert result["ids"] == sorted([active.escrow_id, declined.escrow_id])
    details = {o["id"]: o["detail"] for o in result["offending"]}
    assert details[active.escrow_id] == "active, no delivery_deadline"
    assert details[declined.escrow_id] == "refunded, no payment_confirmed_at"


def test_a_holding_drained_without_a_status_change_is_reported(world):
    """A payout posted behind the services' back: the ledger is sound, the escrow is not."""
    held = world["held"]
    holding = holding_account(held)
    seller = ledger.customer_wallet(customer=held.seller_id)
    raw(
        "INSERT INTO wallets_transfer (created_at, kind, amount, currency, debit_account_id, "
        "credit_account_id, idempotency_key, reference, memo, escrow_id) VALUES "
        "(now(), 'escrow_release', 30.00, 'USD', %s, %s, 'raw:drain', '', '', %s)",
        [holding.pk, seller.pk, held.pk],
    )
    raw("UPDATE wallets_account SET balance = balance - 30 WHERE id = %s", [holding.pk])
    raw("UPDATE wallets_account SET balance = balance + 30 WHERE id = %s", [seller.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"holding_balance_matches_status"}
    result = assert_flags(report, "holding_balance_matches_status", held.escrow_id)
    assert result["ids"] == [held.escrow_id]
    assert "holding held holds" in result["offending"][0]["detail"]


def test_a_collecting_holding_that_reached_the_total_is_reported(world):
    partial = world["partial"]
    holding = holding_account(partial)
    clearing = ledger.clearing_account(provider="dynopay")
    topped_up = partial.total_due - holding.balance
    raw(
        "INSERT INTO wallets_transfer (created_at, kind, amount, currency, debit_account_id, "
        "credit_account_id, idempotency_key, reference, memo, escrow_id) VALUES "
        "(now(), 'escrow_payment', %s, 'USD', %s, %s, 'raw:top-up', '', '', %s)",
        [topped_up, clearing.pk, holding.pk, partial.pk],
    )
    raw("UPDATE wallets_account SET balance = balance + %s WHERE id = %s", [topped_up, holding.pk])
    raw("UPDATE wallets_account SET balance = balance - %s WHERE id = %s", [topped_up, clearing.pk])

    code, report = run_check("--check", "holding_balance_matches_status")

    assert code == 1
    assert checks(report)["holding_balance_matches_status"]["ids"] == [partial.escrow_id]


def test_an_escrow_whose_status_disagrees_with_its_holding_is_reported(world):
    incident = world["incident"]  # completed, holding released
    raw("UPDATE escrow_escrow SET status = 'delivered' WHERE id = %s", [incident.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"holding_status_matches_escrow", "escrow_status_matches_history"}
    result = assert_flags(report, "holding_status_matches_escrow", incident.escrow_id)
    assert result["offending"][0]["detail"] == "escrow delivered but holding released"


def test_an_unpaid_escrow_with_a_holding_is_reported(world):
    pending = world["pending"]
    partial = world["partial"]
    # Point the partially paid escrow's holding (and its account) at the pending escrow.
    raw(
        "UPDATE escrow_escrowholding SET escrow_id = %s WHERE escrow_id = %s",
        [pending.pk, partial.pk],
    )

    code, report = run_check()

    assert code == 1
    assert_flags(report, "holding_status_matches_escrow", pending.escrow_id)
    assert_flags(report, "holding_account_consistent", pending.escrow_id)
    assert_flags(report, "paid_escrow_has_holding", partial.escrow_id)


def test_a_status_edited_by_hand_is_reported(world):
    pending = world["pending"]
    raw("UPDATE escrow_escrow SET status = 'cancelled' WHERE id = %s", [pending.pk])

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"escrow_status_matches_history"}
    result = checks(report)["escrow_status_matches_history"]
    assert result["ids"] == [pending.escrow_id]
    assert result["offending"][0]["detail"] == "status cancelled, history ends at payment_pending"


# --- payments: receipts and records ------------------------------------------------------------


def test_a_payment_record_with_no_receipt_is_reported_unless_staff_explain_it():
    escrow = make_escrow()
    outcome = pay(escrow, tx_id="tx-from-nowhere")  # the service, not the webhook path
    record = outcome.transactions[0]

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"payment_record_has_receipt"}
    result = checks(report)["payment_record_has_receipt"]
    assert result["ids"] == [record.transaction_id]
    assert "dynopay:tx-from-nowhere" in result["offending"][0]["detail"]

    # A staff action on the escrow naming the payment explains it.
    with transaction.atomic():
        record_staff_action(
            actor_id=StaffUserFactory().pk,
            action="confirm_payment_by_hand",
            reason="paid by bank transfer, confirmed with the buyer",
            escrow=escrow,
            changes={"tx_id": "tx-from-nowhere"},
        )
    assert run_check()[0] == 0


def test_an_applied_receipt_whose_transfers_are_missing_is_reported(world):
    """Receipts point at transfers by reference: break the link from the receipt's side."""
    receipt = WebhookReceipt.objects.get(tx_id=INCIDENT_TX, outcome=Outcome.APPLIED)
    parked = WebhookReceipt.objects.get(escrow_ref="ES000000NOPE")
    raw(
        "UPDATE payments_webhookreceipt SET tx_id = tx_id || '-other' WHERE id IN (%s, %s)",
        [receipt.pk, parked.pk],
    )

    code, report = run_check()

    assert code == 1
    result = assert_flags(report, "money_receipt_has_transfers", receipt.pk, parked.pk)
    assert result["count"] == 2
    # And the escrow's payment record no longer has its applied receipt.
    assert_flags(report, "payment_record_has_receipt", "ESC_ES101325WZY2_6462e85a")


def test_a_receipt_that_lost_its_dedupe_claim_is_reported(world):
    receipt = WebhookReceipt.objects.get(escrow_ref="ES000000NOPE")
    PaymentEvent.objects.filter(receipt=receipt).delete()

    code, report = run_check()

    assert code == 1
    assert failing(report) == {"receipt_claim_matches_outcome"}
    result = checks(report)["receipt_claim_matches_outcome"]
    assert result["ids"] == [receipt.pk]
    assert result["offending"][0]["detail"] == "parked but holds no dedupe claim"


def test_a_payment_for_an_escrow_cancelled_while_it_was_stuck_is_reported(client):
    """The 'paid escrow auto-cancelled' failure: the delivery is stuck, the escrow closed."""
    escrow = make_escrow()
    receipt = stored(escrow.escrow_id, "tx-stuck", base_amount=str(escrow.total_due))
    escrow_services.cancel_escrow(escrow_id=escrow.escrow_id)
    raw(
        "UPDATE payments_webhookreceipt SET received_at = now() - interval '1 hour' WHERE id = %s",
        [receipt.pk],
    )

    code, report = run_check()

    result = assert_flags(report, "confirmed_payment_escrow_unfunded", escrow.escrow_id)
    assert "escrow cancelled with no holding" in result["offending"][0]["detail"]
    assert code == 1
    # Retried, it becomes a late payment credited to the buyer: nothing left to report.
    call_command("payments_retry", "--json", stdout=StringIO())
    assert run_check()[0] == 0


# --- a check that cannot run never says "no issues" ---------------------------------------------


def test_a_check_whose_query_fails_fails_the_run_and_the_others_still_run(world):
    raw("ALTER TABLE escrow_escrow RENAME COLUMN delivery_deadline TO delivery_deadline_gone")
    try:
        code, report = run_check()
        err = StringIO()
        with pytest.raises(CommandError) as info:
            call_command("wallets_check", stdout=StringIO(), stderr=err)
    finally:
        raw("ALTER TABLE escrow_escrow RENAME COLUMN delivery_deadline_gone TO delivery_deadline")

    assert code == 1 and report["ok"] is False
    broken = checks(report)["confirmed_escrow_has_deadline"]
    assert broken["status"] == "error" and broken["ok"] is False
    assert "delivery_deadline" in broken["error"]
    assert "confirmed_escrow_has_deadline" in report["failed"]
    # The rest ran on the same snapshot and found nothing.
    others = [c for c in report["checks"] if c["name"] != "confirmed_escrow_has_deadline"]
    assert {c["status"] for c in others} == {"ok", "warning"}
    assert info.value.returncode == 1
    assert "ERROR confirmed_escrow_has_deadline: could not run" in err.getvalue()
    assert "confirmed_escrow_has_deadline (error)" in str(info.value)


def test_the_snapshot_is_read_only():
    def writes(ctx: integrity.Context) -> tuple[int, list[integrity.Finding]]:
        ctx.cursor.execute("UPDATE wallets_account SET balance = balance")
        return 0, []

    sneaky = integrity.Check("writes", "account", integrity.ERROR, "", "", writes)
    report = integrity.run_checks(checks=[sneaky, integrity.CHECKS["ledger_balanced"]])

    assert [r.status for r in report.results] == ["error", "ok"]
    assert "read-only transaction" in report.results[0].error
    assert not report.ok


def test_every_check_sees_one_snapshot():
    """A row committed by someone else half-way through the run is seen by no check."""
    counts = []
    params = connection.get_connection_params()
    dsn = {k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")}

    def count_then_commit_elsewhere(ctx: integrity.Context):
        ctx.cursor.execute("SELECT count(*) FROM wallets_customer")
        counts.append(ctx.cursor.fetchone()[0])
        with psycopg.connect(**dsn, autocommit=True) as other:
            other.execute(
                "INSERT INTO wallets_customer (telegram_id, username, email, created_at) "
                "VALUES (%s, '', '', now())",
                [9_000_000_000 + len(counts)],
            )
        return 0, []

    check = integrity.Check(
        "count", "customer", integrity.ERROR, "", "", count_then_commit_elsewhere
    )
    integrity.run_checks(checks=[check, check])

    assert counts == [0, 0]


# --- the command line ------------------------------------------------------------------------


def test_check_selects_checks_and_unknown_names_are_a_usage_error(world):
    code, report = run_check(
        "--check", "ledger_balanced", "--check", "receipt_failed,receipt_failed"
    )
    assert code == 0
    assert [c["name"] for c in report["checks"]] == ["ledger_balanced", "receipt_failed"]

    with pytest.raises(CommandError) as info:
        call_command("wallets_check", "--check", "no_such_check", stdout=StringIO())
    assert info.value.returncode == 2
    assert "no_such_check" in str(info.value) and "ledger_balanced" in str(info.value)


@pytest.mark.parametrize("args", [["--stale-after", "soon"], ["--max-ids", "0"]])
def test_bad_options_are_usage_errors(args):
    with pytest.raises(CommandError) as info:
        call_command("wallets_check", *args, stdout=StringIO())
    assert info.value.returncode == 2


def test_offending_ids_are_capped_but_counted(world):
    for escrow in (world["pending"], world["late"], world["partial"]):
        raw("UPDATE escrow_escrow SET status = 'expired' WHERE id = %s", [escrow.pk])

    code, report = run_check("--check", "escrow_status_matches_history", "--max-ids", "2")

    result = checks(report)["escrow_status_matches_history"]
    assert code == 1
    assert result["count"] == 3 and len(result["ids"]) == 2 and result["ids_truncated"]

    out = StringIO()
    with pytest.raises(CommandError):
        call_command(
            "wallets_check",
            "--check",
            "escrow_status_matches_history",
            "--max-ids",
            "2",
            stdout=out,
        )
    assert "… and 1 more" in out.getvalue()


def test_verbosity_0_prints_nothing_but_still_fails(world):
    raw("UPDATE escrow_escrow SET status = 'expired' WHERE id = %s", [world["pending"].pk])
    out = StringIO()
    with pytest.raises(CommandError) as info:
        call_command("wallets_check", "-v0", stdout=out, stderr=StringIO())
    assert out.getvalue() == ""
    assert "escrow_status_matches_history (1)" in str(info.value)


def test_list_names_every_check():
    out = StringIO()
    call_command("wallets_check", "--list", stdout=out)
    for name in integrity.CHECKS:
        assert name in out.getvalue()


def test_the_number_of_queries_does_not_grow_with_the_data(client):
    """Set-based: a fixed number of queries whatever the number of rows."""

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert integrity.run_checks().ok
        return len(captured)

    escrow = make_escrow()
    webhook_pay(client, escrow)
    few = queries()
    for _ in range(5):
        more = make_escrow()
        webhook_pay(client, more)
        escrow_services.accept_escrow(escrow_id=more.escrow_id)
    assert queries() == few


def test_exit_codes_of_the_real_command(world):
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**connection.settings_dict),
    }
    env.setdefault("SECRET_KEY", "x")

    def exit_code(*args: str) -> int:
        cmd = [sys.executable, "manage.py", "wallets_check", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode

    assert exit_code() == 0
    assert exit_code("--no-such-option") == 2
    assert exit_code("--check", "nope") == 2
    raw("UPDATE escrow_escrow SET status = 'expired' WHERE id = %s", [world["pending"].pk])
    assert exit_code() == 1

"""payments_retry: failed receipts are applied exactly once; dry runs write nothing."""

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from escrow.models import EscrowStatus
from escrow.tests.factories import make_escrow
from payments import services
from payments.models import Outcome, WebhookReceipt
from payments.tests.test_fault_injection import stored_delivery
from payments.tests.test_webhook import snapshot
from wallets.tests.factories import break_ledger


def failed_receipt(monkeypatch, escrow_id: str, tx_id: str) -> WebhookReceipt:
    receipt = stored_delivery(escrow_id, tx_id)
    with monkeypatch.context() as patch:
        break_ledger(patch)
        assert services.run_processing(receipt_id=receipt.pk, source="webhook").status == 500
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.FAILED
    return receipt


def run(*args: str) -> dict:
    out = StringIO()
    call_command("payments_retry", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_retry_applies_failed_receipts_once(monkeypatch):
    escrow = make_escrow()
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, "tx-r1")
    report = run()
    assert [r["outcome"] for r in report["results"]] == ["applied"]
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.APPLIED and receipt.attempts == 2
    # Nothing left to retry; naming the applied receipt again is a no-op.
    assert run()["results"] == []
    before = snapshot()
    assert run("--id", str(receipt.pk))["results"][0]["outcome"] == "applied"
    assert snapshot() == before


@pytest.mark.django_db
def test_dry_run_reports_what_would_change_and_writes_nothing(monkeypatch):
    escrow = make_escrow(amount=Decimal("92.13"))
    receipt = failed_receipt(monkeypatch, escrow.escrow_id, "tx-r2")
    before = snapshot()
    report = run("--dry-run")
    result = report["results"][0]
    assert result["dry_run"] is True
    assert result["outcome"] == "applied"
    assert result["status_before"] == "payment_pending"
    assert result["status_after"] == "payment_confirmed"
    assert {t["kind"] for t in result["transfers"]} == {"escrow_payment", "overpayment_credit"}
    assert snapshot() == before
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.FAILED


@pytest.mark.django_db
def test_stuck_received_receipts_are_picked_up_only_when_stale():
    escrow = make_escrow()
    receipt = stored_delivery(escrow.escrow_id, "tx-stuck")  # as if the process died here
    assert run()["results"] == []
    WebhookReceipt.objects.filter(pk=receipt.pk).update(
        received_at=timezone.now() - timedelta(minutes=10)
    )
    assert [r["outcome"] for r in run()["results"]] == ["applied"]


@pytest.mark.django_db
def test_exit_code_is_non_zero_when_a_retry_fails_again(monkeypatch):
    escrow = make_escrow()
    failed_receipt(monkeypatch, escrow.escrow_id, "tx-r3")
    break_ledger(monkeypatch)
    with pytest.raises(CommandError, match="failed again"):
        call_command("payments_retry", stdout=StringIO())
    assert WebhookReceipt.objects.get().attempts == 2


@pytest.mark.django_db
def test_bad_duration_is_a_clear_error():
    with pytest.raises(CommandError, match="not a duration"):
        call_command("payments_retry", "--stale-after", "soon", stdout=StringIO())

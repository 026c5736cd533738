"""escrow_sweep never expires an escrow whose payment delivery is stored but not applied,
however that delivery names the escrow; payments_retry then simply applies it."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models.functions import Now

from escrow.models import Escrow, EscrowStatus, StatusChange
from escrow.tests.factories import make_escrow
from escrow.tests.helpers import holding_balance
from escrow.tests.test_sweep import by_escrow, overdue, sweep
from payments import services as payment_services
from payments.models import Outcome, WebhookReceipt
from payments.signing import SIGNATURE_HEADER, sign
from payments.tests.webhooks import SECRET, encode, payload
from wallets.tests.factories import break_ledger

pytestmark = pytest.mark.usefixtures("orm_claim_agrees_with_sql_claim")

# The sweep's guard finds a delivery for an escrow three ways; each case leaves exactly one
# of them able to match, so each guards its own clause of the guard's query.
BY_REFERENCE = "stored escrow reference"  # received, unlinked; the body spells it escaped
BY_RAW_BODY = "raw body only"  # received, unlinked, reference blanked
BY_LINK = "failed and linked"  # failed, linked; reference blanked, body spells it escaped


def json_escaped(text: str) -> bytes:
    """`text` as JSON \\u escapes: the same string to a JSON parser, other bytes on disk."""
    return "".join(f"\\u{ord(char):04x}" for char in text).encode()


def in_flight_delivery(escrow: Escrow, how: str, patch: pytest.MonkeyPatch) -> WebhookReceipt:
    """A signed payment.confirmed delivery of the whole total due, stored but not applied."""
    body = encode(payload(escrow_id=escrow.escrow_id, base_amount=str(escrow.total_due)))
    if how != BY_RAW_BODY:
        body = body.replace(escrow.escrow_id.encode(), json_escaped(escrow.escrow_id))
        assert escrow.escrow_id.encode() not in body
    receipt = payment_services.store_receipt(
        body=body, headers={SIGNATURE_HEADER: sign(body, SECRET)}, remote_ip="127.0.0.1"
    )
    if how == BY_LINK:
        with patch.context() as broken:
            break_ledger(broken)
            response = payment_services.run_processing(receipt_id=receipt.pk, source="webhook")
            assert response.status == 500
    if how != BY_REFERENCE:
        WebhookReceipt.objects.filter(pk=receipt.pk).update(escrow_ref="")
    receipt.refresh_from_db()
    assert (receipt.outcome, receipt.escrow_ref, receipt.escrow_id) == {
        BY_REFERENCE: (Outcome.RECEIVED, escrow.escrow_id, None),
        BY_RAW_BODY: (Outcome.RECEIVED, "", None),
        BY_LINK: (Outcome.FAILED, "", escrow.pk),
    }[how]
    return receipt


@pytest.mark.django_db
@pytest.mark.parametrize("how", [BY_REFERENCE, BY_RAW_BODY, BY_LINK])
def test_an_overdue_escrow_with_its_payment_in_flight_is_held_then_paid_by_retry(monkeypatch, how):
    escrow = make_escrow()
    receipt = in_flight_delivery(escrow, how, monkeypatch)
    overdue(escrow, by=timedelta(hours=3))
    history = list(StatusChange.objects.filter(escrow=escrow).values_list("pk", flat=True))

    report, code = sweep("--no-warnings")

    assert code == 2  # held for a human, nothing failed
    assert by_escrow(report) == {escrow.escrow_id: [("expire", "held")]}
    assert report["counts"] == {"done": 0, "would": 0, "skipped": 0, "held": 1, "failed": 0}
    assert "payments_retry" in report["items"][0]["detail"]
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_PENDING
    assert list(StatusChange.objects.filter(escrow=escrow).values_list("pk", flat=True)) == history

    # A received one is retried once stale, as if the process handling it had died.
    WebhookReceipt.objects.filter(pk=receipt.pk).update(received_at=Now() - timedelta(minutes=10))
    call_command("payments_retry", "--json", stdout=StringIO())

    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.APPLIED
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert holding_balance(escrow) == escrow.total_due

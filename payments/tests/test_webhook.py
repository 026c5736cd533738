"""The webhook endpoint end to end: every delivery ends in exactly one visible outcome."""

import json
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.db.models import Sum

from escrow import services as escrow_services
from escrow.models import Escrow, EscrowHolding, EscrowStatus
from escrow.tests.factories import make_escrow
from payments.models import Outcome, WebhookReceipt
from payments.tests.webhooks import INCIDENT_TX, SECRET, payload, post
from wallets import ledger
from wallets.models import Account, AccountKind, Transaction, Transfer, TransferKind

BUYER = 5590563715


def incident_escrow() -> Escrow:
    """ES101325WZY2 as it was: $96.74 due, the buyer's wallet at $7.35."""
    escrow = make_escrow(amount=Decimal("92.13"), buyer_id=BUYER, escrow_id="ES101325WZY2")
    assert escrow.total_due == Decimal("96.74")
    ledger.post_transfer(
        debit=ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS),
        credit=ledger.customer_wallet(customer=BUYER),
        amount=Decimal("7.35"),
        kind=TransferKind.STAFF_ADJUSTMENT,
        idempotency_key="seed:wallet:5590563715",
    )
    return escrow


def wallet(customer_id: int) -> Decimal:
    return ledger.customer_wallet(customer=customer_id).balance


def assert_ledger_balanced() -> None:
    assert Account.objects.aggregate(total=Sum("balance"))["total"] in (0, None)
    for account in Account.objects.all():
        credits = account.credits.aggregate(s=Sum("amount"))["s"] or 0
        debits = account.debits.aggregate(s=Sum("amount"))["s"] or 0
        assert account.balance == credits - debits, account


def snapshot() -> dict:
    """Everything a delivery may change, except the receipt log itself."""
    return {
        "escrows": list(Escrow.objects.order_by("pk").values()),
        "holdings": list(EscrowHolding.objects.order_by("pk").values()),
        "accounts": list(Account.objects.order_by("pk").values("pk", "balance")),
        "transfers": Transfer.objects.count(),
        "transactions": Transaction.objects.count(),
    }


@pytest.mark.django_db(transaction=True)
def test_incident_es101325wzy2_is_applied_completely_and_committed_before_200(client):
    incident_escrow()
    response = post(client, payload(tx_id=INCIDENT_TX))

    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "applied"
    # Committed before the 200: a separate connection sees every effect.
    dsn = connection.get_connection_params()
    with psycopg.connect(
        **{k: v for k, v in dsn.items() if k in ("dbname", "user", "host", "port", "password")}
    ) as other:
        status = other.execute(
            "select status from escrow_escrow where escrow_id = 'ES101325WZY2'"
        ).fetchone()[0]
    assert status == "payment_confirmed"

    escrow = Escrow.objects.get(escrow_id="ES101325WZY2")
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.payment_confirmed_at is not None
    assert escrow.delivery_deadline == escrow.payment_confirmed_at + timedelta(hours=24)
    assert escrow.expires_at > escrow.payment_confirmed_at
    assert escrow.deposit_tx_hash == INCIDENT_TX
    assert wallet(BUYER) == Decimal("11.61")
    record = Transaction.objects.get(transaction_id="ESC_ES101325WZY2_6462e85a")
    assert record.amount == Decimal("101.00")
    assert record.currency == "USD"  # the USD figure, never under the coin's label
    assert record.crypto_amount == Decimal("0.9187") and record.crypto_currency == "LTC"
    holding = EscrowHolding.objects.get(escrow=escrow)
    assert holding.status == "held"
    assert holding.account.balance == Decimal("96.74")
    assert EscrowHolding.objects.count() == 1
    assert escrow.notifications.filter(event="offer_to_seller").exists()
    assert escrow.notifications.filter(event="payment_confirmed").exists()
    assert_ledger_balanced()
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.APPLIED and receipt.escrow == escrow


@pytest.mark.django_db
def test_redelivery_is_a_duplicate_and_applies_nothing(client):
    incident_escrow()
    body = payload(tx_id=INCIDENT_TX)
    assert post(client, body).json()["outcome"] == "applied"
    before = snapshot()
    again = post(client, body)
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert snapshot() == before
    assert wallet(BUYER) == Decimal("11.61")


@pytest.mark.django_db
def test_same_event_with_different_payload_is_a_409_conflict(client):
    incident_escrow()
    assert post(client, payload(tx_id=INCIDENT_TX)).status_code == 200
    before = snapshot()
    response = post(client, payload(tx_id=INCIDENT_TX, base_amount="500.00"))
    assert response.status_code == 409
    assert snapshot() == before
    receipt = WebhookReceipt.objects.latest("pk")
    assert receipt.outcome == Outcome.CONFLICT and receipt.flagged


@pytest.mark.django_db
@pytest.mark.parametrize(
    "signature",
    [None, "", "deadbeef", "0" * 64],
    ids=["missing", "empty", "short", "wrong"],
)
def test_unsigned_or_wrongly_signed_is_401_stored_and_never_processed(client, settings, signature):
    settings.DEBUG = True  # no environment or DEBUG bypass
    incident_escrow()
    before = snapshot()
    response = post(client, payload(), secret=None, signature=signature)
    assert response.status_code == 401
    assert snapshot() == before
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.UNAUTHENTICATED and not receipt.signature_valid
    assert bytes(receipt.body)  # kept, so attacks are visible


@pytest.mark.django_db
def test_signature_with_another_secret_is_rejected(client):
    incident_escrow()
    assert post(client, payload(), secret="not-our-secret").status_code == 401


@pytest.mark.django_db
def test_any_of_several_rotated_secrets_verifies(client, settings):
    settings.DYNOPAY_WEBHOOK_SECRET = ["new-secret", SECRET]
    incident_escrow()
    assert post(client, payload(tx_id="tx-old"), secret=SECRET).status_code == 200
    assert post(client, payload(tx_id="tx-new"), secret="new-secret").json()["outcome"] == "applied"


@pytest.mark.django_db
def test_no_configured_secret_verifies_nothing(client, settings):
    settings.DYNOPAY_WEBHOOK_SECRET = []
    incident_escrow()
    assert post(client, payload(), secret="").status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        b'{"event": "payment.confirmed"}',
        b'{"event": "payment.refunded", "id": "p1", "txId": "t1", "base_amount": "1", "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "abc", "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "-5", "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "0", "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "NaN", "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": true, "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "10", "base_currency": "EUR"}',
        b'{"event": "payment.confirmed", "id": "p1", "base_amount": "10", "base_currency": "USD"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "10", "base_currency": "USD", "created_at": "yesterday"}',
        b'{"event": "payment.confirmed", "id": "p1", "txId": "t1", "base_amount": "10", "base_currency": "USD", "meta_data": "ES1"}',
    ],
)
def test_signed_but_malformed_is_400_and_changes_nothing(client, body):
    incident_escrow()
    before = snapshot()
    response = post(client, body)
    assert response.status_code == 400, response.content
    assert response.json()["outcome"] == "malformed"
    assert response.json()["detail"]
    assert snapshot() == before
    assert WebhookReceipt.objects.get().outcome == Outcome.MALFORMED


@pytest.mark.django_db
def test_json_number_amounts_are_exact(client):
    incident_escrow()
    body = b'{"event": "payment.confirmed", "id": "p1", "txId": "tx-num", "base_amount": 101.00, "base_currency": "USD", "paid_amount": 0.9187, "paid_currency": "LTC", "meta_data": {"refId": "ES101325WZY2"}}'
    assert post(client, body).json()["outcome"] == "applied"
    assert wallet(BUYER) == Decimal("11.61")


@pytest.mark.django_db
def test_customer_reference_is_the_fallback_escrow_reference(client):
    incident_escrow()
    data = payload(tx_id="tx-ref")
    del data["meta_data"]
    data["customer_reference"] = "ES101325WZY2"
    assert post(client, data).json()["outcome"] == "applied"


@pytest.mark.django_db
def test_oversized_body_is_413_and_stored_truncated(client, settings):
    settings.WEBHOOK_MAX_BODY_BYTES = 1024
    incident_escrow()
    before = snapshot()
    data = payload(padding="x" * 5000)
    response = post(client, data)
    assert response.status_code == 413
    assert snapshot() == before
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.TOO_LARGE and len(bytes(receipt.body)) == 1024
    assert receipt.body_size > 5000


@pytest.mark.django_db
def test_get_is_not_allowed(client):
    assert client.get("/webhooks/dynopay/").status_code == 405


@pytest.mark.django_db
def test_pending_is_recorded_and_moves_no_money(client):
    incident_escrow()
    before = snapshot()
    response = post(client, payload(event="payment.pending", tx_id="tx-p"))
    assert response.status_code == 200 and response.json()["outcome"] == "recorded"
    assert snapshot() == before


@pytest.mark.django_db
def test_failed_payment_is_recorded_and_moves_no_money(client):
    incident_escrow()
    before = snapshot()
    response = post(client, payload(event="payment.failed", tx_id="tx-f"))
    assert response.json()["outcome"] == "recorded"
    assert snapshot() == before


@pytest.mark.django_db
def test_pending_after_confirmed_never_moves_the_escrow_backwards(client):
    escrow = incident_escrow()
    assert post(client, payload(tx_id="tx-o", payment_id="pay-o")).json()["outcome"] == "applied"
    late_pending = post(client, payload(event="payment.pending", tx_id="tx-o", payment_id="pay-o"))
    assert late_pending.json()["outcome"] == "recorded"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED


@pytest.mark.django_db
def test_confirmed_before_pending_still_confirms(client):
    escrow = incident_escrow()
    assert post(client, payload(tx_id="tx-q", payment_id="pay-q")).json()["outcome"] == "applied"
    assert (
        post(client, payload(event="payment.pending", tx_id="tx-q", payment_id="pay-q")).status_code
        == 200
    )
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert wallet(BUYER) == Decimal("11.61")


@pytest.mark.django_db
def test_unknown_escrow_reference_parks_the_money_in_suspense(client):
    before_wallet = Decimal("0")
    response = post(client, payload(escrow_id="ES000000NOPE", base_amount="12.34", tx_id="tx-u"))
    assert response.status_code == 200 and response.json()["outcome"] == "parked"
    suspense = ledger.system_account(kind=AccountKind.SUSPENSE)
    assert suspense.balance == Decimal("12.34")
    receipt = WebhookReceipt.objects.get()
    assert receipt.outcome == Outcome.PARKED and receipt.flagged
    assert Transaction.objects.get(type="suspense").amount == Decimal("12.34")
    assert before_wallet == 0
    assert_ledger_balanced()


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["cancelled", "expired", "paid"])
def test_payment_for_a_closed_or_paid_escrow_is_credited_to_the_buyer_and_flagged(client, status):
    escrow = incident_escrow()
    if status == "cancelled":
        escrow_services.cancel_escrow(escrow_id=escrow.escrow_id)
    elif status == "expired":
        escrow_services.expire_escrow(
            escrow_id=escrow.escrow_id, now=escrow.expires_at + timedelta(minutes=1)
        )
    else:
        assert post(client, payload(tx_id="tx-first")).status_code == 200
    balance = wallet(BUYER)
    response = post(client, payload(tx_id="tx-late", base_amount="96.74"))
    assert response.status_code == 200
    assert response.json()["outcome"] == "applied"
    assert wallet(BUYER) == balance + Decimal("96.74")
    receipt = WebhookReceipt.objects.latest("pk")
    assert receipt.flagged
    assert Transaction.objects.filter(type="late_payment_credit", amount=Decimal("96.74")).exists()
    assert_ledger_balanced()


@pytest.mark.django_db
def test_underpayments_add_up_until_the_total_is_reached(client):
    escrow = incident_escrow()
    assert post(client, payload(tx_id="tx-a", base_amount="50.00")).status_code == 200
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PARTIALLY_PAID
    assert escrow.holding.account.balance == Decimal("50.00")
    assert post(client, payload(tx_id="tx-b", base_amount="50.00")).status_code == 200
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.holding.account.balance == Decimal("96.74")
    assert wallet(BUYER) == Decimal("7.35") + Decimal("3.26")
    assert_ledger_balanced()


@pytest.mark.django_db
def test_underpayment_within_tolerance_confirms_and_is_flagged(client):
    escrow = incident_escrow()
    response = post(client, payload(tx_id="tx-t", base_amount="96.00"))
    assert response.json()["outcome"] == "applied"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.accepted_shortfall == Decimal("0.74")
    assert WebhookReceipt.objects.get().flagged


@pytest.mark.django_db
def test_a_payment_a_business_rule_refuses_is_a_visible_conflict_and_stays_applicable(
    client, monkeypatch
):
    """A domain refusal is deterministic, so it is a 409 (no pointless retries), flagged
    for staff, with nothing applied; the dedupe claim is undone too, so the same payment
    can still be applied once the cause is fixed."""
    from escrowsite.errors import ApplicationError
    from payments.models import PaymentEvent

    escrow = incident_escrow()

    def refuse(**kwargs):
        raise ApplicationError("rule says no")

    # The rule refuses on both apply paths (the hot path hands a refusal to the general
    # one, which refuses it inside its savepoint).
    monkeypatch.setattr(escrow_services, "confirm_payment", refuse)
    monkeypatch.setattr(escrow_services, "confirm_payment_batched", refuse)
    before = snapshot()
    response = post(client, payload(tx_id=INCIDENT_TX))
    assert response.status_code == 409
    assert response.json()["outcome"] == "conflict"
    assert "rule says no" in response.json()["detail"]
    assert snapshot() == before
    assert WebhookReceipt.objects.get().flagged
    assert not PaymentEvent.objects.exists()

    monkeypatch.undo()
    again = post(client, payload(tx_id=INCIDENT_TX))
    assert again.json()["outcome"] == "applied"
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED


HOSTILE_BODIES = {
    "lone-surrogate-in-txId": lambda: json.dumps(payload(tx_id="tx-\ud800")).encode(),
    "lone-surrogate-in-refId": lambda: json.dumps(payload(escrow_id="ES101325WZY2\udfff")).encode(),
    "5000-digit-json-integer": lambda: json.dumps(payload())[:-1].encode()
    + b', "base_amount": '
    + b"1" * 5000
    + b"}",
    "152-character-txId": lambda: json.dumps(payload(tx_id="t" * 152)).encode(),
    "coin-that-grows-when-uppercased": lambda: json.dumps(payload(coin="\ufb03" * 6)).encode(),
    "paid_amount-with-extreme-exponent": lambda: json.dumps(
        payload(paid_amount="1e-99999")
    ).encode(),
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_hostile_bodies_found_by_fuzzing_are_400_not_500(client, name):
    """Each of these once made processing fail with a 500 that no retry could fix."""
    incident_escrow()
    before = snapshot()
    response = post(client, HOSTILE_BODIES[name]())
    assert response.status_code == 400, response.content
    assert snapshot() == before
    assert WebhookReceipt.objects.get().outcome == Outcome.MALFORMED


@pytest.mark.django_db
def test_a_header_with_a_nul_byte_still_leaves_a_receipt():
    from payments import services

    receipt = services.store_receipt(
        body=b"{}", headers={"X-Odd": "a\x00b", "X-DynoPay-Signature": "x"}, remote_ip=None
    )
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.UNAUTHENTICATED
    assert receipt.headers["X-Odd"] == "ab"

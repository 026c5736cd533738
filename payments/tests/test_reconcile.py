"""Reconciliation against the sandbox provider: missed payments are applied once, through
the webhook path, and a webhook arriving afterwards is a duplicate."""

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from escrow import services as escrow_services
from escrow.models import Escrow, EscrowStatus
from escrow.tests.factories import make_escrow
from payments.client import DynoPayClient
from payments.models import Outcome, WebhookReceipt
from payments.provider import reconcile, request_deposit
from payments.tests.sandbox_fixtures import dynopay_sandbox  # noqa: F401
from payments.tests.test_webhook import assert_ledger_balanced, snapshot
from wallets.models import Transaction


def reconcile_json(*args: str) -> dict:
    out = StringIO()
    call_command("payments_reconcile", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_request_deposit_stores_the_provider_payment_and_address(dynopay_sandbox):  # noqa: F811
    escrow = make_escrow()
    escrow = request_deposit(escrow_id=escrow.escrow_id, coin="LTC")
    assert escrow.provider == "dynopay"
    assert escrow.provider_payment_id and escrow.deposit_address
    again = request_deposit(escrow_id=escrow.escrow_id, coin="LTC")
    assert again.provider_payment_id == escrow.provider_payment_id


@pytest.mark.django_db
def test_a_payment_the_webhook_never_delivered_is_found_and_applied_once(dynopay_sandbox):  # noqa: F811
    escrow = make_escrow(amount=Decimal("92.13"))
    escrow = request_deposit(escrow_id=escrow.escrow_id, coin="LTC")
    dynopay_sandbox.mark_payment(
        escrow.provider_payment_id,
        status="confirmed",
        base_amount=Decimal("101.00"),
        tx_id="tx-lost-webhook",
        deliver=False,
    )
    dry = reconcile_json("--dry-run")
    assert [i["action"] for i in dry["items"]] == ["would_apply"]
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_PENDING

    report = reconcile_json()
    assert [i["action"] for i in report["items"]] == ["applied"]
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert escrow.holding.account.balance == escrow.total_due
    assert (
        Transaction.objects.filter(external_tx_id="tx-lost-webhook", type="escrow_payment").count()
        == 1
    )
    assert_ledger_balanced()

    # Running it again finds nothing new and changes nothing.
    before = snapshot()
    assert [i["action"] for i in reconcile_json("--escrow", escrow.escrow_id)["items"]] == [
        "already_applied"
    ]
    assert snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_the_webhook_arriving_after_reconciliation_is_a_duplicate(dynopay_sandbox, live_server):  # noqa: F811
    escrow = make_escrow(amount=Decimal("92.13"))
    escrow = request_deposit(escrow_id=escrow.escrow_id, coin="LTC")
    dynopay_sandbox.mark_payment(
        escrow.provider_payment_id,
        status="confirmed",
        base_amount=Decimal("96.74"),
        tx_id="tx-late-webhook",
        deliver=False,
    )
    assert [i.action for i in reconcile().items] == ["applied"]
    before = snapshot()
    dynopay_sandbox.webhook_url = live_server.url + "/webhooks/dynopay/"
    # The provider's own delivery of the same state finally arrives.
    _, delivery = dynopay_sandbox.mark_payment(
        escrow.provider_payment_id,
        status="confirmed",
        base_amount=Decimal("96.74"),
        tx_id="tx-late-webhook",
    )
    assert delivery.attempts[-1].status_code == 200
    assert WebhookReceipt.objects.latest("pk").outcome == Outcome.DUPLICATE
    assert snapshot() == before


@pytest.mark.django_db
def test_a_payment_for_an_expired_escrow_is_credited_to_the_buyer(dynopay_sandbox):  # noqa: F811
    escrow = make_escrow()
    escrow = request_deposit(escrow_id=escrow.escrow_id, coin="BTC")
    escrow_services.expire_escrow(
        escrow_id=escrow.escrow_id, now=escrow.expires_at + timedelta(minutes=1)
    )
    dynopay_sandbox.mark_payment(
        escrow.provider_payment_id,
        status="confirmed",
        base_amount=escrow.total_due,
        tx_id="tx-after-expiry",
        deliver=False,
    )
    assert [i.action for i in reconcile().items] == ["applied"]
    assert Transaction.objects.filter(
        type="late_payment_credit", external_tx_id="tx-after-expiry"
    ).exists()
    assert WebhookReceipt.objects.get().flagged


@pytest.mark.django_db
def test_pending_payments_are_reported_not_applied(dynopay_sandbox):  # noqa: F811
    request_deposit(escrow_id=make_escrow().escrow_id, coin="LTC")
    before = snapshot()
    assert [i.action for i in reconcile().items] == ["not_confirmed"]
    assert snapshot() == before


@pytest.mark.django_db
def test_provider_errors_are_reported_and_the_exit_code_is_non_zero(dynopay_sandbox, settings):  # noqa: F811
    make_escrow()
    settings.DYNOPAY_API_KEY = "wrong-key"
    with pytest.raises(CommandError, match="problem"):
        call_command("payments_reconcile", stdout=StringIO())
    report = reconcile(client=DynoPayClient())
    assert [i.action for i in report.items] == ["error"]
    assert "401" in report.items[0].detail or "auth" in report.items[0].detail.lower()
    assert Escrow.objects.get().status == EscrowStatus.PAYMENT_PENDING

"""wallets_adjust: a staff adjustment from the command line."""

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import transaction

from escrow.models import StaffAction
from wallets import selectors
from wallets.management.commands.wallets_adjust import Command
from wallets.models import AdjustmentRequest
from wallets.tests.factories import StaffUserFactory, funded_wallet
from wallets.tests.helpers import ledger_state

D = Decimal


def adjust(*args: str) -> str:
    out = StringIO()
    call_command("wallets_adjust", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_credits_the_wallet_as_the_system_user_by_default():
    wallet = funded_wallet(D("1.00"))

    output = adjust("--customer", str(wallet.customer_id), "--amount", "5.00", "--reason", "promo")

    assert selectors.wallet_balance(customer_id=wallet.customer_id, currency="USD") == D("6.00")
    assert "by +5.00 USD" in output and "balance 6.00 USD" in output
    system = get_user_model().objects.get(username="system")
    assert system.is_staff and not system.has_usable_password()
    assert StaffAction.objects.get().actor == system


@pytest.mark.django_db
def test_json_output_names_the_transfer_and_record():
    wallet = funded_wallet(D("10.00"))
    StaffUserFactory(username="maria")

    result = json.loads(
        adjust(
            "--customer",
            str(wallet.customer_id),
            "--amount",
            "-2.50",
            "--reason",
            "fee",
            "--actor",
            "maria",
            "--json",
        )
    )

    assert result | {"transfer_id": None, "transaction_id": None} == {
        "status": "posted",
        "customer": wallet.customer_id,
        "amount": "-2.50",
        "currency": "USD",
        "actor": "maria",
        "replayed": False,
        "request_id": None,
        "transfer_id": None,
        "transaction_id": None,
        "balance": "7.50",
    }
    assert result["transaction_id"] == f"ADJ_{wallet.customer_id}_{result['transfer_id']}"


@pytest.mark.django_db
def test_above_the_threshold_it_prints_the_pending_request():
    wallet = funded_wallet()
    before = ledger_state()

    output = adjust("--customer", str(wallet.customer_id), "--amount", "500", "--reason", "big")

    request = AdjustmentRequest.objects.get()
    assert f"request #{request.pk} is pending" in output
    assert ledger_state() == before
    as_json = json.loads(
        adjust(
            "--customer", str(wallet.customer_id), "--amount", "500", "--reason", "big", "--json"
        )
    )
    assert as_json["status"] == "pending" and as_json["transfer_id"] is None


@pytest.mark.django_db
def test_a_retried_command_with_a_key_adjusts_once():
    wallet = funded_wallet()
    args = ["--customer", str(wallet.customer_id), "--amount", "3", "--reason", "r"]

    adjust(*args, "--idempotency-key", "ticket-9")
    output = adjust(*args, "--idempotency-key", "ticket-9")

    assert "nothing changed" in output
    assert selectors.wallet_balance(customer_id=wallet.customer_id, currency="USD") == D("3.00")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amount", "-1.00"], "cannot pay out 1.00"),
        (["--amount", "0"], "non-zero"),
        (["--amount", "1.001"], "more precision than cents"),
        (["--amount", "abc"], "Invalid --amount"),
        (["--amount", "1", "--reason", " "], "reason is required"),
        (["--amount", "1", "--actor", "nobody"], "No user named 'nobody'"),
    ],
)
def test_a_refusal_is_an_error_with_the_domain_message_and_writes_nothing(args, message):
    wallet = funded_wallet()
    base = ["--customer", str(wallet.customer_id), "--reason", "x"]
    before = ledger_state()

    with pytest.raises(CommandError, match=message):
        adjust(*base, *args)

    assert ledger_state() == before
    assert not StaffAction.objects.exists()


@pytest.mark.django_db
def test_an_unknown_customer_exits_non_zero_with_the_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        Command().run_from_argv(
            ["manage.py", "wallets_adjust", "--customer", "42", "--amount", "1", "--reason", "x"]
        )

    assert exit_info.value.code != 0
    assert "Customer 42 does not exist." in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_run_inside_someone_elses_transaction():
    """Durable: nested by accident, it fails loudly instead of joining the outer work."""
    wallet = funded_wallet()

    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        adjust("--customer", str(wallet.customer_id), "--amount", "1", "--reason", "x")

    assert selectors.wallet_balance(customer_id=wallet.customer_id, currency="USD") == D("0.00")

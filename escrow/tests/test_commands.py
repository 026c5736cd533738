"""escrow_create and escrow_inspect: thin commands, clear errors, nothing written on failure."""

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError

from escrow.models import Escrow, EscrowStatus
from escrow.tests.factories import make_escrow, pay
from escrow.tests.helpers import db_state

BUYER, SELLER = 5590563715, 7845120931


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_prints_id_and_total_due():
    out = run("escrow_create", "--buyer", str(BUYER), "--seller", str(SELLER), "--amount", "92.13")
    escrow = Escrow.objects.get()
    assert out.startswith(f"Created {escrow.escrow_id}: 92.13 USD, fee 4.61 (buyer_pays)")
    assert "total due 96.74 USD" in out
    assert (escrow.buyer_id, escrow.seller_id, escrow.status) == (BUYER, SELLER, "payment_pending")


@pytest.mark.django_db
def test_create_with_every_option_as_json():
    out = run(
        "escrow_create",
        "--buyer",
        str(BUYER),
        "--seller",
        str(SELLER),
        "--amount",
        "100",
        "--escrow-id",
        "ES101325WZY2",
        "--fee-split",
        "split",
        "--delivery-hours",
        "48",
        "--description",
        "a domain name",
        "--json",
    )
    data = json.loads(out)
    assert data["escrow_id"] == "ES101325WZY2"
    assert (data["total_due"], data["buyer_fee"], data["seller_fee"]) == ("102.50", "2.50", "2.50")
    assert (data["delivery_hours"], data["dry_run"]) == (48, False)
    escrow = Escrow.objects.get(escrow_id="ES101325WZY2")
    assert (escrow.description, escrow.fee_split, escrow.amount) == (
        "a domain name",
        "split",
        Decimal("100.00"),
    )


@pytest.mark.django_db
def test_create_dry_run_saves_nothing():
    before = db_state()
    out = run(
        "escrow_create",
        "--buyer",
        str(BUYER),
        "--seller",
        str(SELLER),
        "--amount",
        "5",
        "--dry-run",
    )
    assert out.startswith("Would create ES")
    assert db_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amount", "ten dollars"], "Invalid --amount"),
        (["--amount", "1e999999999"], "Invalid --amount|too large"),
        (["--amount", "NaN"], "Invalid --amount"),
        (["--amount", "-5"], "must be positive"),
        (["--amount", "5.001"], "whole cents"),
        (["--amount", "5", "--escrow-id", "ES101325WZY2"], "ES101325WZY2 already exists"),
        (["--amount", "5", "--escrow-id", "nonsense"], "not a valid escrow id"),
        (["--amount", "5", "--delivery-hours", "0"], "Delivery hours"),
        (["--amount", "5", "--delivery-hours", "soon"], "invalid int value"),
        (["--amount", "5", "--fee-split", "nobody"], "invalid choice"),
        (["--amount", "5", "--seller", str(BUYER)], "different customers"),
    ],
)
def test_create_bad_input_is_a_clear_error_and_changes_nothing(args, message):
    make_escrow(escrow_id="ES101325WZY2")
    before = db_state()
    base = ["--buyer", str(BUYER), "--seller", str(SELLER)]
    if "--seller" in args:
        base = base[:2]
    with pytest.raises(CommandError, match=message):
        run("escrow_create", *base, *args)
    assert db_state() == before


@pytest.mark.django_db
def test_create_requires_its_arguments():
    with pytest.raises(CommandError, match="--amount"):
        run("escrow_create", "--buyer", "1", "--seller", "2")


@pytest.mark.django_db
def test_inspect_shows_status_money_records_and_wallets():
    escrow = make_escrow(amount=Decimal("92.13"), escrow_id="ES101325WZY2", buyer_id=BUYER)
    pay(escrow, Decimal("101.00"), tx_id="6462e85a-12da-403c-8eeb-e1697b9bbbe7")
    out = run("escrow_inspect", "es101325wzy2")
    assert out.startswith("ES101325WZY2  Payment confirmed (awaiting seller)")
    assert f"buyer   {BUYER}  wallet 4.26 USD" in out
    assert "total due 96.74 USD" in out
    assert "Holding  held  balance 96.74 USD" in out
    assert "ESC_ES101325WZY2_6462e85a" in out and "OVP_ES101325WZY2_6462e85a" in out
    assert "Ledger transfers (2)" in out
    assert "payment_pending -> payment_confirmed" in out


@pytest.mark.django_db
def test_inspect_json():
    escrow = make_escrow(amount=Decimal("10.00"))
    data = json.loads(run("escrow_inspect", escrow.escrow_id, "--json"))
    assert data["escrow_id"] == escrow.escrow_id
    assert data["status"] == EscrowStatus.PAYMENT_PENDING
    assert data["amounts"]["total_due"] == "11.00"
    assert data["holding"] is None
    assert data["buyer"]["wallet_balance"] == "0.00"


@pytest.mark.django_db
def test_inspect_unknown_escrow_is_an_error():
    with pytest.raises(CommandError, match="Escrow ES000000NONE does not exist"):
        run("escrow_inspect", "ES000000NONE")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["escrow_inspect", "ES000000NONE"], "Escrow ES000000NONE does not exist"),
        (["escrow_create", "--buyer", "1", "--seller", "2", "--amount", "x"], "Invalid --amount"),
    ],
)
def test_failures_exit_non_zero_with_the_message_on_stderr(argv, message, capsys):
    command = load_command_class(get_commands()[argv[0]], argv[0])
    with pytest.raises(SystemExit) as exc:
        command.run_from_argv(["manage.py", *argv])
    assert exc.value.code == 1
    assert message in capsys.readouterr().err

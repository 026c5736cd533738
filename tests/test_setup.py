"""The project set-up: the `make run` demo seed and the migrations being up to date."""

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.db.models import Sum

from escrow.models import Escrow, EscrowHolding, EscrowStatus, StatusChange
from wallets.models import Account, AccountKind, Transaction, Transfer

INCIDENT_BUYER = 5590563715


def seed(tmp_path, *args: str) -> str:
    out = StringIO()
    call_command(
        "escrow_seed_demo", "--force", "--password-file", str(tmp_path / "pw"), *args, stdout=out
    )
    return out.getvalue()


def snapshot() -> dict:
    return {
        "escrows": dict(Escrow.objects.values_list("escrow_id", "status")),
        "balances": dict(Account.objects.values_list("pk", "balance")),
        "transfers": Transfer.objects.count(),
        "transactions": Transaction.objects.count(),
        "status_changes": StatusChange.objects.count(),
        "users": get_user_model().objects.count(),
    }


def assert_ledger_balanced() -> None:
    assert Account.objects.aggregate(total=Sum("balance"))["total"] == 0
    for account in Account.objects.all():
        credits = account.credits.aggregate(s=Sum("amount"))["s"] or Decimal("0")
        debits = account.debits.aggregate(s=Sum("amount"))["s"] or Decimal("0")
        assert account.balance == credits - debits, account
        if account.kind in (AccountKind.CUSTOMER, AccountKind.ESCROW_HOLDING):
            assert account.balance >= 0, account


@pytest.mark.django_db
def test_seed_produces_the_incident_state_and_is_idempotent(tmp_path):
    output = seed(tmp_path)
    first = snapshot()

    wallet = Account.objects.get(kind=AccountKind.CUSTOMER, customer_id=INCIDENT_BUYER)
    assert wallet.balance == Decimal("7.35")
    incident = Escrow.objects.get(escrow_id="ES101325WZY2")
    assert incident.buyer_id == INCIDENT_BUYER
    assert incident.status == EscrowStatus.PAYMENT_PENDING
    assert incident.total_due == Decimal("96.74")
    assert (incident.amount, incident.fee_amount) == (Decimal("92.13"), Decimal("4.61"))
    assert not EscrowHolding.objects.filter(escrow=incident).exists()
    assert set(first["escrows"].values()) >= {
        EscrowStatus.PAYMENT_PENDING,
        EscrowStatus.ACTIVE,
        EscrowStatus.DELIVERED,
        EscrowStatus.COMPLETED,
        EscrowStatus.DISPUTED,
        EscrowStatus.CANCELLED,
    }
    # The other escrows' money moved through the ledger: paid ones hold their total due.
    for escrow in Escrow.objects.filter(status__in=["active", "delivered", "disputed"]):
        assert escrow.holding.account.balance == escrow.total_due
    assert_ledger_balanced()

    # The printed password logs the staff superuser in.
    password = (tmp_path / "pw").read_text().strip()
    assert f"password: {password}" in output
    assert "http://127.0.0.1:8000/admin/" in output
    admin = authenticate(username="admin", password=password)
    assert admin is not None and admin.is_staff and admin.is_superuser

    second_output = seed(tmp_path)
    assert snapshot() == first
    assert f"password: {password}" in second_output
    assert "created" not in second_output.split("Staff login")[0]
    assert_ledger_balanced()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("percent", "min_fee"),
    [("3", "2.00"), ("5", "50.00"), ("10", "1.00"), ("0", "0.00")],
)
def test_incident_total_due_holds_under_other_fee_settings(tmp_path, settings, percent, min_fee):
    settings.ESCROW_FEE_PERCENT = Decimal(percent)
    settings.ESCROW_MIN_FEE = Decimal(min_fee)
    seed(tmp_path)
    incident = Escrow.objects.get(escrow_id="ES101325WZY2")
    assert incident.total_due == Decimal("96.74")
    assert incident.status == EscrowStatus.PAYMENT_PENDING
    assert_ledger_balanced()


@pytest.mark.django_db
def test_seed_refuses_without_debug_unless_forced(tmp_path, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        call_command("escrow_seed_demo", "--password-file", str(tmp_path / "pw"), stdout=StringIO())
    assert not Escrow.objects.exists()
    assert not get_user_model().objects.exists()


@pytest.mark.django_db
def test_seed_dry_run_writes_nothing(tmp_path):
    output = seed(tmp_path, "--dry-run")
    assert "would create" in output
    assert not Escrow.objects.exists()
    assert not Transfer.objects.exists()
    assert not get_user_model().objects.exists()
    assert not (tmp_path / "pw").exists()


@pytest.mark.django_db
def test_seed_resets_a_lost_password(tmp_path):
    seed(tmp_path)
    (tmp_path / "pw").unlink()
    output = seed(tmp_path)
    password = (tmp_path / "pw").read_text().strip()
    assert "password reset" in output
    assert authenticate(username="admin", password=password) is not None


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration():
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit:
        pytest.fail(f"models changed without a migration:\n{out.getvalue()}")


@pytest.mark.django_db(transaction=True)
def test_the_integrity_checker_finds_nothing_wrong_with_the_demo(tmp_path):
    seed(tmp_path)
    out = StringIO()
    call_command("wallets_check", "--json", stdout=out)  # raises on a failed check
    report = json.loads(out.getvalue())
    failed = [c["name"] for c in report["checks"] if c["status"] not in ("ok", "warning")]
    assert failed == []

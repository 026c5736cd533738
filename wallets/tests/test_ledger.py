"""The ledger: posting, idempotency, validation, overdraft guards, append-only rows, reversal."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection

from escrowsite.errors import IdempotencyConflict, InsufficientFunds, LedgerError
from wallets import ledger
from wallets.models import Account, AccountKind, Transfer, TransferKind
from wallets.tests.factories import fund, funded_wallet, holding_account
from wallets.tests.helpers import ledger_state, refused

D = Decimal
pytestmark = pytest.mark.django_db


def balance(account: Account) -> Decimal:
    return Account.objects.values_list("balance", flat=True).get(pk=account.pk)


def pay(debit: Account, credit: Account, amount: Decimal, key: str, **kwargs) -> Transfer:
    return ledger.post_transfer(
        debit=debit,
        credit=credit,
        amount=amount,
        kind=kwargs.pop("kind", TransferKind.STAFF_ADJUSTMENT),
        idempotency_key=key,
        **kwargs,
    )


# --- posting ---------------------------------------------------------------------------


def test_a_transfer_moves_money_and_is_recorded():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()

    transfer = pay(alice, bob, D("3.50"), "t1", memo="rent")

    assert (balance(alice), balance(bob)) == (D("6.50"), D("3.50"))
    row = Transfer.objects.get(pk=transfer.pk)
    assert (row.debit_account_id, row.credit_account_id) == (alice.pk, bob.pk)
    assert (row.amount, row.currency, row.kind, row.memo) == (
        D("3.50"),
        "USD",
        "staff_adjustment",
        "rent",
    )


def test_system_accounts_may_go_negative_but_balances_sum_to_zero():
    wallet = funded_wallet(D("25.00"))
    clearing = ledger.clearing_account(provider="testpay")

    assert balance(clearing) == D("-25.00")
    assert balance(wallet) == D("25.00")


def test_legs_of_one_posting_are_all_or_nothing():
    alice, bob, carol = funded_wallet(D("5.00")), funded_wallet(), funded_wallet()
    before = ledger_state()

    with refused(InsufficientFunds):
        ledger.post_transfers(
            [
                ledger.Leg(alice, bob, D("5.00"), TransferKind.STAFF_ADJUSTMENT, "ok-leg"),
                ledger.Leg(bob, carol, D("9.00"), TransferKind.STAFF_ADJUSTMENT, "overdraft-leg"),
            ]
        )

    assert ledger_state() == before


def test_a_posting_is_checked_on_each_account_net_change():
    """A wallet may pass on, in the same posting, money it receives in that posting."""
    alice, bob, carol = funded_wallet(D("5.00")), funded_wallet(), funded_wallet()

    transfers = ledger.post_transfers(
        [
            ledger.Leg(bob, carol, D("4.00"), TransferKind.STAFF_ADJUSTMENT, "b-to-c"),
            ledger.Leg(alice, bob, D("5.00"), TransferKind.STAFF_ADJUSTMENT, "a-to-b"),
        ]
    )

    assert [t.idempotency_key for t in transfers] == ["b-to-c", "a-to-b"]
    assert (balance(alice), balance(bob), balance(carol)) == (D("0"), D("1.00"), D("4.00"))


# --- idempotency -----------------------------------------------------------------------


def test_same_key_and_fields_returns_the_first_transfer_and_moves_nothing():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    first = pay(alice, bob, D("4.00"), "once")
    before = ledger_state()

    again = pay(alice, bob, D("4.00"), "once")

    assert again.pk == first.pk
    assert ledger_state() == before
    assert (balance(alice), balance(bob)) == (D("6.00"), D("4.00"))


def test_a_replay_is_not_refused_after_the_money_was_spent():
    alice, bob, carol = funded_wallet(D("4.00")), funded_wallet(), funded_wallet()
    first = pay(alice, bob, D("4.00"), "pay-bob")
    pay(bob, carol, D("4.00"), "bob-pays-carol")

    assert pay(alice, bob, D("4.00"), "pay-bob").pk == first.pk


@pytest.mark.parametrize(
    "change",
    ["amount", "credit", "debit", "kind"],
)
def test_same_key_with_different_fields_is_a_conflict_and_writes_nothing(change):
    alice, bob, carol = funded_wallet(D("10.00")), funded_wallet(), funded_wallet()
    first = pay(alice, bob, D("4.00"), "k")
    args = {
        "debit": alice,
        "credit": bob,
        "amount": D("4.00"),
        "kind": TransferKind.STAFF_ADJUSTMENT,
    }
    args |= {
        "amount": {"amount": D("4.01")},
        "credit": {"credit": carol},
        "debit": {"debit": carol},
        "kind": {"kind": TransferKind.FEE},
    }[change]
    fund(carol, D("10.00"))
    before = ledger_state()

    with refused(IdempotencyConflict) as info:
        ledger.post_transfer(idempotency_key="k", **args)

    assert info.value.extra == {"existing_transfer_id": first.pk}
    assert ledger_state() == before


def test_one_conflicting_leg_refuses_the_whole_posting():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    pay(alice, bob, D("1.00"), "used")
    before = ledger_state()

    with refused(IdempotencyConflict):
        ledger.post_transfers(
            [
                ledger.Leg(alice, bob, D("2.00"), TransferKind.STAFF_ADJUSTMENT, "fresh"),
                ledger.Leg(alice, bob, D("9.00"), TransferKind.STAFF_ADJUSTMENT, "used"),
            ]
        )

    assert ledger_state() == before


def test_a_key_repeated_within_one_posting_is_refused():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    leg = ledger.Leg(alice, bob, D("1.00"), TransferKind.STAFF_ADJUSTMENT, "twice")

    with refused(LedgerError, match="repeat"):
        ledger.post_transfers([leg, leg])

    assert balance(alice) == D("10.00")


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [
        D("0"),
        D("0.00"),
        D("-0.00"),
        D("-1.00"),
        D("0.001"),
        D("1.005"),
        D("NaN"),
        D("Infinity"),
        D("1E+18"),
        D("1E+40"),
        1.5,
        1,
        "1.00",
        None,
    ],
    ids=repr,
)
def test_amounts_that_are_not_positive_whole_cents_in_decimal_are_refused(amount):
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    before = ledger_state()

    with refused(LedgerError):
        pay(alice, bob, amount, "bad-amount")

    assert ledger_state() == before


def test_the_largest_storable_amount_is_accepted():
    clearing, wallet = ledger.clearing_account(provider="big"), funded_wallet()

    pay(clearing, wallet, ledger.MAX_AMOUNT, "max")

    assert balance(wallet) == D("999999999999999999.99") == ledger.MAX_AMOUNT


def test_debit_and_credit_must_differ():
    alice = funded_wallet(D("10.00"))

    with refused(LedgerError, match="differ"):
        pay(alice, alice, D("1.00"), "self")

    assert not Transfer.objects.filter(idempotency_key="self").exists()


def test_the_database_refuses_a_transfer_to_the_same_account():
    alice = funded_wallet(D("10.00"))

    with refused(IntegrityError, match="transfer_accounts_differ"):
        Transfer.objects.create(
            kind=TransferKind.FEE,
            amount=D("1.00"),
            debit_account=alice,
            credit_account=alice,
            idempotency_key="raw-self",
        )


def test_accounts_in_different_currencies_are_refused():
    usd = funded_wallet(D("10.00"))
    eur = ledger.customer_wallet(customer=usd.customer_id, currency="EUR")

    with refused(LedgerError, match="currencies"):
        pay(usd, eur, D("1.00"), "fx")


def test_an_idempotency_key_is_required():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()

    with refused(LedgerError, match="idempotency key"):
        pay(alice, bob, D("1.00"), "")


# --- insufficient funds ----------------------------------------------------------------


def test_a_wallet_can_be_emptied_but_not_overdrawn():
    alice, bob = funded_wallet(D("5.00")), funded_wallet()
    before = ledger_state()

    with refused(InsufficientFunds) as info:
        pay(alice, bob, D("5.01"), "too-much")

    assert ledger_state() == before
    assert info.value.extra == {"account_id": alice.pk, "balance": "5.00"}
    pay(alice, bob, D("5.00"), "all-of-it")
    assert balance(alice) == D("0.00")


def test_an_escrow_holding_cannot_pay_out_more_than_it_holds():
    holding, seller = holding_account(), funded_wallet()
    fund(holding, D("10.00"))
    before = ledger_state()

    with refused(InsufficientFunds):
        pay(holding, seller, D("10.01"), "release-too-much", kind=TransferKind.ESCROW_RELEASE)

    assert ledger_state() == before


@pytest.mark.parametrize("kind", ["wallet", "holding"])
def test_the_database_refuses_a_negative_guarded_balance_written_by_hand(kind):
    account = funded_wallet(D("1.00")) if kind == "wallet" else holding_account()

    with (
        refused(IntegrityError, match="account_balance_non_negative"),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "UPDATE wallets_account SET balance = balance - 2 WHERE id = %s", [account.pk]
        )


def test_the_database_allows_system_accounts_to_go_negative():
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)

    with connection.cursor() as cursor:
        cursor.execute("UPDATE wallets_account SET balance = -5 WHERE id = %s", [revenue.pk])

    assert balance(revenue) == D("-5.00")


def test_the_database_stops_an_overdraft_if_the_python_check_is_bypassed(monkeypatch):
    """The CHECK constraint is the first line: without the ledger's check it still holds."""
    alice, bob = funded_wallet(D("5.00")), funded_wallet()
    monkeypatch.setattr(ledger, "NON_NEGATIVE_KINDS", ())
    before = ledger_state()

    with refused(IntegrityError, match="account_balance_non_negative"):
        pay(alice, bob, D("6.00"), "bypass")

    assert ledger_state() == before


# --- append-only -----------------------------------------------------------------------


@pytest.fixture
def transfer() -> Transfer:
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    return pay(alice, bob, D("2.00"), "immutable")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE wallets_transfer SET amount = 200 WHERE id = %s",
        "UPDATE wallets_transfer SET memo = 'edited' WHERE id = %s",
        "DELETE FROM wallets_transfer WHERE id = %s",
    ],
)
def test_raw_sql_cannot_change_or_delete_a_transfer(transfer, sql):
    before = ledger_state()

    with (
        refused(IntegrityError, match="wallets_transfer is append-only"),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [transfer.pk])

    assert ledger_state() == before


@pytest.mark.parametrize(
    "change",
    [
        lambda t: Transfer.objects.filter(pk=t.pk).update(amount=D("200.00")),
        lambda t: Transfer.objects.filter(pk=t.pk).delete(),
        lambda t: t.delete(),
        lambda t: setattr(t, "memo", "edited") or t.save(),
    ],
    ids=["queryset-update", "queryset-delete", "instance-delete", "instance-save"],
)
def test_the_orm_cannot_change_or_delete_a_transfer(transfer, change):
    before = ledger_state()

    with refused(IntegrityError, match="append-only"):
        change(transfer)

    assert ledger_state() == before


# --- reversal --------------------------------------------------------------------------


def test_a_reversal_posts_the_opposite_transfer():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    original = pay(alice, bob, D("3.00"), "to-reverse")

    reversal = ledger.reverse_transfer(transfer=original, idempotency_key="undo", memo="mistake")

    assert (balance(alice), balance(bob)) == (D("10.00"), D("0.00"))
    assert (reversal.debit_account_id, reversal.credit_account_id) == (bob.pk, alice.pk)
    assert (reversal.kind, reversal.amount, reversal.reverses_id) == (
        "reversal",
        D("3.00"),
        original.pk,
    )
    assert Transfer.objects.get(pk=original.pk).reversed_by.pk == reversal.pk


def test_replaying_a_reversal_returns_it_and_moves_nothing():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    original = pay(alice, bob, D("3.00"), "to-reverse")
    first = ledger.reverse_transfer(transfer=original, idempotency_key="undo")
    before = ledger_state()

    assert ledger.reverse_transfer(transfer=original, idempotency_key="undo").pk == first.pk
    assert ledger_state() == before


def test_a_transfer_can_be_reversed_only_once():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    original = pay(alice, bob, D("3.00"), "to-reverse")
    first = ledger.reverse_transfer(transfer=original, idempotency_key="undo-1")
    before = ledger_state()

    with refused(LedgerError, match="already reversed") as info:
        ledger.reverse_transfer(transfer=original, idempotency_key="undo-2")

    assert info.value.extra == {"transfer_id": original.pk, "reversal_id": first.pk}
    assert ledger_state() == before


def test_a_key_of_one_reversal_cannot_be_reused_for_another():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    one = pay(alice, bob, D("3.00"), "one")
    two = pay(alice, bob, D("3.00"), "two")
    ledger.reverse_transfer(transfer=one, idempotency_key="undo")

    with refused(IdempotencyConflict):
        ledger.reverse_transfer(transfer=two, idempotency_key="undo")

    assert balance(bob) == D("3.00")


def test_a_payout_the_recipient_already_spent_cannot_be_reversed():
    alice, bob, carol = funded_wallet(D("10.00")), funded_wallet(), funded_wallet()
    original = pay(alice, bob, D("3.00"), "paid")
    pay(bob, carol, D("2.00"), "spent")
    before = ledger_state()

    with refused(InsufficientFunds):
        ledger.reverse_transfer(transfer=original, idempotency_key="undo")

    assert ledger_state() == before


def test_a_reversal_can_itself_be_reversed():
    alice, bob = funded_wallet(D("10.00")), funded_wallet()
    original = pay(alice, bob, D("3.00"), "pay")
    reversal = ledger.reverse_transfer(transfer=original, idempotency_key="undo")

    ledger.reverse_transfer(transfer=reversal, idempotency_key="redo")

    assert (balance(alice), balance(bob)) == (D("7.00"), D("3.00"))

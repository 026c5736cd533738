"""Invariant selectors: silent on a sound ledger, and loud when it is broken on purpose."""

from decimal import Decimal

import pytest
from django.db import connection

from wallets import ledger, selectors
from wallets.models import Account, AccountKind, Transfer, TransferKind
from wallets.tests.factories import fund, funded_wallet, holding_account

D = Decimal
pytestmark = pytest.mark.django_db


def raw(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.fixture
def busy_ledger() -> dict[str, Account]:
    """Wallets, a holding, revenue and clearing with a few ordinary movements and a reversal."""
    alice, bob = funded_wallet(D("50.00")), funded_wallet(D("5.00"))
    holding = holding_account()
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)
    ledger.post_transfers(
        [
            ledger.Leg(alice, holding, D("30.00"), TransferKind.ESCROW_PAYMENT, "pay"),
            ledger.Leg(bob, alice, D("5.00"), TransferKind.STAFF_ADJUSTMENT, "b-a"),
        ]
    )
    ledger.post_transfers(
        [
            ledger.Leg(holding, bob, D("28.50"), TransferKind.ESCROW_RELEASE, "release"),
            ledger.Leg(holding, revenue, D("1.50"), TransferKind.FEE, "fee"),
        ]
    )
    ledger.reverse_transfer(
        transfer=Transfer.objects.get(idempotency_key="b-a"), idempotency_key="r"
    )
    return {"alice": alice, "bob": bob, "holding": holding, "revenue": revenue}


def test_a_sound_ledger_has_no_violations(busy_ledger):
    violations = selectors.ledger_violations()

    assert not violations
    assert violations == selectors.LedgerViolations()


def test_a_hand_edited_balance_is_stale_and_unbalances_its_currency(busy_ledger):
    alice = busy_ledger["alice"]
    raw("UPDATE wallets_account SET balance = balance + 1 WHERE id = %s", [alice.pk])

    assert selectors.stale_balance_violations() == [alice.pk]
    assert selectors.unbalanced_currency_violations() == {"USD": D("1.00")}
    assert selectors.ledger_violations()


def test_offsetting_hand_edits_keep_the_sum_but_are_both_stale(busy_ledger):
    """Staff 'crediting a wallet with SQL' from revenue: balanced, yet no ledger row."""
    bob, revenue = busy_ledger["bob"], busy_ledger["revenue"]
    raw("UPDATE wallets_account SET balance = balance + 10 WHERE id = %s", [bob.pk])
    raw("UPDATE wallets_account SET balance = balance - 10 WHERE id = %s", [revenue.pk])

    assert selectors.unbalanced_currency_violations() == {}
    assert selectors.stale_balance_violations() == sorted([bob.pk, revenue.pk])


def test_an_account_without_transfers_must_have_a_zero_balance():
    empty = ledger.customer_wallet(customer=funded_wallet().customer_id, currency="EUR")
    assert selectors.stale_balance_violations() == []

    raw("UPDATE wallets_account SET balance = 3 WHERE id = %s", [empty.pk])

    assert selectors.stale_balance_violations() == [empty.pk]
    assert selectors.unbalanced_currency_violations() == {"EUR": D("3.00")}


def test_balances_are_summed_per_currency_not_across_currencies():
    usd = funded_wallet(D("5.00"))
    eur = ledger.customer_wallet(customer=usd.customer_id, currency="EUR")
    fund_eur = ledger.clearing_account(provider="testpay", currency="EUR")
    ledger.post_transfer(
        debit=fund_eur,
        credit=eur,
        amount=D("5.00"),
        kind=TransferKind.LATE_PAYMENT_CREDIT,
        idempotency_key="eur-in",
    )
    # Moving the USD clearing balance onto EUR keeps the grand total at zero.
    usd_clearing = ledger.clearing_account(provider="testpay")
    raw("UPDATE wallets_account SET balance = balance + 5 WHERE id = %s", [usd_clearing.pk])
    raw("UPDATE wallets_account SET balance = balance - 5 WHERE id = %s", [fund_eur.pk])

    assert selectors.unbalanced_currency_violations() == {"USD": D("5.00"), "EUR": D("-5.00")}


@pytest.mark.parametrize("kind", ["wallet", "holding"])
def test_a_negative_guarded_account_is_reported_once_the_check_is_gone(kind):
    account = funded_wallet() if kind == "wallet" else holding_account()
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)
    # DDL is transactional in PostgreSQL: the test's rollback restores the constraint.
    # (Deferred foreign-key checks must run first, or ALTER TABLE refuses.)
    raw("SET CONSTRAINTS ALL IMMEDIATE", [])
    raw("ALTER TABLE wallets_account DROP CONSTRAINT account_balance_non_negative", [])
    raw("UPDATE wallets_account SET balance = -1 WHERE id = %s", [account.pk])
    raw("UPDATE wallets_account SET balance = -7 WHERE id = %s", [revenue.pk])

    assert selectors.negative_balance_violations() == [account.pk]


def test_a_transfer_labelled_with_another_currency_is_reported(busy_ledger):
    alice, bob = busy_ledger["alice"], busy_ledger["bob"]
    mislabelled = Transfer.objects.create(
        kind=TransferKind.STAFF_ADJUSTMENT,
        amount=D("1.00"),
        currency="EUR",
        debit_account=alice,
        credit_account=bob,
        idempotency_key="mislabelled",
    )

    assert selectors.currency_mismatch_violations() == [mislabelled.pk]
    # Written around the ledger, so the cached balances no longer match either.
    assert selectors.stale_balance_violations() == sorted([alice.pk, bob.pk])


def test_each_selector_is_one_query_whatever_the_ledger_size(
    busy_ledger, django_assert_num_queries
):
    for _ in range(5):
        fund(funded_wallet(), D("1.00"))

    with django_assert_num_queries(4):
        selectors.ledger_violations()


def test_wallet_balance_is_zero_for_a_wallet_never_opened():
    alice = funded_wallet(D("2.50"))

    assert selectors.wallet_balance(customer_id=alice.customer_id, currency="USD") == D("2.50")
    assert selectors.wallet_balance(customer_id=alice.customer_id, currency="EUR") == D("0.00")

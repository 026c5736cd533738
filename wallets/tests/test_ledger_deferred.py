"""deferred_system_balances: system accounts' UPDATEs move to the end of the unit of work."""

from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from wallets import ledger
from wallets.models import Account, AccountKind, TransferKind
from wallets.selectors import ledger_violations


def pay_in(amount: str, key: str) -> None:
    ledger.post_transfer(
        debit=ledger.clearing_account(provider="dynopay"),
        credit=ledger.customer_wallet(customer=77),
        amount=Decimal(amount),
        kind=TransferKind.ESCROW_PAYMENT,
        idempotency_key=key,
    )


@pytest.mark.django_db
def test_system_balance_changes_are_the_last_statements_and_add_up():
    clearing = ledger.clearing_account(provider="dynopay")
    wallet = ledger.customer_wallet(customer=77)
    with (
        CaptureQueriesContext(connection) as queries,
        transaction.atomic(),
        ledger.deferred_system_balances(),
    ):
        pay_in("10.00", "k1")
        pay_in("2.50", "k2")
        # The wallet moved at once (its non-negative check needs the real balance)...
        assert Account.objects.get(pk=wallet.pk).balance == Decimal("12.50")
        # ...the clearing account not yet.
        assert Account.objects.get(pk=clearing.pk).balance == 0
    last = [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ][-1]
    assert last.startswith('UPDATE "wallets_account"') and f"= {clearing.pk}" in last
    assert Account.objects.get(pk=clearing.pk).balance == Decimal("-12.50")
    assert not ledger_violations()


@pytest.mark.django_db
def test_nothing_is_flushed_when_the_block_raises():
    clearing = ledger.clearing_account(provider="dynopay")
    with pytest.raises(RuntimeError), transaction.atomic(), ledger.deferred_system_balances():
        pay_in("10.00", "k1")
        raise RuntimeError("boom")
    assert Account.objects.get(pk=clearing.pk).balance == 0
    assert not ledger_violations()


@pytest.mark.django_db
def test_nested_blocks_flush_once_at_the_outermost():
    clearing = ledger.clearing_account(provider="dynopay")
    with transaction.atomic(), ledger.deferred_system_balances():
        with ledger.deferred_system_balances():
            pay_in("1.00", "k1")
        assert Account.objects.get(pk=clearing.pk).balance == 0
    assert Account.objects.get(pk=clearing.pk).balance == Decimal("-1.00")


def test_deferring_outside_a_transaction_is_refused():
    with (
        pytest.raises(RuntimeError, match="enclosing transaction"),
        ledger.deferred_system_balances(),
    ):
        pass


@pytest.mark.django_db
def test_suspense_and_revenue_are_deferred_too():
    suspense = ledger.system_account(kind=AccountKind.SUSPENSE)
    with transaction.atomic(), ledger.deferred_system_balances():
        ledger.post_transfer(
            debit=ledger.clearing_account(provider="dynopay"),
            credit=suspense,
            amount=Decimal("3.00"),
            kind=TransferKind.SUSPENSE,
            idempotency_key="s1",
        )
        assert Account.objects.get(pk=suspense.pk).balance == 0
    assert Account.objects.get(pk=suspense.pk).balance == Decimal("3.00")
    assert not ledger_violations()


@pytest.mark.django_db
def test_changes_posted_in_a_rolled_back_savepoint_are_discarded_with_it():
    """Found by the webhook fuzz: a business refusal rolls back a savepoint after the
    transfers were posted; the deferred clearing change must vanish with them."""
    clearing = ledger.clearing_account(provider="dynopay")
    with transaction.atomic(), ledger.deferred_system_balances():
        pay_in("5.00", "kept")
        with pytest.raises(RuntimeError), transaction.atomic():
            pay_in("7.00", "rolled-back")
            raise RuntimeError("refused")
    assert Account.objects.get(pk=clearing.pk).balance == Decimal("-5.00")
    assert not ledger_violations()

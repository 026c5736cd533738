"""Many threads, each with its own database connection, posting against the same accounts."""

import random
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from escrowsite.errors import ApplicationError, InsufficientFunds, LedgerError
from wallets import ledger, selectors, services
from wallets.models import Account, AccountKind, AdjustmentRequest, Transfer, TransferKind
from wallets.tests.factories import StaffUserFactory, funded_wallet

D = Decimal
THREADS = 8
pytestmark = pytest.mark.django_db(transaction=True)


def run_concurrently(work: list[Callable[[], Any]]) -> list[tuple[str, Any]]:
    """Run each callable in its own thread, released together; ("ok", result) or ("error", exc).

    Every thread closes its connection, so no session outlives the test.
    """
    barrier = threading.Barrier(len(work))
    results: list[tuple[str, Any]] = [("missing", None)] * len(work)

    def runner(index: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which asserts on it
            results[index] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=runner, args=(i, fn)) for i, fn in enumerate(work)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"
    return results


def balance(account: Account) -> Decimal:
    return Account.objects.values_list("balance", flat=True).get(pk=account.pk)


def test_many_threads_draining_one_wallet_never_overdraw_it_or_deadlock():
    """Each attempt takes 1.00 from the shared wallet and shuffles money between other
    wallets and system accounts, its legs listed in a random order, so that without the
    ledger's global lock order two attempts would lock the same rows in opposite orders.
    """
    shared = funded_wallet(D("10.00"))
    a, b = funded_wallet(D("100.00")), funded_wallet(D("100.00"))
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE)
    suspense = ledger.system_account(kind=AccountKind.SUSPENSE)
    attempts_per_thread = 5

    def attempt_all(thread_no: int) -> Callable[[], dict[str, int]]:
        def work() -> dict[str, int]:
            rng = random.Random(thread_no)
            counts = {"posted": 0, "refused": 0}
            for n in range(attempts_per_thread):
                key = f"t{thread_no}:{n}"
                legs = [
                    ledger.Leg(shared, a, D("1.00"), TransferKind.STAFF_ADJUSTMENT, f"{key}:s"),
                    ledger.Leg(a, b, D("0.30"), TransferKind.STAFF_ADJUSTMENT, f"{key}:ab"),
                    ledger.Leg(b, a, D("0.20"), TransferKind.STAFF_ADJUSTMENT, f"{key}:ba"),
                    ledger.Leg(b, revenue, D("0.05"), TransferKind.FEE, f"{key}:fee"),
                    ledger.Leg(revenue, suspense, D("0.01"), TransferKind.SUSPENSE, f"{key}:rs"),
                    ledger.Leg(suspense, a, D("0.02"), TransferKind.SUSPENSE, f"{key}:sa"),
                ]
                rng.shuffle(legs)
                try:
                    with transaction.atomic(durable=True):
                        ledger.post_transfers(legs)
                    counts["posted"] += 1
                except InsufficientFunds:
                    counts["refused"] += 1
            return counts

        return work

    results = run_concurrently([attempt_all(i) for i in range(THREADS)])

    errors = [value for status, value in results if status != "ok"]
    assert errors == []
    posted = sum(value["posted"] for _, value in results)
    refused = sum(value["refused"] for _, value in results)
    assert (posted, refused) == (10, THREADS * attempts_per_thread - 10)
    assert balance(shared) == D("0.00")
    assert balance(a) == D("100.00") + posted * (D("1.00") - D("0.30") + D("0.20") + D("0.02"))
    assert balance(b) == D("100.00") + posted * (D("0.30") - D("0.20") - D("0.05"))
    assert Transfer.objects.filter(debit_account=shared).count() == 10
    assert not selectors.ledger_violations()


def test_the_same_transfer_posted_from_many_threads_moves_money_once():
    payer, payee = funded_wallet(D("10.00")), funded_wallet()

    def post() -> int:
        with transaction.atomic(durable=True):
            return ledger.post_transfer(
                debit=payer,
                credit=payee,
                amount=D("4.00"),
                kind=TransferKind.STAFF_ADJUSTMENT,
                idempotency_key="double-click",
            ).pk

    results = run_concurrently([post] * THREADS)

    assert [status for status, _ in results] == ["ok"] * THREADS
    assert len({pk for _, pk in results}) == 1
    assert (balance(payer), balance(payee)) == (D("6.00"), D("4.00"))
    assert not selectors.ledger_violations()


def test_concurrent_reversals_of_one_transfer_reverse_it_once():
    payer, payee = funded_wallet(D("10.00")), funded_wallet()
    original = ledger.post_transfer(
        debit=payer,
        credit=payee,
        amount=D("4.00"),
        kind=TransferKind.STAFF_ADJUSTMENT,
        idempotency_key="to-undo",
    )

    def reverse(n: int) -> Callable[[], int]:
        def work() -> int:
            with transaction.atomic(durable=True):
                return ledger.reverse_transfer(transfer=original, idempotency_key=f"undo-{n}").pk

        return work

    results = run_concurrently([reverse(n) for n in range(THREADS)])

    assert [status for status, _ in results].count("ok") == 1
    failures = [value for status, value in results if status == "error"]
    assert all(isinstance(exc, LedgerError) for exc in failures), failures
    assert all("already reversed" in str(exc) for exc in failures), failures
    assert (balance(payer), balance(payee)) == (D("10.00"), D("0.00"))
    assert not selectors.ledger_violations()


def test_two_staff_approving_one_request_at_once_post_it_once():
    requester = StaffUserFactory(username="requester")
    approvers = [StaffUserFactory(username=f"approver{n}") for n in range(2)]
    wallet = funded_wallet()
    request = services.adjust_wallet(
        customer_id=wallet.customer_id,
        amount=D("500.00"),
        reason="lost deposit",
        actor_id=requester.pk,
    ).request

    def approve(actor_id: int) -> Callable[[], str]:
        def work() -> str:
            with transaction.atomic(durable=True):
                services.approve_adjustment(request_id=request.pk, actor_id=actor_id, reason="ok")
            return "approved"

        return work

    results = run_concurrently([approve(user.pk) for user in approvers])

    assert sorted(status for status, _ in results) == ["error", "ok"]
    error = next(value for status, value in results if status == "error")
    assert isinstance(error, ApplicationError) and "already approved" in error.message
    assert selectors.wallet_balance(customer_id=wallet.customer_id, currency="USD") == D("500.00")
    assert AdjustmentRequest.objects.get().status == "approved"
    assert not selectors.ledger_violations()

"""Racing payouts from separate threads and connections end with exactly one payout."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, transaction

from escrow import services
from escrow.models import Escrow, EscrowStatus
from escrow.tests.factories import escrow_in_status, make_escrow, pay
from escrow.tests.helpers import assert_ledger_balanced, holding_balance, revenue, wallet
from escrowsite.errors import IllegalTransition
from wallets.models import Transfer, TransferKind

ROUNDS = 5


def race(*calls: Callable[[], Escrow]) -> list[BaseException | None]:
    """Run the calls at the same moment, each in its own durable transaction and
    connection; return each call's exception (None if it succeeded)."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Escrow]) -> Escrow:
        try:
            barrier.wait(timeout=10)
            with transaction.atomic(durable=True):
                return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [f.exception(timeout=30) for f in futures]


def payouts(escrow: Escrow) -> list[str]:
    return list(
        Transfer.objects.filter(
            escrow=escrow, kind__in=[TransferKind.ESCROW_RELEASE, TransferKind.ESCROW_REFUND]
        ).values_list("kind", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_releases_pay_the_seller_once():
    for _ in range(ROUNDS):
        escrow = escrow_in_status(EscrowStatus.DELIVERED)
        eid = escrow.escrow_id
        errors = race(
            lambda eid=eid: services.release_escrow(escrow_id=eid, source="bot"),
            lambda eid=eid: services.release_escrow(escrow_id=eid, source="sweep"),
        )
        assert sorted(type(e).__name__ for e in errors) == ["IllegalTransition", "NoneType"]
        refused = next(e for e in errors if e is not None)
        assert refused.extra == {"escrow_id": eid, "from": "completed", "to": "completed"}
        escrow.refresh_from_db()
        assert escrow.status == EscrowStatus.COMPLETED
        assert payouts(escrow) == [TransferKind.ESCROW_RELEASE]
        assert wallet(escrow.seller_id) == Decimal("92.13")
        assert holding_balance(escrow) == 0
    assert revenue() == Decimal("4.61") * ROUNDS
    assert_ledger_balanced()


@pytest.mark.django_db(transaction=True)
def test_refund_racing_release_pays_exactly_one_side():
    winners = set()
    for _ in range(ROUNDS):
        escrow = escrow_in_status(EscrowStatus.ACTIVE)
        eid = escrow.escrow_id
        errors = race(
            lambda eid=eid: services.release_escrow(escrow_id=eid),
            lambda eid=eid: services.refund_escrow(escrow_id=eid, reason="staff"),
        )
        assert [e is None for e in errors].count(True) == 1
        assert all(isinstance(e, IllegalTransition) for e in errors if e is not None)
        escrow.refresh_from_db()
        winners.add(escrow.status)
        if escrow.status == EscrowStatus.COMPLETED:
            assert payouts(escrow) == [TransferKind.ESCROW_RELEASE]
            assert (wallet(escrow.seller_id), wallet(escrow.buyer_id)) == (Decimal("92.13"), 0)
        else:
            assert escrow.status == EscrowStatus.REFUNDED
            assert payouts(escrow) == [TransferKind.ESCROW_REFUND]
            assert (wallet(escrow.seller_id), wallet(escrow.buyer_id)) == (0, Decimal("96.74"))
        assert holding_balance(escrow) == 0
    assert winners <= {EscrowStatus.COMPLETED, EscrowStatus.REFUNDED}
    assert_ledger_balanced()


@pytest.mark.django_db(transaction=True)
def test_payment_racing_expiry_never_loses_the_money():
    """Whichever commits first, the buyer's payment is either held or credited back."""
    for _ in range(ROUNDS):
        escrow = make_escrow()
        eid, later = escrow.escrow_id, escrow.expires_at
        errors = race(
            lambda eid=eid: pay(Escrow.objects.get(escrow_id=eid)).escrow,
            lambda eid=eid, later=later: services.expire_escrow(escrow_id=eid, now=later),
        )
        escrow.refresh_from_db()
        if escrow.status == EscrowStatus.PAYMENT_CONFIRMED:
            assert isinstance(errors[1], IllegalTransition) and errors[0] is None
            assert holding_balance(escrow) == escrow.total_due
        else:
            assert errors == [None, None]
            assert escrow.status == EscrowStatus.EXPIRED
            assert wallet(escrow.buyer_id) == escrow.total_due
    assert_ledger_balanced()

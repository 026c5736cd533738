"""Every legal and illegal move of the transition table, driven through the services."""

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from escrow import services
from escrow.models import Escrow, EscrowStatus, StatusChange
from escrow.tests.factories import escrow_in_status
from escrow.tests.helpers import assert_ledger_balanced, db_state
from escrow.transitions import TERMINAL, TRANSITIONS, can_transition, check_transition
from escrowsite.errors import IllegalTransition

S = EscrowStatus

# Written out by hand, not derived from the code, so that a changed table fails here.
EXPECTED_TABLE = {
    S.CREATED: {S.PAYMENT_PENDING, S.CANCELLED},
    S.PAYMENT_PENDING: {S.PARTIALLY_PAID, S.PAYMENT_CONFIRMED, S.CANCELLED, S.EXPIRED},
    S.PARTIALLY_PAID: {S.PAYMENT_CONFIRMED, S.REFUNDED},
    S.PAYMENT_CONFIRMED: {S.ACTIVE, S.REFUNDED, S.DISPUTED},
    S.ACTIVE: {S.DELIVERED, S.COMPLETED, S.DISPUTED, S.REFUNDED},
    S.DELIVERED: {S.COMPLETED, S.DISPUTED},
    S.DISPUTED: {S.COMPLETED, S.REFUNDED},
    S.COMPLETED: set(),
    S.REFUNDED: set(),
    S.CANCELLED: set(),
    S.EXPIRED: set(),
}


def _expire(e: Escrow) -> None:
    # Always past the payment window, so only the status decides.
    now = (e.expires_at or timezone.now()) + timedelta(minutes=1)
    services.expire_escrow(escrow_id=e.escrow_id, now=now)


def _split(e: Escrow) -> None:
    services.resolve_dispute(
        escrow_id=e.escrow_id,
        resolution="split",
        buyer_amount=Decimal("40.00"),
        seller_amount=Decimal("50.00"),
        reason="half delivered",
    )


# service name -> (call, the status it moves to, the statuses it may move from).
SERVICES: dict[str, tuple[Callable[[Escrow], object], str, set[str]]] = {
    "accept": (
        lambda e: services.accept_escrow(escrow_id=e.escrow_id),
        S.ACTIVE,
        {S.PAYMENT_CONFIRMED},
    ),
    "decline": (
        lambda e: services.decline_escrow(escrow_id=e.escrow_id),
        S.REFUNDED,
        {S.PAYMENT_CONFIRMED},
    ),
    "mark_delivered": (
        lambda e: services.mark_delivered(escrow_id=e.escrow_id),
        S.DELIVERED,
        {S.ACTIVE},
    ),
    # A disputed escrow is frozen: only staff resolving the dispute may release it.
    "release": (
        lambda e: services.release_escrow(escrow_id=e.escrow_id),
        S.COMPLETED,
        {S.ACTIVE, S.DELIVERED},
    ),
    "refund": (
        lambda e: services.refund_escrow(escrow_id=e.escrow_id, reason="staff refund"),
        S.REFUNDED,
        {S.PARTIALLY_PAID, S.PAYMENT_CONFIRMED, S.ACTIVE, S.DISPUTED},
    ),
    "cancel": (
        lambda e: services.cancel_escrow(escrow_id=e.escrow_id),
        S.CANCELLED,
        {S.CREATED, S.PAYMENT_PENDING},
    ),
    "expire": (_expire, S.EXPIRED, {S.PAYMENT_PENDING}),
    "open_dispute": (
        lambda e: services.open_dispute(escrow_id=e.escrow_id, reason="late"),
        S.DISPUTED,
        {S.PAYMENT_CONFIRMED, S.ACTIVE, S.DELIVERED},
    ),
    "resolve_refund": (
        lambda e: services.resolve_dispute(escrow_id=e.escrow_id, resolution="refund"),
        S.REFUNDED,
        {S.DISPUTED},
    ),
    "resolve_release": (
        lambda e: services.resolve_dispute(escrow_id=e.escrow_id, resolution="release"),
        S.COMPLETED,
        {S.DISPUTED},
    ),
    "resolve_split": (_split, S.COMPLETED, {S.DISPUTED}),
}


def test_the_table_is_the_one_we_designed():
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED_TABLE
    assert set(S.values) == set(TRANSITIONS)
    assert {S.COMPLETED, S.REFUNDED, S.CANCELLED, S.EXPIRED} == TERMINAL


@pytest.mark.parametrize("from_status", S.values)
@pytest.mark.parametrize("to_status", S.values)
def test_check_transition_matches_the_table(from_status, to_status):
    legal = to_status in EXPECTED_TABLE[from_status]
    assert can_transition(from_status, to_status) is legal
    if legal:
        check_transition(escrow_id="ESX", from_status=from_status, to_status=to_status)
    else:
        with pytest.raises(IllegalTransition) as exc:
            check_transition(escrow_id="ESX", from_status=from_status, to_status=to_status)
        assert exc.value.extra == {"escrow_id": "ESX", "from": from_status, "to": to_status}


def test_services_only_make_moves_the_table_allows_and_cover_it():
    """Each service's legal moves are table edges; together with the payment moves
    (tested in test_services_payment) they reach every edge of the table."""
    payment_moves = {
        (S.CREATED, S.PAYMENT_PENDING),
        (S.PAYMENT_PENDING, S.PARTIALLY_PAID),
        (S.PAYMENT_PENDING, S.PAYMENT_CONFIRMED),
        (S.PARTIALLY_PAID, S.PAYMENT_CONFIRMED),
    }
    covered = set(payment_moves)
    for _call, target, legal_from in SERVICES.values():
        for from_status in legal_from:
            assert target in EXPECTED_TABLE[from_status]
            covered.add((from_status, target))
    edges = {(f, t) for f, targets in EXPECTED_TABLE.items() for t in targets}
    assert covered == edges


@pytest.mark.django_db
@pytest.mark.parametrize("from_status", S.values)
@pytest.mark.parametrize("service", SERVICES)
def test_service_moves_or_refuses_and_writes_nothing(service, from_status):
    call, target, legal_from = SERVICES[service]
    escrow = escrow_in_status(from_status)
    history = StatusChange.objects.filter(escrow=escrow).count()
    if from_status in legal_from:
        call(escrow)
        escrow.refresh_from_db()
        assert escrow.status == target
        assert escrow.status_changed_at is not None
        last = StatusChange.objects.filter(escrow=escrow).latest("pk")
        assert (last.from_status, last.to_status) == (from_status, target)
        assert StatusChange.objects.filter(escrow=escrow).count() == history + 1
    else:
        before = db_state()
        with pytest.raises(IllegalTransition) as exc:
            call(escrow)
        assert exc.value.extra["from"] == from_status
        assert escrow.escrow_id in exc.value.message
        assert db_state() == before
    assert_ledger_balanced()

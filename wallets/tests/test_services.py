"""Staff wallet adjustments: audited ledger transfers, four-eyes approval above the limit."""

from decimal import Decimal

import pytest
from django.db import IntegrityError
from django.utils import timezone

from escrow.models import StaffAction
from escrowsite.errors import ApplicationError, IdempotencyConflict, InsufficientFunds, NotFound
from wallets import ledger, selectors, services
from wallets.models import (
    Account,
    AccountKind,
    AdjustmentRequest,
    AdjustmentStatus,
    Transaction,
    Transfer,
    TransferKind,
)
from wallets.tests.factories import CustomerFactory, StaffUserFactory, funded_wallet
from wallets.tests.helpers import ledger_state, refused

D = Decimal
pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    return StaffUserFactory(username="maria")


@pytest.fixture
def other_staff():
    return StaffUserFactory(username="omar")


@pytest.fixture
def wallet() -> Account:
    return funded_wallet(D("20.00"))


def balance_of(wallet: Account) -> Decimal:
    return selectors.wallet_balance(customer_id=wallet.customer_id, currency="USD")


def staff_account_balance() -> Decimal:
    return ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS).balance


def state() -> dict:
    """The ledger, the audit log and the requests: equal before and after = nothing written."""
    return ledger_state() | {
        "actions": list(StaffAction.objects.order_by("pk").values()),
        "requests": list(AdjustmentRequest.objects.order_by("pk").values()),
    }


# --- immediate adjustments -------------------------------------------------------------


def test_a_credit_is_a_ledger_transfer_with_a_record_and_an_audit_row(staff, wallet):
    outcome = services.adjust_wallet(
        customer_id=wallet.customer_id, amount=D("7.25"), reason="goodwill", actor_id=staff.pk
    )

    assert outcome.posted and not outcome.replayed
    assert balance_of(wallet) == outcome.balance == D("27.25")
    assert staff_account_balance() == D("-7.25")
    transfer = outcome.transfer
    assert (transfer.kind, transfer.amount, transfer.actor_id, transfer.memo) == (
        TransferKind.STAFF_ADJUSTMENT,
        D("7.25"),
        staff.pk,
        "goodwill",
    )
    assert transfer.credit_account_id == wallet.pk
    record = Transaction.objects.get(pk=outcome.record.pk)
    assert (record.type, record.amount, record.customer_id) == (
        "staff_adjustment",
        D("7.25"),
        wallet.customer_id,
    )
    assert "credit" in record.description and "goodwill" in record.description
    assert list(record.transfers.all()) == [transfer]
    action = StaffAction.objects.get()
    assert (action.actor_id, action.action, action.reason, action.escrow) == (
        staff.pk,
        "wallet_adjustment",
        "goodwill",
        None,
    )
    assert action.target == f"customer {wallet.customer_id}"
    assert action.changes | {"transaction_id": None} == {
        "customer_id": wallet.customer_id,
        "amount": "+7.25",
        "currency": "USD",
        "direction": "credit",
        "balance_before": "20.00",
        "balance_after": "27.25",
        "transfer_id": transfer.pk,
        "transaction_id": None,
    }
    assert action.changes["transaction_id"] == record.transaction_id
    assert not selectors.ledger_violations()


def test_a_debit_takes_money_back_and_the_record_amount_stays_positive(staff, wallet):
    outcome = services.adjust_wallet(
        customer_id=wallet.customer_id, amount=D("-5.00"), reason="chargeback", actor_id=staff.pk
    )

    assert balance_of(wallet) == D("15.00")
    assert staff_account_balance() == D("5.00")
    assert outcome.transfer.debit_account_id == wallet.pk
    assert outcome.record.amount == D("5.00")
    assert "debit" in outcome.record.description
    assert StaffAction.objects.get().changes["amount"] == "-5.00"
    assert not selectors.ledger_violations()


def test_a_debit_beyond_the_balance_is_refused_and_writes_nothing(staff, wallet):
    before = state()

    with refused(InsufficientFunds):
        services.adjust_wallet(
            customer_id=wallet.customer_id, amount=D("-20.01"), reason="oops", actor_id=staff.pk
        )

    assert state() == before


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_a_reason_is_required(staff, wallet, reason):
    before = state()

    with refused(ApplicationError, match="reason"):
        services.adjust_wallet(
            customer_id=wallet.customer_id, amount=D("1.00"), reason=reason, actor_id=staff.pk
        )

    assert state() == before


@pytest.mark.parametrize(
    "amount", [D("0"), D("0.00"), D("0.001"), D("NaN"), 1.0, 1, "1.00"], ids=repr
)
def test_bad_amounts_are_refused(staff, wallet, amount):
    before = state()

    with refused(ApplicationError):
        services.adjust_wallet(
            customer_id=wallet.customer_id, amount=amount, reason="x", actor_id=staff.pk
        )

    assert state() == before


def test_an_unknown_customer_is_not_created_on_the_fly(staff):
    before = state()

    with refused(NotFound, match="Customer 123 does not exist"):
        services.adjust_wallet(customer_id=123, amount=D("1.00"), reason="x", actor_id=staff.pk)

    assert state() == before


def test_only_active_staff_may_adjust(wallet):
    customer_user = StaffUserFactory(username="notstaff", is_staff=False)
    former = StaffUserFactory(username="former", is_active=False)

    for user in (customer_user, former):
        with refused(ApplicationError, match="not active staff"):
            services.adjust_wallet(
                customer_id=wallet.customer_id, amount=D("1.00"), reason="x", actor_id=user.pk
            )
    with refused(NotFound):
        services.adjust_wallet(
            customer_id=wallet.customer_id, amount=D("1.00"), reason="x", actor_id=999_999
        )
    assert balance_of(wallet) == D("20.00")


def test_a_failing_audit_write_rolls_the_money_back(staff, wallet, monkeypatch):
    """Audit and effect share one transaction: no adjustment without its audit row."""

    def broken(**kwargs):
        raise IntegrityError("audit log unavailable")

    monkeypatch.setattr(StaffAction.objects, "create", broken)
    before = state()

    with refused(IntegrityError):
        services.adjust_wallet(
            customer_id=wallet.customer_id, amount=D("3.00"), reason="x", actor_id=staff.pk
        )

    assert state() == before


# --- idempotency -----------------------------------------------------------------------


def test_a_repeated_adjustment_with_the_same_key_happens_once(staff, wallet):
    args = {
        "customer_id": wallet.customer_id,
        "amount": D("4.00"),
        "reason": "refund of ticket 7",
        "actor_id": staff.pk,
        "idempotency_key": "ticket-7",
    }
    first = services.adjust_wallet(**args)
    before = state()

    again = services.adjust_wallet(**args)

    assert again.replayed and again.posted
    assert (again.transfer.pk, again.record.pk) == (first.transfer.pk, first.record.pk)
    assert again.balance == D("24.00")
    assert state() == before


@pytest.mark.parametrize("amount", [D("4.01"), D("-4.00")])
def test_reusing_a_key_for_a_different_adjustment_is_refused(staff, wallet, amount):
    services.adjust_wallet(
        customer_id=wallet.customer_id,
        amount=D("4.00"),
        reason="x",
        actor_id=staff.pk,
        idempotency_key="k",
    )
    before = state()

    with refused(IdempotencyConflict):
        services.adjust_wallet(
            customer_id=wallet.customer_id,
            amount=amount,
            reason="x",
            actor_id=staff.pk,
            idempotency_key="k",
        )

    assert state() == before


def test_without_a_key_two_identical_adjustments_are_two_adjustments(staff, wallet):
    for _ in range(2):
        services.adjust_wallet(
            customer_id=wallet.customer_id, amount=D("1.00"), reason="x", actor_id=staff.pk
        )

    assert balance_of(wallet) == D("22.00")
    assert Transaction.objects.filter(type="staff_adjustment").count() == 2


# --- approval above the threshold ------------------------------------------------------


def request_adjustment(staff, wallet, amount: Decimal = Decimal("250.00"), **kwargs):
    return services.adjust_wallet(
        customer_id=wallet.customer_id,
        amount=amount,
        reason=kwargs.pop("reason", "lost deposit found"),
        actor_id=staff.pk,
        **kwargs,
    )


def test_an_adjustment_at_the_threshold_posts_at_once(staff, wallet):
    outcome = request_adjustment(staff, wallet, D("100.00"))

    assert outcome.posted
    assert balance_of(wallet) == D("120.00")


@pytest.mark.parametrize("amount", [D("100.01"), D("-100.01")])
def test_an_adjustment_above_the_threshold_waits_for_approval(staff, wallet, amount):
    before = ledger_state()

    outcome = request_adjustment(staff, wallet, amount)

    assert outcome.status == "pending" and outcome.transfer is None
    assert ledger_state() == before
    request = AdjustmentRequest.objects.get()
    assert (request.status, request.amount, request.requested_by_id) == (
        "pending",
        amount,
        staff.pk,
    )
    action = StaffAction.objects.get()
    assert action.action == "wallet_adjustment_requested"
    assert action.changes["request_id"] == request.pk
    assert selectors.pending_adjustment_requests() == [request]


def test_the_threshold_is_a_setting(staff, wallet, settings):
    settings.WALLET_ADJUSTMENT_APPROVAL_THRESHOLD = D("10.00")

    assert request_adjustment(staff, wallet, D("10.01")).status == "pending"
    assert request_adjustment(staff, wallet, D("10.00")).posted


def test_another_staff_member_approves_and_the_adjustment_is_posted(staff, other_staff, wallet):
    request = request_adjustment(staff, wallet).request

    outcome = services.approve_adjustment(
        request_id=request.pk, actor_id=other_staff.pk, reason="checked the deposit"
    )

    assert outcome.posted
    assert balance_of(wallet) == D("270.00")
    request.refresh_from_db()
    assert request.status == AdjustmentStatus.APPROVED
    assert (request.decided_by_id, request.transfer_id) == (other_staff.pk, outcome.transfer.pk)
    assert request.decision_reason == "checked the deposit"
    assert request.decided_at <= timezone.now()
    assert outcome.transfer.actor_id == other_staff.pk
    assert outcome.record.amount == D("250.00")
    approved = StaffAction.objects.get(action="wallet_adjustment_approved")
    assert approved.actor_id == other_staff.pk
    assert approved.changes["request_id"] == request.pk
    assert approved.changes["requested_by"] == staff.pk
    assert selectors.pending_adjustment_requests() == []
    assert not selectors.ledger_violations()


def test_the_requester_cannot_approve_their_own_request(staff, wallet):
    request = request_adjustment(staff, wallet).request
    before = state()

    with refused(ApplicationError, match="different staff member"):
        services.approve_adjustment(request_id=request.pk, actor_id=staff.pk, reason="me")

    assert state() == before


def test_a_request_is_decided_only_once(staff, other_staff, wallet):
    request = request_adjustment(staff, wallet).request
    services.approve_adjustment(request_id=request.pk, actor_id=other_staff.pk, reason="ok")
    third = StaffUserFactory(username="third")
    before = state()

    with refused(ApplicationError, match="already approved"):
        services.approve_adjustment(request_id=request.pk, actor_id=third.pk, reason="ok")
    with refused(ApplicationError, match="already approved"):
        services.reject_adjustment(request_id=request.pk, actor_id=third.pk, reason="no")

    assert state() == before
    assert balance_of(wallet) == D("270.00")


def test_a_rejected_request_moves_nothing_and_cannot_be_approved(staff, other_staff, wallet):
    request = request_adjustment(staff, wallet).request
    ledger_before = ledger_state()

    services.reject_adjustment(request_id=request.pk, actor_id=other_staff.pk, reason="no proof")

    request.refresh_from_db()
    assert (request.status, request.decided_by_id, request.transfer_id) == (
        "rejected",
        other_staff.pk,
        None,
    )
    assert StaffAction.objects.filter(action="wallet_adjustment_rejected").count() == 1
    assert ledger_state() == ledger_before
    with refused(ApplicationError, match="already rejected"):
        services.approve_adjustment(
            request_id=request.pk, actor_id=StaffUserFactory().pk, reason="x"
        )


def test_the_requester_may_withdraw_their_own_request(staff, wallet):
    request = request_adjustment(staff, wallet).request

    services.reject_adjustment(request_id=request.pk, actor_id=staff.pk, reason="typo")

    assert AdjustmentRequest.objects.get().status == "rejected"


def test_a_debit_that_no_longer_fits_stays_pending(staff, other_staff):
    wallet = funded_wallet(D("150.00"))
    request = request_adjustment(staff, wallet, D("-150.00")).request
    services.adjust_wallet(
        customer_id=wallet.customer_id, amount=D("-1.00"), reason="fee", actor_id=staff.pk
    )

    with refused(InsufficientFunds):
        services.approve_adjustment(request_id=request.pk, actor_id=other_staff.pk, reason="ok")

    assert AdjustmentRequest.objects.get().status == "pending"
    assert balance_of(wallet) == D("149.00")


def test_deciding_needs_a_reason_and_an_existing_request(staff, other_staff, wallet):
    request = request_adjustment(staff, wallet).request

    with refused(ApplicationError, match="reason"):
        services.approve_adjustment(request_id=request.pk, actor_id=other_staff.pk, reason=" ")
    with refused(NotFound):
        services.approve_adjustment(request_id=request.pk + 1, actor_id=other_staff.pk, reason="x")
    with refused(ApplicationError, match="not active staff"):
        services.approve_adjustment(
            request_id=request.pk,
            actor_id=StaffUserFactory(username="cust", is_staff=False).pk,
            reason="x",
        )
    assert AdjustmentRequest.objects.get().status == "pending"


def test_a_repeated_request_with_the_same_key_is_one_request(staff, other_staff, wallet):
    first = request_adjustment(staff, wallet, idempotency_key="big-1")
    again = request_adjustment(staff, wallet, idempotency_key="big-1")
    assert again.replayed and again.request.pk == first.request.pk
    assert AdjustmentRequest.objects.count() == 1

    services.approve_adjustment(request_id=first.request.pk, actor_id=other_staff.pk, reason="ok")
    after_approval = request_adjustment(staff, wallet, idempotency_key="big-1")

    assert after_approval.posted and after_approval.replayed
    assert balance_of(wallet) == D("270.00")
    with refused(IdempotencyConflict):
        request_adjustment(staff, wallet, D("251.00"), idempotency_key="big-1")


def test_a_key_of_a_posted_adjustment_cannot_become_a_request(staff, wallet):
    request_adjustment(staff, wallet, D("5.00"), idempotency_key="k")

    with refused(IdempotencyConflict):
        request_adjustment(staff, wallet, D("500.00"), idempotency_key="k")

    assert not AdjustmentRequest.objects.exists()


# --- database constraints on requests --------------------------------------------------


def test_the_database_refuses_self_approval_and_inconsistent_decisions(staff, other_staff, wallet):
    request = request_adjustment(staff, wallet).request
    transfer = Transfer.objects.first()
    now = timezone.now()
    pending = AdjustmentRequest.objects.filter(pk=request.pk)
    decided = {"decided_at": now, "decision_reason": "ok"}

    with refused(IntegrityError, match="adjustment_approver_not_requester"):
        pending.update(status="approved", decided_by=staff, transfer=transfer, **decided)
    with refused(IntegrityError, match="adjustment_decision_matches_status"):
        pending.update(status="approved", decided_by=other_staff, **decided)
    with refused(IntegrityError, match="adjustment_decision_matches_status"):
        pending.update(decided_by=other_staff)
    with refused(IntegrityError, match="adjustment_decision_matches_status"):
        pending.update(status="rejected", decided_by=other_staff, decided_at=now)
    with refused(IntegrityError, match="adjustment_(status_valid|decision_matches_status)"):
        pending.update(status="maybe")


@pytest.mark.parametrize(
    ("field", "value", "constraint"),
    [("amount", D("0"), "adjustment_amount_nonzero"), ("reason", "", "adjustment_reason_required")],
)
def test_the_database_refuses_empty_requests(staff, field, value, constraint):
    fields = {
        "customer": CustomerFactory(),
        "amount": D("500.00"),
        "reason": "x",
        "requested_by": staff,
    }

    with refused(IntegrityError, match=constraint):
        AdjustmentRequest.objects.create(**(fields | {field: value}))

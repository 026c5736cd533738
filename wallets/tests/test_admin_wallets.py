"""Wallets in the admin: ledger history, and adjustments with a second pair of eyes."""

from decimal import Decimal

import pytest

from escrow.models import StaffAction
from escrow.tests.admin_support import (
    action_url,
    as_finance,
    as_support,
    change_url,
    login,
    message_texts,
    staff_user,
)
from payments.tests.test_webhook import assert_ledger_balanced, snapshot, wallet
from wallets import ledger
from wallets.models import AdjustmentRequest, AdjustmentStatus, TransferKind
from wallets.tests.factories import CustomerFactory, funded_wallet


@pytest.fixture
def customer(db):
    return CustomerFactory()


def adjust(client, customer, amount: str, *, key: str = "", reason: str = "goodwill"):
    url = action_url("wallets_customer", customer.pk, "adjust")
    page = client.get(url)
    assert page.status_code == 200
    key = key or page.context["form"]["idempotency_key"].value()
    return client.post(url, {"amount": amount, "reason": reason, "idempotency_key": key})


@pytest.mark.django_db
def test_small_adjustment_posts_at_once_through_the_ledger(customer):
    finance, _ = as_finance()
    response = adjust(finance, customer, "7.35")
    assert response.status_code == 302
    assert "balance now 7.35" in " ".join(message_texts(response))
    assert wallet(customer.pk) == Decimal("7.35")
    action = StaffAction.objects.get()
    assert action.action == "wallet_adjustment" and action.changes["balance_after"] == "7.35"
    assert_ledger_balanced()


@pytest.mark.django_db
def test_submitting_the_same_form_twice_adjusts_once(customer):
    finance, _ = as_finance()
    first = adjust(finance, customer, "5.00", key="admin:same-form")
    second = adjust(finance, customer, "5.00", key="admin:same-form")
    assert first.status_code == second.status_code == 302
    assert "already submitted" in " ".join(message_texts(second))
    assert wallet(customer.pk) == Decimal("5.00")


@pytest.mark.django_db
def test_a_debit_beyond_the_balance_shows_the_error_and_moves_nothing(customer):
    finance, _ = as_finance()
    funded_wallet(Decimal("3.00"), customer_id=customer.pk)
    before = snapshot()
    response = adjust(finance, customer, "-5.00")
    assert response.status_code == 200
    assert any("cannot pay out" in m for m in message_texts(response))
    assert snapshot() == before and not StaffAction.objects.exists()


@pytest.mark.django_db
def test_large_adjustment_waits_for_a_second_staff_member(customer):
    finance, finance_user = as_finance()
    second_finance_user = staff_user("frank-finance", "Finance")
    response = adjust(finance, customer, "250.00")
    request = AdjustmentRequest.objects.get()
    assert response["Location"] == change_url("wallets_adjustmentrequest", request.pk)
    assert request.status == AdjustmentStatus.PENDING
    assert wallet(customer.pk) == Decimal("0.00")

    # The requester cannot approve their own request: the service says no, nothing moves.
    before = snapshot()
    own = finance.post(
        action_url("wallets_adjustmentrequest", request.pk, "approve"), {"reason": "me"}
    )
    assert own.status_code == 200
    assert any("different staff member" in m for m in message_texts(own))
    assert snapshot() == before

    other = login(second_finance_user)
    page = other.get(change_url("wallets_adjustmentrequest", request.pk)).content.decode()
    assert action_url("wallets_adjustmentrequest", request.pk, "approve") in page
    done = other.post(
        action_url("wallets_adjustmentrequest", request.pk, "approve"), {"reason": "checked"}
    )
    assert done.status_code == 302
    request.refresh_from_db()
    assert request.status == AdjustmentStatus.APPROVED and request.decided_by == second_finance_user
    assert wallet(customer.pk) == Decimal("250.00")
    assert_ledger_balanced()
    # Decided: no more buttons, and a second approval is refused.
    page = other.get(change_url("wallets_adjustmentrequest", request.pk)).content.decode()
    assert action_url("wallets_adjustmentrequest", request.pk, "approve") not in page
    again = other.post(
        action_url("wallets_adjustmentrequest", request.pk, "approve"), {"reason": "x"}
    )
    assert any("already approved" in m for m in message_texts(again))
    assert wallet(customer.pk) == Decimal("250.00")


@pytest.mark.django_db
def test_a_request_can_be_rejected(customer):
    finance, _ = as_finance()
    second_finance_user = staff_user("frank-finance", "Finance")
    adjust(finance, customer, "-250.00")
    request = AdjustmentRequest.objects.get()
    other = login(second_finance_user)
    done = other.post(
        action_url("wallets_adjustmentrequest", request.pk, "reject"), {"reason": "no evidence"}
    )
    assert done.status_code == 302
    request.refresh_from_db()
    assert request.status == AdjustmentStatus.REJECTED
    assert wallet(customer.pk) == Decimal("0.00")


@pytest.mark.django_db
def test_account_page_pages_through_the_ledger_history(customer):
    support = as_support()
    account = ledger.customer_wallet(customer=customer.pk)
    clearing = ledger.clearing_account(provider="testpay")
    for i in range(120):
        ledger.post_transfer(
            debit=clearing,
            credit=account,
            amount=Decimal("1.00"),
            kind=TransferKind.LATE_PAYMENT_CREDIT,
            idempotency_key=f"t{i}",
        )
    url = change_url("wallets_account", account.pk)
    first = support.get(url)
    rows = first.context["ledger"]
    assert len(rows) == 50 and rows[0][1] == Decimal("1.00")
    assert rows[0][0].pk > rows[-1][0].pk
    seen = [t.pk for t, _ in rows]
    before = first.context["ledger_next"]
    while before:
        page = support.get(f"{url}?before={before}")
        seen += [t.pk for t, _ in page.context["ledger"]]
        before = page.context["ledger_next"]
    assert len(seen) == len(set(seen)) == 120
    # The other side sees the same transfers as money out.
    clearing_page = support.get(change_url("wallets_account", clearing.pk))
    assert clearing_page.context["ledger"][0][1] == Decimal("-1.00")


@pytest.mark.django_db
def test_customer_page_shows_wallets_and_records(customer):
    finance, _ = as_finance()
    adjust(finance, customer, "7.35")
    html = finance.get(change_url("wallets_customer", customer.pk)).content.decode()
    assert 'class="wallet-balance">7.35' in html
    assert f"ADJ_{customer.pk}_" in html


@pytest.mark.django_db
def test_rejecting_a_decided_request_shows_the_error(customer):
    finance, _ = as_finance()
    adjust(finance, customer, "250.00")
    request = AdjustmentRequest.objects.get()
    other = login(staff_user("frank-finance", "Finance"))
    other.post(action_url("wallets_adjustmentrequest", request.pk, "reject"), {"reason": "no"})
    before = snapshot()
    again = other.post(
        action_url("wallets_adjustmentrequest", request.pk, "reject"), {"reason": "no"}
    )
    assert again.status_code == 200
    assert any("was already rejected" in m for m in message_texts(again))
    assert snapshot() == before
    assert StaffAction.objects.filter(action="wallet_adjustment_rejected").count() == 1

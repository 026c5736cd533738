"""Four-eyes cannot be split: one staff member's adjustments of one customer add up."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from escrow.models import StaffAction
from wallets import services
from wallets.models import AdjustmentRequest, Transfer, TransferKind
from wallets.tests.factories import StaffUserFactory, funded_wallet

D = Decimal


@pytest.fixture
def staff():
    return StaffUserFactory(username="fiona")


@pytest.fixture
def other_staff():
    return StaffUserFactory(username="felix")


def adjust(staff, wallet, amount: Decimal):
    with transaction.atomic(durable=True):
        return services.adjust_wallet(
            customer_id=wallet.customer_id, amount=amount, reason="goodwill", actor_id=staff.pk
        )


def posted_total(wallet) -> Decimal:
    wallet.refresh_from_db()
    return wallet.balance


@pytest.mark.django_db(transaction=True)
def test_five_adjustments_at_the_threshold_by_one_staff_member_post_only_the_first(staff):
    wallet = funded_wallet(D("0.00"))

    outcomes = [adjust(staff, wallet, D("100.00")) for _ in range(5)]

    assert [o.status for o in outcomes] == ["posted"] + ["pending"] * 4
    assert posted_total(wallet) == D("100.00")
    assert AdjustmentRequest.objects.filter(status="pending").count() == 4
    requested = StaffAction.objects.filter(action="wallet_adjustment_requested").first()
    assert requested.changes["recent_own_adjustments"] == "100.00"


@pytest.mark.django_db(transaction=True)
def test_debits_count_as_well_as_credits(staff):
    wallet = funded_wallet(D("500.00"))

    assert adjust(staff, wallet, D("60.00")).posted
    assert adjust(staff, wallet, D("-60.00")).status == "pending"
    assert posted_total(wallet) == D("560.00")


@pytest.mark.django_db(transaction=True)
def test_another_staff_member_and_another_customer_count_on_their_own(staff, other_staff):
    wallet, second_wallet = funded_wallet(D("0.00")), funded_wallet(D("0.00"))

    assert adjust(staff, wallet, D("100.00")).posted
    assert adjust(other_staff, wallet, D("100.00")).posted
    assert adjust(staff, second_wallet, D("100.00")).posted
    assert posted_total(wallet) == D("200.00")


@pytest.mark.django_db(transaction=True)
def test_adjustments_older_than_the_window_no_longer_count(staff, settings, monkeypatch):
    settings.WALLET_ADJUSTMENT_APPROVAL_WINDOW_HOURS = 24
    wallet = funded_wallet(D("0.00"))
    assert adjust(staff, wallet, D("100.00")).posted
    assert adjust(staff, wallet, D("1.00")).status == "pending"

    later = timezone.now() + timedelta(hours=24, minutes=1)
    monkeypatch.setattr("wallets.services.adjust.timezone.now", lambda: later)

    assert adjust(staff, wallet, D("100.00")).posted


@pytest.mark.django_db(transaction=True)
def test_an_approved_request_does_not_count_against_its_requester(staff, other_staff):
    wallet = funded_wallet(D("0.00"))
    request = adjust(staff, wallet, D("250.00")).request
    with transaction.atomic(durable=True):
        services.approve_adjustment(request_id=request.pk, actor_id=other_staff.pk, reason="ok")

    assert adjust(staff, wallet, D("100.00")).posted
    assert posted_total(wallet) == D("350.00")


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_adjustments_cannot_both_slip_under_the_threshold(staff):
    """The first is posted but not yet committed when the second starts: the second must
    wait for it and count it, not read a total that misses it."""
    wallet = funded_wallet(D("0.00"))
    first_posted, release_first = threading.Event(), threading.Event()
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with transaction.atomic(durable=True):
                outcome = services.adjust_wallet(
                    customer_id=wallet.customer_id,
                    amount=D("60.00"),
                    reason="goodwill",
                    actor_id=staff.pk,
                )
                first_posted.set()
                release_first.wait(10)
            outcomes["first"] = outcome.status
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which asserts on it
            errors.append(exc)
            first_posted.set()
        finally:
            close_old_connections()
            connection.close()

    def second() -> None:
        try:
            outcomes["second"] = adjust(staff, wallet, D("60.00")).status
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which asserts on it
            errors.append(exc)
        finally:
            connection.close()

    a = threading.Thread(target=first)
    a.start()
    assert first_posted.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.5)  # it is blocked on the customer's lock while the first is open
    release_first.set()
    a.join(10)
    b.join(10)

    assert not errors, errors
    assert outcomes == {"first": "posted", "second": "pending"}
    assert Transfer.objects.filter(kind=TransferKind.STAFF_ADJUSTMENT).count() == 1

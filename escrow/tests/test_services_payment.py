"""confirm_payment: exact, over, under (within and beyond tolerance), late, and replays."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from escrow import services
from escrow.models import Escrow, EscrowHolding, EscrowStatus, HoldingStatus, StatusChange
from escrow.tests.factories import escrow_in_status, make_escrow, make_payment, pay
from escrow.tests.helpers import assert_ledger_balanced, db_state, holding_balance, revenue, wallet
from escrowsite.errors import ApplicationError
from notifications.models import Notification
from wallets import ledger
from wallets.models import AccountKind, Transaction, Transfer, TransferKind

S = EscrowStatus
D = Decimal
BUYER = 5590563715
TX = "6462e85a-12da-403c-8eeb-e1697b9bbbe7"
NOW = datetime(2025, 10, 13, 14, 11, 40, tzinfo=UTC)


def clearing() -> Decimal:
    return ledger.clearing_account(provider="dynopay").balance


def seed_wallet(customer_id: int, amount: Decimal) -> None:
    ledger.post_transfer(
        debit=ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS),
        credit=ledger.customer_wallet(customer=customer_id),
        amount=amount,
        kind=TransferKind.STAFF_ADJUSTMENT,
        idempotency_key=f"seed:{customer_id}",
    )


def events(escrow: Escrow) -> set[tuple[str, int]]:
    return set(Notification.objects.filter(escrow=escrow).values_list("event", "customer_id"))


@pytest.mark.django_db
def test_exact_payment_confirms_and_sets_deadlines(settings):
    settings.ESCROW_SELLER_RESPONSE_HOURS = 12
    escrow = make_escrow(amount=D("92.13"), delivery_hours=36, now=NOW - timedelta(minutes=5))
    outcome = pay(escrow, D("96.74"), tx_id=TX, now=NOW, provider_payment_id="pay_1")
    assert (outcome.kind, outcome.excess, outcome.shortfall) == ("confirmed", 0, 0)
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert escrow.payment_confirmed_at == NOW
    assert escrow.delivery_deadline == NOW + timedelta(hours=36)
    assert escrow.expires_at == NOW + timedelta(hours=12)
    assert escrow.deposit_tx_hash == TX
    assert (escrow.provider, escrow.provider_payment_id) == ("dynopay", "pay_1")
    assert escrow.accepted_shortfall == 0
    holding = EscrowHolding.objects.get(escrow=escrow)
    assert holding.status == HoldingStatus.HELD
    assert holding_balance(escrow) == D("96.74")
    assert clearing() == D("-96.74")
    record = Transaction.objects.get(escrow=escrow)
    assert record.transaction_id == f"ESC_{escrow.escrow_id}_6462e85a"
    assert (record.type, record.amount, record.customer_id) == (
        "escrow_payment",
        D("96.74"),
        escrow.buyer_id,
    )
    assert (record.provider, record.external_tx_id, record.confirmed_at) == ("dynopay", TX, NOW)
    assert [(t.kind, t.amount) for t in record.transfers.all()] == [("escrow_payment", D("96.74"))]
    assert outcome.transactions == [record]
    assert events(escrow) == {
        ("offer_to_seller", escrow.seller_id),
        ("payment_confirmed", escrow.buyer_id),
    }
    change = StatusChange.objects.filter(escrow=escrow).latest("pk")
    assert (change.from_status, change.to_status, change.source) == (
        "payment_pending",
        "payment_confirmed",
        "webhook",
    )
    assert_ledger_balanced()


@pytest.mark.django_db
def test_overpayment_holds_exactly_the_total_and_credits_the_excess_once():
    """The incident: $101.00 paid on $96.74 due; the wallet had $7.35."""
    escrow = make_escrow(amount=D("92.13"), buyer_id=BUYER, escrow_id="ES101325WZY2")
    seed_wallet(BUYER, D("7.35"))
    payment = make_payment(D("101.00"), tx_id=TX, crypto_amount=D("0.9187"), crypto_currency="LTC")
    outcome = services.confirm_payment(escrow_id="ES101325WZY2", payment=payment, now=NOW)
    assert (outcome.kind, outcome.excess, outcome.shortfall) == ("confirmed", D("4.26"), 0)
    assert holding_balance(escrow) == D("96.74")
    assert wallet(BUYER) == D("11.61")
    assert sorted((t.kind, t.amount) for t in outcome.transfers) == [
        ("escrow_payment", D("96.74")),
        ("overpayment_credit", D("4.26")),
    ]
    esc = Transaction.objects.get(transaction_id="ESC_ES101325WZY2_6462e85a")
    assert (esc.amount, esc.crypto_amount, esc.crypto_currency) == (D("101.00"), D("0.9187"), "LTC")
    ovp = Transaction.objects.get(transaction_id="OVP_ES101325WZY2_6462e85a")
    assert (ovp.type, ovp.amount, ovp.customer_id) == ("overpayment_credit", D("4.26"), BUYER)
    # The coin amount belongs to the whole payment, not to the USD excess.
    assert ovp.crypto_amount is None
    assert [(t.kind, t.amount) for t in ovp.transfers.all()] == [("overpayment_credit", D("4.26"))]
    services.accept_escrow(escrow_id="ES101325WZY2")
    services.release_escrow(escrow_id="ES101325WZY2")
    # Released from exactly the total due; the excess stayed in the wallet, once.
    assert wallet(escrow.seller_id) == D("92.13")
    assert revenue() == D("4.61")
    assert wallet(BUYER) == D("11.61")
    assert holding_balance(escrow) == 0
    assert_ledger_balanced()


@pytest.mark.django_db
def test_underpayment_within_tolerance_confirms_and_the_platform_absorbs_it():
    escrow = make_escrow(amount=D("92.13"))  # 96.74 due; tolerance 1.00
    outcome = pay(escrow, D("95.74"))
    assert (outcome.kind, outcome.shortfall, outcome.excess) == ("confirmed", D("1.00"), 0)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.accepted_shortfall) == (S.PAYMENT_CONFIRMED, D("1.00"))
    assert holding_balance(escrow) == D("95.74")
    services.accept_escrow(escrow_id=escrow.escrow_id)
    services.release_escrow(escrow_id=escrow.escrow_id)
    assert wallet(escrow.seller_id) == D("92.13")
    assert revenue() == D("3.61")
    assert_ledger_balanced()


@pytest.mark.django_db
def test_platform_tops_up_when_the_shortfall_exceeds_its_fee(settings):
    settings.PAYMENT_TOLERANCE_USD = "5.00"
    escrow = make_escrow(amount=D("10.00"))  # fee 1.00, 11.00 due
    assert pay(escrow, D("7.00")).shortfall == D("4.00")
    services.accept_escrow(escrow_id=escrow.escrow_id)
    services.release_escrow(escrow_id=escrow.escrow_id)
    assert wallet(escrow.seller_id) == D("10.00")
    assert revenue() == D("-3.00")
    assert Transfer.objects.filter(kind=TransferKind.FEE_SHORTFALL, amount=D("3.00")).exists()
    assert_ledger_balanced()


@pytest.mark.django_db
def test_underpayment_beyond_tolerance_is_held_until_a_second_payment_completes_it():
    escrow = make_escrow(amount=D("92.13"))
    expires_at = escrow.expires_at
    first = pay(escrow, D("95.73"), tx_id="aaaaaaaa-1")  # one cent past the tolerance
    assert (first.kind, first.shortfall, first.excess) == ("partial", 0, 0)
    escrow.refresh_from_db()
    assert escrow.status == S.PARTIALLY_PAID
    assert escrow.payment_confirmed_at is None and escrow.delivery_deadline is None
    assert escrow.expires_at == expires_at
    assert EscrowHolding.objects.get(escrow=escrow).status == HoldingStatus.COLLECTING
    assert holding_balance(escrow) == D("95.73")
    assert ("partial_payment", escrow.buyer_id) in events(escrow)

    second = pay(escrow, D("1.01"), tx_id="bbbbbbbb-2", now=NOW)
    assert (second.kind, second.shortfall) == ("confirmed", 0)
    escrow.refresh_from_db()
    assert (escrow.status, escrow.payment_confirmed_at) == (S.PAYMENT_CONFIRMED, NOW)
    assert escrow.deposit_tx_hash == "bbbbbbbb-2"
    assert EscrowHolding.objects.get(escrow=escrow).status == HoldingStatus.HELD
    assert holding_balance(escrow) == D("96.74")
    assert set(
        Transaction.objects.filter(escrow=escrow).values_list("transaction_id", flat=True)
    ) == {
        f"ESC_{escrow.escrow_id}_aaaaaaaa",
        f"ESC_{escrow.escrow_id}_bbbbbbbb",
    }
    moves = list(StatusChange.objects.filter(escrow=escrow).values_list("to_status", flat=True))
    assert moves == ["payment_pending", "partially_paid", "payment_confirmed"]
    assert_ledger_balanced()


@pytest.mark.django_db
def test_partial_payments_that_overshoot_credit_only_the_excess():
    escrow = make_escrow(amount=D("92.13"))
    assert pay(escrow, D("30.00")).kind == "partial"
    assert pay(escrow, D("30.00")).kind == "partial"
    outcome = pay(escrow, D("50.00"))
    assert (outcome.kind, outcome.excess) == ("confirmed", D("13.26"))
    assert holding_balance(escrow) == D("96.74")
    assert wallet(escrow.buyer_id) == D("13.26")
    moves = list(StatusChange.objects.filter(escrow=escrow).values_list("to_status", flat=True))
    assert moves == ["payment_pending", "partially_paid", "payment_confirmed"]
    assert_ledger_balanced()


@pytest.mark.django_db
def test_a_payment_for_an_escrow_left_in_created_confirms_it():
    escrow = escrow_in_status(S.CREATED)
    assert pay(escrow).kind == "confirmed"
    moves = list(StatusChange.objects.filter(escrow=escrow).values_list("to_status", flat=True))
    assert moves == ["payment_pending", "payment_pending", "payment_confirmed"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status",
    [
        S.CANCELLED,
        S.EXPIRED,
        S.PAYMENT_CONFIRMED,
        S.ACTIVE,
        S.DELIVERED,
        S.DISPUTED,
        S.COMPLETED,
        S.REFUNDED,
    ],
)
def test_late_or_extra_payment_is_credited_to_the_buyer_never_rejected(status):
    escrow = escrow_in_status(status)
    before = Escrow.objects.filter(pk=escrow.pk).values().get()
    wallet_before = wallet(escrow.buyer_id)
    held_before = holding_balance(escrow) if hasattr(escrow, "holding") else None
    outcome = pay(escrow, D("96.74"), tx_id="1a7e0000-late")
    assert (outcome.kind, outcome.excess, outcome.shortfall) == ("late_credit", 0, 0)
    assert Escrow.objects.filter(pk=escrow.pk).values().get() == before
    assert wallet(escrow.buyer_id) == wallet_before + D("96.74")
    if held_before is not None:
        assert holding_balance(escrow) == held_before
    [transfer] = outcome.transfers
    assert (transfer.kind, transfer.amount) == ("late_payment_credit", D("96.74"))
    [record] = outcome.transactions
    assert record.transaction_id == f"LATE_{escrow.escrow_id}_1a7e0000"
    assert (record.type, record.amount) == ("late_payment_credit", D("96.74"))
    assert ("late_payment_credited", escrow.buyer_id) in events(escrow)
    assert_ledger_balanced()


@pytest.mark.django_db
@pytest.mark.parametrize("status", [S.PAYMENT_PENDING, S.PARTIALLY_PAID, S.PAYMENT_CONFIRMED])
def test_a_replayed_payment_moves_nothing(status):
    escrow = escrow_in_status(status)
    outcome = pay(escrow, D("20.00"), tx_id="feedface-replayed")
    before = db_state()
    again = pay(escrow, D("20.00"), tx_id="feedface-replayed")
    assert db_state() == before
    assert again.kind == "duplicate"
    assert (again.excess, again.shortfall) == (0, 0)
    assert {t.pk for t in again.transfers} == {t.pk for t in outcome.transfers}
    assert {t.pk for t in again.transactions} == {t.pk for t in outcome.transactions}


@pytest.mark.django_db
def test_one_provider_transaction_cannot_pay_two_escrows():
    first, second = make_escrow(), make_escrow()
    pay(first, tx_id="cafebabe-one")
    before = db_state()
    with pytest.raises(ApplicationError, match="already applied to escrow"):
        pay(second, tx_id="cafebabe-one")
    assert db_state() == before


@pytest.mark.django_db
def test_transaction_ids_sharing_eight_characters_get_distinct_records():
    escrow = make_escrow(amount=D("92.13"))
    pay(escrow, D("40.00"), tx_id="deadbeef-0001")
    pay(escrow, D("40.00"), tx_id="deadbeef-0002")
    ids = set(Transaction.objects.filter(escrow=escrow).values_list("transaction_id", flat=True))
    assert ids == {f"ESC_{escrow.escrow_id}_deadbeef", f"ESC_{escrow.escrow_id}_deadbeef-0002"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "tx_id", "message"),
    [
        (D("0.00"), "t1", "must be positive"),
        (D("-1.00"), "t1", "must be positive"),
        (D("0.001"), "t1", "must be positive"),
        (D("NaN"), "t1", "finite"),
        (12.5, "t1", "Decimal"),
        (D("5.00"), "", "transaction id"),
    ],
)
def test_bad_payments_are_refused_and_write_nothing(amount, tx_id, message):
    escrow = make_escrow()
    before = db_state()
    with pytest.raises(ApplicationError, match=message):
        services.confirm_payment(
            escrow_id=escrow.escrow_id,
            payment=services.IncomingPayment(provider="dynopay", tx_id=tx_id, usd_amount=amount),
        )
    assert db_state() == before


@pytest.mark.django_db
def test_payment_for_an_unknown_escrow_is_not_found():
    from escrowsite.errors import NotFound

    with pytest.raises(NotFound, match="ES000000NONE"):
        services.confirm_payment(escrow_id="ES000000NONE", payment=make_payment(D("5.00")))

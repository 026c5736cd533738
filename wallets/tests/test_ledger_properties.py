"""Property-based: random sequences of ledger operations never break its invariants.

A hypothesis state machine posts deposits, wallet-to-wallet payments, escrow payments,
releases (with a fee leg), refunds, reversals, idempotent replays, conflicting replays and
deliberately invalid postings. An independent Python model predicts each outcome (posted or
refused, and why) and every balance; after each step the database must agree with the model
and the invariant selectors must find nothing.
"""

import os
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db import transaction
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from escrowsite.errors import IdempotencyConflict, InsufficientFunds, LedgerError
from wallets import ledger, selectors
from wallets.models import NON_NEGATIVE_KINDS, Account, AccountKind, Transfer, TransferKind
from wallets.tests.factories import funded_wallet, holding_account

D = Decimal
ZERO = D("0.00")
# Kept small for CI (each step is a dozen queries); raise it locally for a deeper search.
EXAMPLES = int(os.environ.get("LEDGER_PROPERTY_EXAMPLES", "10"))
amounts = st.decimals(min_value=D("0.01"), max_value=D("80.00"), places=2)
indices = st.integers(min_value=0, max_value=10_000)
bad_amounts = st.one_of(
    st.sampled_from([D("0"), D("-0.01"), D("-5.00"), D("0.001"), D("2.345"), D("NaN")]),
    st.decimals(max_value=D("-0.01"), places=2, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.01, max_value=100, allow_nan=False),
    st.integers(min_value=1, max_value=100),
)


@dataclass
class Posted:
    """The model's memory of one transfer that was posted."""

    key: str
    debit: int
    credit: int
    amount: Decimal
    kind: str
    pk: int
    reversed: bool = False


@dataclass(frozen=True)
class World:
    """Accounts created once per test (outside the per-example savepoint), all at zero."""

    wallets: list[Account]
    holdings: list[Account]
    clearing: Account
    revenue: Account
    suspense: Account

    @property
    def all(self) -> list[Account]:
        return [*self.wallets, *self.holdings, self.clearing, self.revenue, self.suspense]


class LedgerMachine(RuleBasedStateMachine):
    world: World  # set on the subclass the test builds

    def __init__(self) -> None:
        super().__init__()
        # Each example runs in a savepoint that teardown rolls back, so every example
        # starts from the same empty ledger without recreating the accounts.
        self._example = transaction.atomic()
        self._example.__enter__()
        self.by_pk = {a.pk: a for a in self.world.all}
        self.model: dict[int, Decimal] = {pk: ZERO for pk in self.by_pk}
        self.posted: list[Posted] = []
        self.counter = 0

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._example.__exit__(None, None, None)

    # --- helpers -----------------------------------------------------------------------

    def key(self) -> str:
        self.counter += 1
        return f"op-{self.counter}"

    def guarded(self, pk: int) -> bool:
        return self.by_pk[pk].kind in NON_NEGATIVE_KINDS

    def post(self, legs: list[tuple[Account, Account, Decimal, str]]) -> None:
        """Post fresh legs; the model predicts whether they go through, and they must agree."""
        ledger_legs = [ledger.Leg(d, c, amount, kind, self.key()) for d, c, amount, kind in legs]
        delta: dict[int, Decimal] = {}
        for leg in ledger_legs:
            delta[leg.debit.pk] = delta.get(leg.debit.pk, ZERO) - leg.amount
            delta[leg.credit.pk] = delta.get(leg.credit.pk, ZERO) + leg.amount
        fits = all(self.model[pk] + change >= 0 for pk, change in delta.items() if self.guarded(pk))
        if not fits:
            self.expect_refusal(InsufficientFunds, lambda: ledger.post_transfers(ledger_legs))
            return
        with transaction.atomic():
            transfers = ledger.post_transfers(ledger_legs)
        for leg, transfer in zip(ledger_legs, transfers, strict=True):
            self.remember(leg, transfer)

    def remember(self, leg: ledger.Leg, transfer: Transfer) -> None:
        self.model[leg.debit.pk] -= leg.amount
        self.model[leg.credit.pk] += leg.amount
        self.posted.append(
            Posted(
                leg.idempotency_key, leg.debit.pk, leg.credit.pk, leg.amount, leg.kind, transfer.pk
            )
        )

    def expect_refusal(self, error: type[Exception], call) -> None:
        count = len(self.posted)
        with pytest.raises(error), transaction.atomic():
            call()
        assert len(self.posted) == count

    # --- ordinary money movements ------------------------------------------------------

    @rule(wallet=indices, amount=amounts)
    def deposit(self, wallet: int, amount: Decimal) -> None:
        target = self.world.wallets[wallet % len(self.world.wallets)]
        self.post([(self.world.clearing, target, amount, TransferKind.LATE_PAYMENT_CREDIT)])

    @rule(amount=amounts)
    def unmatched_payment_to_suspense(self, amount: Decimal) -> None:
        self.post([(self.world.clearing, self.world.suspense, amount, TransferKind.SUSPENSE)])

    @rule(src=indices, dst=indices, amount=amounts)
    def wallet_to_wallet(self, src: int, dst: int, amount: Decimal) -> None:
        wallets = self.world.wallets
        payer, payee = wallets[src % len(wallets)], wallets[dst % len(wallets)]
        if payer.pk == payee.pk:
            self.expect_refusal(
                LedgerError,
                lambda: ledger.post_transfer(
                    debit=payer,
                    credit=payee,
                    amount=amount,
                    kind=TransferKind.STAFF_ADJUSTMENT,
                    idempotency_key=self.key(),
                ),
            )
            return
        self.post([(payer, payee, amount, TransferKind.STAFF_ADJUSTMENT)])

    @rule(wallet=indices, holding=indices, amount=amounts)
    def pay_into_holding(self, wallet: int, holding: int, amount: Decimal) -> None:
        payer = self.world.wallets[wallet % len(self.world.wallets)]
        target = self.world.holdings[holding % len(self.world.holdings)]
        self.post([(payer, target, amount, TransferKind.ESCROW_PAYMENT)])

    @rule(wallet=indices, holding=indices)
    def pay_whole_wallet_into_holding(self, wallet: int, holding: int) -> None:
        """Empties a wallet exactly: the boundary where balance - amount == 0."""
        payer = self.world.wallets[wallet % len(self.world.wallets)]
        target = self.world.holdings[holding % len(self.world.holdings)]
        if self.model[payer.pk] > 0:
            self.post([(payer, target, self.model[payer.pk], TransferKind.ESCROW_PAYMENT)])

    @rule(holding=indices, seller=indices, payout=amounts, fee=amounts)
    def release_with_fee(self, holding: int, seller: int, payout: Decimal, fee: Decimal) -> None:
        source = self.world.holdings[holding % len(self.world.holdings)]
        target = self.world.wallets[seller % len(self.world.wallets)]
        self.post(
            [
                (source, target, payout, TransferKind.ESCROW_RELEASE),
                (source, self.world.revenue, fee, TransferKind.FEE),
            ]
        )

    @rule(holding=indices, buyer=indices)
    def refund_all(self, holding: int, buyer: int) -> None:
        source = self.world.holdings[holding % len(self.world.holdings)]
        target = self.world.wallets[buyer % len(self.world.wallets)]
        if self.model[source.pk] > 0:
            self.post([(source, target, self.model[source.pk], TransferKind.ESCROW_REFUND)])

    # --- corrections and replays -------------------------------------------------------

    @precondition(lambda self: self.posted)
    @rule(which=indices)
    def reverse(self, which: int) -> None:
        original = self.posted[which % len(self.posted)]
        transfer = Transfer.objects.get(pk=original.pk)
        key = self.key()

        def call() -> Transfer:
            return ledger.reverse_transfer(transfer=transfer, idempotency_key=key)

        if original.reversed:
            self.expect_refusal(LedgerError, call)
        elif self.guarded(original.credit) and self.model[original.credit] < original.amount:
            self.expect_refusal(InsufficientFunds, call)
        else:
            with transaction.atomic():
                reversal = call()
            original.reversed = True
            leg = ledger.Leg(
                self.by_pk[original.credit],
                self.by_pk[original.debit],
                original.amount,
                TransferKind.REVERSAL,
                key,
            )
            self.remember(leg, reversal)
            assert reversal.reverses_id == original.pk

    @precondition(lambda self: self.posted)
    @rule(which=indices)
    def replay(self, which: int) -> None:
        """Same key, same fields: the first transfer comes back and nothing moves."""
        original = self.posted[which % len(self.posted)]
        if original.kind == TransferKind.REVERSAL:
            return  # replayed through reverse_transfer's own key in test_ledger
        with transaction.atomic():
            again = ledger.post_transfer(
                debit=self.by_pk[original.debit],
                credit=self.by_pk[original.credit],
                amount=original.amount,
                kind=original.kind,
                idempotency_key=original.key,
            )
        assert again.pk == original.pk

    @precondition(lambda self: self.posted)
    @rule(which=indices, extra=amounts)
    def conflicting_replay(self, which: int, extra: Decimal) -> None:
        original = self.posted[which % len(self.posted)]
        self.expect_refusal(
            IdempotencyConflict,
            lambda: ledger.post_transfer(
                debit=self.by_pk[original.debit],
                credit=self.by_pk[original.credit],
                amount=original.amount + extra,
                kind=original.kind,
                idempotency_key=original.key,
            ),
        )

    # --- deliberately invalid ----------------------------------------------------------

    @rule(amount=bad_amounts, src=indices, dst=indices)
    def invalid_amount(self, amount: object, src: int, dst: int) -> None:
        everyone = self.world.all
        self.expect_refusal(
            LedgerError,
            lambda: ledger.post_transfer(
                debit=everyone[src % len(everyone)],
                credit=everyone[dst % len(everyone)],
                amount=amount,
                kind=TransferKind.STAFF_ADJUSTMENT,
                idempotency_key=self.key(),
            ),
        )

    @rule(wallet=indices, extra=amounts, good=amounts)
    def overdraft_inside_a_larger_posting(self, wallet: int, extra: Decimal, good: Decimal) -> None:
        """A valid leg plus an overdraft: the whole posting is refused."""
        payer = self.world.wallets[wallet % len(self.world.wallets)]
        other = self.world.wallets[(wallet + 1) % len(self.world.wallets)]
        legs = [
            ledger.Leg(self.world.clearing, other, good, TransferKind.FEE, self.key()),
            ledger.Leg(
                payer,
                self.world.revenue,
                self.model[payer.pk] + extra,
                TransferKind.FEE,
                self.key(),
            ),
        ]
        self.expect_refusal(InsufficientFunds, lambda: ledger.post_transfers(legs))

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def database_agrees_with_model_and_selectors(self) -> None:
        balances = dict(Account.objects.filter(pk__in=self.model).values_list("pk", "balance"))
        assert balances == self.model
        assert Transfer.objects.count() == len(self.posted)
        assert not selectors.ledger_violations()
        assert all(self.model[a.pk] >= 0 for a in self.world.all if self.guarded(a.pk))


@pytest.mark.django_db
def test_random_operation_sequences_keep_the_ledger_sound():
    world = World(
        wallets=[funded_wallet() for _ in range(3)],
        holdings=[holding_account() for _ in range(2)],
        clearing=ledger.clearing_account(provider="propay"),
        revenue=ledger.system_account(kind=AccountKind.PLATFORM_REVENUE),
        suspense=ledger.system_account(kind=AccountKind.SUSPENSE),
    )
    machine = type("LedgerMachineForTest", (LedgerMachine,), {"world": world})

    run_state_machine_as_test(
        machine, settings=settings(max_examples=EXAMPLES, stateful_step_count=25, deadline=None)
    )

"""Customers, ledger accounts, append-only transfers and customer-facing transaction records."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from wallets.money import MONEY_DIGITS, MONEY_PLACES, USD


class Customer(models.Model):
    """A Telegram user; their Telegram user id is the primary key."""

    telegram_id = models.BigIntegerField(primary_key=True)
    username = models.CharField(max_length=64, blank=True)
    email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The back-office customer list (newest first) and its search by username.
        indexes = [
            models.Index(fields=["username"], name="customer_username_idx"),
            models.Index(fields=["created_at"], name="customer_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.telegram_id}" + (f" (@{self.username})" if self.username else "")


class AccountKind(models.TextChoices):
    CUSTOMER = "customer", "Customer wallet"
    ESCROW_HOLDING = "escrow_holding", "Escrow holding"
    PLATFORM_REVENUE = "platform_revenue", "Platform fee revenue"
    PROVIDER_CLEARING = "provider_clearing", "Provider clearing"
    SUSPENSE = "suspense", "Suspense (unmatched money)"
    STAFF_ADJUSTMENTS = "staff_adjustments", "Staff adjustments"


# Accounts that hold someone's money and so may never be overdrawn.
NON_NEGATIVE_KINDS = (AccountKind.CUSTOMER, AccountKind.ESCROW_HOLDING)


class Account(models.Model):
    """A ledger account. `balance` is a cache of credits minus debits of its transfers.

    Invariants: it changes only in the transaction that posts a transfer, under a row lock
    (wallets.ledger); the sum of all balances in a currency is zero; customer wallets and
    escrow holdings never go below zero (CHECK constraint).
    """

    kind = models.CharField(max_length=32, choices=AccountKind.choices)
    currency = models.CharField(max_length=8, default=USD)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    escrow = models.OneToOneField(
        "escrow.Escrow",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="holding_account",
    )
    provider = models.CharField(max_length=32, blank=True)
    balance = models.DecimalField(
        max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, default=Decimal("0")
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=AccountKind.values), name="account_kind_valid"
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=NON_NEGATIVE_KINDS) | Q(balance__gte=0),
                name="account_balance_non_negative",
            ),
            # Each kind names its owner, and only its owner.
            models.CheckConstraint(
                condition=(
                    Q(kind=AccountKind.CUSTOMER, customer__isnull=False, escrow__isnull=True)
                    | Q(
                        kind=AccountKind.ESCROW_HOLDING, customer__isnull=True, escrow__isnull=False
                    )
                    | Q(
                        kind=AccountKind.PROVIDER_CLEARING,
                        customer__isnull=True,
                        escrow__isnull=True,
                    )
                    & ~Q(provider="")
                    | Q(
                        kind__in=[
                            AccountKind.PLATFORM_REVENUE,
                            AccountKind.SUSPENSE,
                            AccountKind.STAFF_ADJUSTMENTS,
                        ],
                        customer__isnull=True,
                        escrow__isnull=True,
                        provider="",
                    )
                ),
                name="account_owner_matches_kind",
            ),
            models.UniqueConstraint(
                fields=["customer", "currency"],
                condition=Q(kind=AccountKind.CUSTOMER),
                name="account_one_wallet_per_customer_currency",
            ),
            models.UniqueConstraint(
                fields=["provider", "currency"],
                condition=Q(kind=AccountKind.PROVIDER_CLEARING),
                name="account_one_clearing_per_provider_currency",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency"],
                condition=Q(
                    kind__in=[
                        AccountKind.PLATFORM_REVENUE,
                        AccountKind.SUSPENSE,
                        AccountKind.STAFF_ADJUSTMENTS,
                    ]
                ),
                name="account_one_system_account_per_currency",
            ),
        ]
        # By kind, in the back-office list's order (kind, id).
        indexes = [models.Index(fields=["kind", "id"], name="account_kind_id_idx")]

    def __str__(self) -> str:
        if self.kind == AccountKind.CUSTOMER:
            owner = f"customer {self.customer_id}"
        elif self.kind == AccountKind.ESCROW_HOLDING:
            owner = f"escrow #{self.escrow_id}"
        elif self.kind == AccountKind.PROVIDER_CLEARING:
            owner = self.provider
        else:
            owner = self.get_kind_display()
        return f"{owner} [{self.kind} {self.currency}]"


class TransferKind(models.TextChoices):
    ESCROW_PAYMENT = "escrow_payment", "Escrow payment"
    OVERPAYMENT_CREDIT = "overpayment_credit", "Overpayment credit"
    LATE_PAYMENT_CREDIT = "late_payment_credit", "Late/extra payment credit"
    ESCROW_RELEASE = "escrow_release", "Escrow release to seller"
    ESCROW_REFUND = "escrow_refund", "Escrow refund to buyer"
    FEE = "fee", "Platform fee"
    FEE_SHORTFALL = "fee_shortfall", "Accepted underpayment absorbed by the platform"
    SUSPENSE = "suspense", "Unmatched payment to suspense"
    SUSPENSE_RESOLUTION = "suspense_resolution", "Suspense payment resolved by staff"
    STAFF_ADJUSTMENT = "staff_adjustment", "Staff adjustment"
    REVERSAL = "reversal", "Reversal of an earlier transfer"


class Transfer(models.Model):
    """One movement of a positive amount from `debit_account` to `credit_account`.

    Rows are never updated or deleted (a PostgreSQL trigger rejects it): corrections are
    reversing transfers. `idempotency_key` is unique: posting it again with the same fields
    returns the existing row; with different fields it is refused.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32, choices=TransferKind.choices)
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
    currency = models.CharField(max_length=8, default=USD)
    debit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="debits")
    credit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credits")
    idempotency_key = models.CharField(max_length=200, unique=True)
    escrow = models.ForeignKey(
        "escrow.Escrow",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="transfers",
    )
    reverses = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by"
    )
    reference = models.CharField(
        max_length=200, blank=True, help_text="External reference, e.g. provider:txid."
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Staff member who caused it, if any.",
    )
    memo = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="transfer_amount_positive"),
            models.CheckConstraint(
                condition=~Q(debit_account=models.F("credit_account")),
                name="transfer_accounts_differ",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=TransferKind.values), name="transfer_kind_valid"
            ),
        ]
        indexes = [
            # An account's history, newest first, one page at a time (wallets.admin's
            # keyset pagination), whatever the account's size or age.
            models.Index(fields=["debit_account", "id"], name="transfer_debit_id_idx"),
            models.Index(fields=["credit_account", "id"], name="transfer_credit_id_idx"),
            # The back-office ledger list: its kind filter and search by reference.
            models.Index(fields=["kind", "id"], name="transfer_kind_idx"),
            models.Index(fields=["reference"], name="transfer_reference_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.amount} {self.currency}"


class TransactionType(models.TextChoices):
    ESCROW_PAYMENT = "escrow_payment", "Escrow payment"
    OVERPAYMENT_CREDIT = "overpayment_credit", "Overpayment credit"
    LATE_PAYMENT_CREDIT = "late_payment_credit", "Late/extra payment credit"
    ESCROW_RELEASE = "escrow_release", "Escrow release"
    ESCROW_REFUND = "escrow_refund", "Escrow refund"
    FEE = "fee", "Fee"
    SUSPENSE = "suspense", "Unmatched payment"
    STAFF_ADJUSTMENT = "staff_adjustment", "Staff adjustment"


class TransactionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class Transaction(models.Model):
    """A customer-facing transaction record (what staff and the bot show), e.g.
    ESC_ES101325WZY2_6462e85a. Money itself moves only as the ledger transfers it links.

    `amount` is USD; a crypto payment's coin amount is kept apart in `crypto_amount`.
    """

    transaction_id = models.CharField(max_length=100, unique=True)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="transactions"
    )
    type = models.CharField(max_length=32, choices=TransactionType.choices)
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
    currency = models.CharField(max_length=8, default=USD)
    crypto_amount = models.DecimalField(max_digits=40, decimal_places=18, null=True, blank=True)
    crypto_currency = models.CharField(max_length=16, blank=True)
    status = models.CharField(
        max_length=16, choices=TransactionStatus.choices, default=TransactionStatus.COMPLETED
    )
    provider = models.CharField(max_length=32, blank=True)
    external_tx_id = models.CharField(max_length=200, blank=True)
    escrow = models.ForeignKey(
        "escrow.Escrow",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="transactions",
    )
    description = models.CharField(max_length=500, blank=True)
    transfers = models.ManyToManyField(Transfer, related_name="transactions", blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="transaction_amount_positive"),
            models.CheckConstraint(
                condition=Q(type__in=TransactionType.values), name="transaction_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=TransactionStatus.values),
                name="transaction_status_valid",
            ),
            # One record of each type per provider transaction: a replayed payment cannot
            # produce a second escrow_payment record.
            models.UniqueConstraint(
                fields=["provider", "external_tx_id", "type"],
                condition=~Q(external_tx_id=""),
                name="transaction_unique_external_tx_per_type",
            ),
        ]
        indexes = [
            models.Index(fields=["external_tx_id"], name="transaction_ext_tx_idx"),
            # The back-office list's type and status filters, in its order (newest first).
            models.Index(fields=["type", "created_at", "id"], name="transaction_type_idx"),
            models.Index(fields=["status", "created_at", "id"], name="transaction_status_idx"),
        ]

    def __str__(self) -> str:
        return self.transaction_id


class AdjustmentStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    APPROVED = "approved", "Approved and posted"
    REJECTED = "rejected", "Rejected"


class AdjustmentRequest(models.Model):
    """A staff wallet adjustment above the approval threshold, waiting for a second person.

    `amount` is signed: positive credits the wallet, negative debits it. Invariants (CHECK
    constraints): it is decided at most once; an approved request names its transfer and a
    decider other than the requester; a pending one has no decision; reasons are non-empty.
    """

    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="adjustment_requests"
    )
    amount = models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
    currency = models.CharField(max_length=8, default=USD)
    reason = models.TextField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True, db_index=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    status = models.CharField(
        max_length=16, choices=AdjustmentStatus.choices, default=AdjustmentStatus.PENDING
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    transfer = models.OneToOneField(
        Transfer,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adjustment_request",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="adjustment_amount_nonzero"),
            models.CheckConstraint(condition=~Q(reason=""), name="adjustment_reason_required"),
            models.CheckConstraint(
                condition=Q(status__in=AdjustmentStatus.values), name="adjustment_status_valid"
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        status=AdjustmentStatus.PENDING,
                        decided_by__isnull=True,
                        decided_at__isnull=True,
                        transfer__isnull=True,
                        decision_reason="",
                    )
                    | Q(
                        status=AdjustmentStatus.APPROVED,
                        decided_by__isnull=False,
                        decided_at__isnull=False,
                        transfer__isnull=False,
                    )
                    & ~Q(decision_reason="")
                    | Q(
                        status=AdjustmentStatus.REJECTED,
                        decided_by__isnull=False,
                        decided_at__isnull=False,
                        transfer__isnull=True,
                    )
                    & ~Q(decision_reason="")
                ),
                name="adjustment_decision_matches_status",
            ),
            # Four eyes: nobody approves their own request.
            models.CheckConstraint(
                condition=~Q(status=AdjustmentStatus.APPROVED)
                | ~Q(decided_by=models.F("requested_by")),
                name="adjustment_approver_not_requester",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="adjustment_unique_idempotency_key",
            ),
        ]
        indexes = [models.Index(fields=["status"], name="adjustment_status_idx")]

    def __str__(self) -> str:
        return f"adjustment #{self.pk} {self.amount:+} {self.currency} ({self.status})"

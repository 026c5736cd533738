"""Escrows, their holdings, and the status vocabulary the transition table speaks."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from wallets.models import Account, Customer
from wallets.money import MONEY_DIGITS, MONEY_PLACES, USD


class EscrowStatus(models.TextChoices):
    CREATED = "created", "Created"
    PAYMENT_PENDING = "payment_pending", "Payment pending"
    PARTIALLY_PAID = "partially_paid", "Partially paid"
    PAYMENT_CONFIRMED = "payment_confirmed", "Payment confirmed (awaiting seller)"
    ACTIVE = "active", "Active (seller accepted)"
    DELIVERED = "delivered", "Delivered"
    COMPLETED = "completed", "Completed (released)"
    DISPUTED = "disputed", "Disputed"
    REFUNDED = "refunded", "Refunded"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


class FeeSplit(models.TextChoices):
    BUYER_PAYS = "buyer_pays", "Buyer pays the fee"
    SELLER_PAYS = "seller_pays", "Seller pays the fee"
    SPLIT = "split", "Fee split 50/50"


def _money(**kwargs: object) -> models.DecimalField:
    return models.DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, **kwargs)


class Escrow(models.Model):
    """A deal in which the buyer's money is held until the seller delivers.

    `status` changes only through escrow.services, along escrow.transitions.TRANSITIONS,
    under a row lock. Money amounts are what was agreed and charged at creation:
    total_due = amount + buyer_fee, fee_amount = buyer_fee + seller_fee.
    """

    escrow_id = models.CharField(max_length=16, unique=True)
    buyer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="escrows_bought")
    seller = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="escrows_sold")
    description = models.CharField(max_length=500, blank=True)
    amount = _money()
    currency = models.CharField(max_length=8, default=USD)
    fee_split = models.CharField(
        max_length=16, choices=FeeSplit.choices, default=FeeSplit.BUYER_PAYS
    )
    fee_amount = _money()
    buyer_fee = _money()
    seller_fee = _money()
    total_due = _money()
    status = models.CharField(
        max_length=32, choices=EscrowStatus.choices, default=EscrowStatus.PAYMENT_PENDING
    )
    delivery_hours = models.PositiveIntegerField(default=24)

    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    payment_confirmed_at = models.DateTimeField(null=True, blank=True)
    seller_accepted_at = models.DateTimeField(null=True, blank=True)
    delivery_deadline = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    auto_release_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)

    provider = models.CharField(max_length=32, blank=True)
    provider_payment_id = models.CharField(max_length=200, blank=True)
    deposit_address = models.CharField(max_length=200, blank=True)
    deposit_tx_hash = models.CharField(max_length=200, blank=True)
    # An underpayment accepted within tolerance; the platform's fee absorbs it on release.
    accepted_shortfall = _money(default=0)
    admin_notes = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=EscrowStatus.values), name="escrow_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(fee_split__in=FeeSplit.values), name="escrow_fee_split_valid"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="escrow_amount_positive"),
            models.CheckConstraint(
                condition=Q(buyer_fee__gte=0, seller_fee__gte=0, accepted_shortfall__gte=0),
                name="escrow_fees_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(fee_amount=models.F("buyer_fee") + models.F("seller_fee")),
                name="escrow_fee_is_sum_of_shares",
            ),
            models.CheckConstraint(
                condition=Q(total_due=models.F("amount") + models.F("buyer_fee")),
                name="escrow_total_due_is_amount_plus_buyer_fee",
            ),
            models.CheckConstraint(
                condition=~Q(buyer=models.F("seller")), name="escrow_parties_differ"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="escrow_status_expires_idx"),
            models.Index(fields=["created_at"], name="escrow_created_idx"),
            models.Index(fields=["payment_confirmed_at"], name="escrow_paid_idx"),
            models.Index(fields=["deposit_tx_hash"], name="escrow_tx_hash_idx"),
            models.Index(fields=["provider_payment_id"], name="escrow_provider_pid_idx"),
            # The back-office list: each status filter in its full default order (newest
            # first, then -pk: with the tie-breaker in the index no sort is needed at all),
            # the provider filter, and the "past a deadline" queue (delivery_deadline stays
            # set once an escrow closes, so the status must lead).
            models.Index(fields=["status", "created_at", "id"], name="escrow_status_created_idx"),
            models.Index(
                fields=["provider", "created_at", "id"], name="escrow_provider_created_idx"
            ),
            models.Index(fields=["status", "delivery_deadline"], name="escrow_status_delivery_idx"),
            models.Index(fields=["status", "auto_release_at"], name="escrow_status_release_idx"),
        ]

    def __str__(self) -> str:
        return self.escrow_id


class HoldingStatus(models.TextChoices):
    COLLECTING = "collecting", "Collecting (partially paid)"
    HELD = "held", "Held"
    RELEASED = "released", "Released to seller"
    REFUNDED = "refunded", "Refunded to buyer"
    SPLIT = "split", "Split between the parties"


class EscrowHolding(models.Model):
    """The money held for one escrow, backed by its ledger holding account.

    The amount held is the account's balance. It resolves at most once: from held (or
    collecting) to released, refunded or split, after which its account is empty.
    """

    escrow = models.OneToOneField(Escrow, on_delete=models.PROTECT, related_name="holding")
    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="holding")
    status = models.CharField(
        max_length=16, choices=HoldingStatus.choices, default=HoldingStatus.COLLECTING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=HoldingStatus.values), name="holding_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["collecting", "held"], resolved_at__isnull=True)
                | Q(status__in=["released", "refunded", "split"], resolved_at__isnull=False),
                name="holding_resolved_at_matches_status",
            ),
        ]
        indexes = [models.Index(fields=["status", "id"], name="holding_status_idx")]

    def __str__(self) -> str:
        return f"holding of {self.escrow.escrow_id} ({self.status})"


class StatusChange(models.Model):
    """Append-only history of an escrow's status: who or what moved it, and why."""

    escrow = models.ForeignKey(Escrow, on_delete=models.PROTECT, related_name="status_changes")
    from_status = models.CharField(max_length=32, choices=EscrowStatus.choices)
    to_status = models.CharField(max_length=32, choices=EscrowStatus.choices)
    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    source = models.CharField(
        max_length=64, help_text="What caused it: webhook, sweep, staff, bot."
    )
    reason = models.TextField(blank=True)

    class Meta:
        # Every writer (creation, the services, the sweep's batch, the scale seed) records
        # both ends of a move as real statuses; creation starts from `created`, never "".
        constraints = [
            models.CheckConstraint(
                condition=Q(from_status__in=EscrowStatus.values),
                name="status_change_from_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(to_status__in=EscrowStatus.values),
                name="status_change_to_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["escrow", "at"], name="status_change_escrow_idx"),
            # The back-office history list, newest first, and its to-status filter.
            models.Index(fields=["at", "id"], name="status_change_at_idx"),
            models.Index(fields=["to_status", "at", "id"], name="status_change_to_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.escrow_id}: {self.from_status} -> {self.to_status}"


class StaffAction(models.Model):
    """Append-only audit log of what staff did: who, when, why, and what changed.

    Written by the service that performs the action, in the same transaction, so an
    action that failed leaves no audit row and an audit row always has its effects.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_actions"
    )
    action = models.CharField(max_length=64)
    reason = models.TextField()
    escrow = models.ForeignKey(
        Escrow, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions"
    )
    target = models.CharField(max_length=200, blank=True, help_text="What it acted on.")
    changes = models.JSONField(default=dict, help_text="What changed (before/after, ids).")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~Q(reason=""), name="staff_action_reason_required"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.target}"

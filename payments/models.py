"""The webhook receipt log and the provider-event dedupe table."""

from django.db import models
from django.db.models import Q


class Outcome(models.TextChoices):
    RECEIVED = "received", "Received (not yet processed)"
    APPLIED = "applied", "Applied"
    RECORDED = "recorded", "Recorded (no money moves for this event)"
    DUPLICATE = "duplicate", "Duplicate of an applied event"
    PARKED = "parked", "Parked for staff (money safe in suspense)"
    CONFLICT = "conflict", "Conflict: same event, different payload"
    FAILED = "failed", "Failed (will be retried)"
    UNAUTHENTICATED = "unauthenticated", "Rejected: bad or missing signature"
    MALFORMED = "malformed", "Rejected: signed but malformed"
    TOO_LARGE = "too_large", "Rejected: body too large"


# Outcomes after which nothing more will happen to a receipt.
FINAL_OUTCOMES = (
    Outcome.APPLIED,
    Outcome.RECORDED,
    Outcome.DUPLICATE,
    Outcome.PARKED,
    Outcome.CONFLICT,
    Outcome.UNAUTHENTICATED,
    Outcome.MALFORMED,
    Outcome.TOO_LARGE,
)
# Outcomes whose receipt may (and should) be processed again.
RETRYABLE_OUTCOMES = (Outcome.RECEIVED, Outcome.FAILED)


class WebhookReceipt(models.Model):
    """One HTTP delivery exactly as it arrived, stored before anything else happens.

    UNTRUSTED until `signature_valid` is true: unsigned deliveries are kept so attacks are
    visible, but never processed. The outcome is written in the same transaction as the
    delivery's effects, so "applied" is never committed without them.
    """

    provider = models.CharField(max_length=32)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    remote_ip = models.GenericIPAddressField(null=True, blank=True)
    headers = models.JSONField(default=dict)
    body = models.BinaryField(help_text="Raw body, truncated at the size cap.")
    body_size = models.PositiveIntegerField()
    body_sha256 = models.CharField(max_length=64)
    body_pruned_at = models.DateTimeField(null=True, blank=True)
    signature_valid = models.BooleanField()

    # Filled once the body parses; the dedupe key is (provider, tx_id, event).
    event = models.CharField(max_length=64, blank=True)
    tx_id = models.CharField(max_length=200, blank=True)
    provider_payment_id = models.CharField(max_length=200, blank=True)
    escrow_ref = models.CharField(max_length=64, blank=True, db_index=True)
    payload_hash = models.CharField(max_length=64, blank=True)
    escrow = models.ForeignKey(
        "escrow.Escrow",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="webhook_receipts",
    )

    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.RECEIVED)
    detail = models.TextField(blank=True, help_text="Why this outcome, in words staff read.")
    flagged = models.BooleanField(default=False, help_text="Needs a look from staff.")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(outcome__in=Outcome.values), name="receipt_outcome_valid"
            ),
            # A delivery whose signature did not verify can only ever be rejected (an
            # oversized body is not read in full, so its signature is never checked).
            models.CheckConstraint(
                condition=Q(signature_valid=True)
                | Q(outcome__in=[Outcome.UNAUTHENTICATED, Outcome.TOO_LARGE]),
                name="receipt_unsigned_never_processed",
            ),
        ]
        indexes = [
            models.Index(
                fields=["outcome", "received_at"],
                condition=Q(outcome__in=["received", "failed", "parked", "conflict"]),
                name="receipt_needs_work_idx",
            ),
            models.Index(fields=["provider", "tx_id", "event"], name="receipt_dedupe_key_idx"),
            # The back-office receipt list: its outcome filter in its default order, the
            # flagged and unsigned filters and the late/parked queues (flagged rows are a
            # handful), and search by provider transaction or payment id.
            models.Index(fields=["outcome", "received_at", "id"], name="receipt_outcome_idx"),
            models.Index(
                fields=["received_at", "id"], condition=Q(flagged=True), name="receipt_flagged_idx"
            ),
            models.Index(
                fields=["received_at", "id"],
                condition=Q(signature_valid=False),
                name="receipt_unsigned_idx",
            ),
            models.Index(fields=["tx_id"], name="receipt_tx_id_idx"),
            models.Index(fields=["provider_payment_id"], name="receipt_provider_pid_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.provider} {self.event or '?'} {self.tx_id or ''} ({self.outcome})"


class PaymentEvent(models.Model):
    """The first processing of one provider event: the database-enforced dedupe record.

    Inserted (ON CONFLICT DO NOTHING) as the first write of processing, so of any number
    of simultaneous deliveries of one event exactly one proceeds; the others wait for it
    to commit and then see it. If that processing rolls back, so does this row.
    """

    provider = models.CharField(max_length=32)
    tx_id = models.CharField(max_length=200)
    event = models.CharField(max_length=64)
    payload_hash = models.CharField(max_length=64)
    receipt = models.OneToOneField(
        WebhookReceipt, on_delete=models.PROTECT, related_name="payment_event"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "tx_id", "event"], name="payment_event_dedupe_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.tx_id}:{self.event}"
